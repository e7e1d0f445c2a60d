"""``--full`` from the API to the node's spec, and how an incremental save is shown.

The API (Flask test client, in-memory scheduler: ``tests/support/api_support.py``) puts
``full=1`` in the job's metadata; the node's privileged entry reads it from the
scheduler's record into the spec. Status, CLI table and usage report show the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.cli.commands import _status_rows
from api.service.progress import SaveStatus, status_from_dict
from builder_jobs.events import SaveResult, Stage
from builder_jobs.node_gate import JobOnRecord, spec_from_job
from scheduler_glue.states import JobState
from site_configs.schema import load_site_config
from tests.support.api_support import MemorySite, save_body

SITE = """
name = "t"
spool_dir = "/tmp/spool"
[scheduler]
kind = "slurm"
partition = "imgsave"
[engine]
kind = "podman"
command = ["podman"]
{engine}
[registry]
url = "https://r.example.org"
"""


def test_full_travels_in_the_jobs_metadata_only_when_asked(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    for full in (True, False):
        r = client.post("/api/v1/saves", json={**save_body(), "full": full}, headers=alice)
        assert r.status_code == 202, r.json
    forced, plain = memory_site.scheduler.submitted
    assert forced.metadata["full"] == "1" and "full" not in plain.metadata


def test_full_must_be_a_boolean(client: FlaskClient, alice: dict[str, str]) -> None:
    r = client.post("/api/v1/saves", json={**save_body(), "full": "yes"}, headers=alice)
    assert r.status_code == 400 and "full must be true or false" in r.json["error"]["message"]


def test_the_node_reads_full_from_the_schedulers_record(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SITE.format(engine=""))
    config = load_site_config(tmp_path / "site.toml")
    meta = {"request_id": "a" * 32, "container": "c1", "category": "cpu", "target": "x:1"}
    record = JobOnRecord("7", "alice", "RUNNING", True, "alice", "n1", meta)
    assert not spec_from_job(config, record, "alice", "a" * 32).full
    record = JobOnRecord("7", "alice", "RUNNING", True, "alice", "n1", {**meta, "full": "1"})
    assert spec_from_job(config, record, "alice", "a" * 32).full


def test_max_layers_defaults_to_16_and_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SITE.format(engine=""))
    assert load_site_config(tmp_path / "site.toml").engine.max_layers == 16
    (tmp_path / "site.toml").write_text(SITE.format(engine="max_layers = 0"))
    with pytest.raises(Exception, match="max_layers"):
        load_site_config(tmp_path / "site.toml")


def _status(result: SaveResult) -> SaveStatus:
    return SaveStatus("9", "r", "alice", "c1", "x:2", ("oci",), "cpu", "n1",
                      JobState.COMPLETED, Stage.DONE, 100, None, None, None, None, None,
                      result.digest, result.size_bytes, "", result)  # fmt: skip


def test_status_cli_and_report_show_an_incremental_save() -> None:
    result = SaveResult(ok=True, digest="sha256:d", size_bytes=1_234_567, incremental=True,
                        chain_layers=3, bytes_pushed=1_236_000, commit_method="streaming")
    full = SaveResult(ok=True, size_bytes=9, chain_layers=1, full_reason="a full save was "
                      "asked for (--full)")  # fmt: skip

    assert result.save_kind == "incremental (3 layers, 1.2 MB new)"
    assert full.save_kind == "full" and SaveResult(ok=True).save_kind == ""
    shown = _status(result).to_dict()
    assert (shown["save_kind"], shown["incremental"], shown["chain_layers"],
            shown["bytes_pushed"]) == ("incremental (3 layers, 1.2 MB new)", True, 3, 1_236_000)
    back = status_from_dict(shown)
    assert back.result is not None and back.result.save_kind == result.save_kind
    assert _status(full).to_dict()["full_reason"] == "a full save was asked for (--full)"
    table = _status_rows([_status(result), _status(full)])
    assert "SAVED" in table and "incremental (3 layers, 1.2 MB new)" in table
