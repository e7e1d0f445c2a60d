"""PBS argv builders (golden argv), submit checks and the metadata file."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InvalidRequest
from scheduler_glue.base import BatchJob
from scheduler_glue.metadata import encode_metadata
from scheduler_glue.pbs.commands import (
    MAX_JOB_NAME,
    check_job,
    pbs_job_name,
    pbsnodes_argv,
    qdel_argv,
    qstat_argv,
    qsub_argv,
    tracejob_argv,
    walltime,
)
from scheduler_glue.pbs.metadata_file import read_metadata_file, write_metadata_file


def _job(**overrides: object) -> BatchJob:
    fields: dict[str, object] = {
        "name": "imgsave-r1",
        "script": Path("/spool/r1/job.sh"),
        "node": "vm",
        "output_path": Path("/spool/r1/job.out"),
        "partition": "imgsave",
        "time_limit_minutes": 30,
        "cpus": 1,
    }
    fields.update(overrides)
    return BatchJob(**fields)  # type: ignore[arg-type]


def test_qsub_argv_golden() -> None:
    assert qsub_argv(_job(account="proj1", time_limit_minutes=90, cpus=2)) == [
        "qsub",
        "-q", "imgsave",
        "-A", "proj1",
        "-N", "imgsave-r1",
        "-l", "select=1:host=vm:ncpus=2",
        "-l", "walltime=01:30:00",
        "-j", "oe",
        "-o", "/spool/r1/job.out",
        "/spool/r1/job.sh",
    ]  # fmt: skip


def test_qsub_argv_without_queue_and_account_and_never_v() -> None:
    argv = qsub_argv(_job(partition="", metadata={"user": "alice,bob"}))
    assert argv[:3] == ["qsub", "-N", "imgsave-r1"]
    assert "-v" not in argv and "-V" not in argv and "alice,bob" not in " ".join(argv)


def test_other_argv_golden() -> None:
    assert qstat_argv(["1.vm", "2.vm"], history=True) == [
        "qstat",
        "-fx",
        "-F",
        "json",
        "1.vm",
        "2.vm",
    ]
    assert qstat_argv([], history=False) == ["qstat", "-f", "-F", "json"]
    assert qdel_argv("2.vm") == ["qdel", "2.vm"]
    assert pbsnodes_argv("vm") == ["pbsnodes", "-F", "json", "vm"]
    assert tracejob_argv("0.vm", 3) == ["tracejob", "-n", "3", "0.vm"]
    assert tracejob_argv("0.vm", 0) == ["tracejob", "-n", "1", "0.vm"]


@pytest.mark.parametrize(
    ("minutes", "text"), [(1, "00:01:00"), (30, "00:30:00"), (61, "01:01:00"), (6000, "100:00:00")]
)
def test_walltime(minutes: int, text: str) -> None:
    assert walltime(minutes) == text


@pytest.mark.parametrize(
    ("name", "pbs_name"),
    [
        ("imgsave-r1", "imgsave-r1"),
        ("imgsave.alice/torch:v1", "imgsave-alice-torch-v1"),
        ("42-save", "j42-save"),
        ("", "imgsave"),
        ("save a+b_c", "save-a+b_c"),
    ],
)
def test_pbs_job_name(name: str, pbs_name: str) -> None:
    assert pbs_job_name(name) == pbs_name


def test_pbs_job_name_is_cut_to_236() -> None:
    assert len(pbs_job_name("a" * 500)) == MAX_JOB_NAME == 236


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"node": "vm:ncpus=64"}, "host name"),
        ({"node": "vm+n2"}, "host name"),
        ({"partition": "no such queue"}, "queue name"),
        ({"partition": "q" * 16}, "queue name"),
        ({"script": Path("job.sh")}, "absolute"),
        ({"script": Path("/spool/my dir/job.sh")}, "whitespace"),
        ({"output_path": Path("/spool/a:b/out")}, "':'"),
        ({"cpus": -1}, "cpus"),
        ({"time_limit_minutes": 0}, "time limit"),
    ],
)
def test_check_job_refuses(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        check_job(_job(**overrides))


def test_check_job_accepts_fqdn_and_zero_cpus() -> None:
    check_job(_job(node="cn01.hpc.example.org", cpus=0))


def test_metadata_file_round_trip(tmp_path: Path) -> None:
    script = tmp_path / "r1" / "job.sh"
    script.parent.mkdir()
    meta = {"user": "alice", "target": "harbor.example.org/alice/torch:v1", "note": "a;b c"}
    path = write_metadata_file(script, meta)
    assert path == script.parent / "metadata"
    assert path.read_text() == encode_metadata(meta) + "\n"
    assert [p.name for p in script.parent.iterdir()] == ["metadata"]  # no temp file left
    assert read_metadata_file(script) == meta


def test_metadata_file_missing_or_foreign(tmp_path: Path) -> None:
    assert read_metadata_file(None) == {}
    assert read_metadata_file(tmp_path / "job.sh") == {}
    (tmp_path / "metadata").write_text("somebody else's file\n")
    assert read_metadata_file(tmp_path / "job.sh") == {}
