"""The service layer on a PBS Pro site: the same flows the Slurm tests run for real,
here through the replay runner (tests/support/replay.py).

FAKE runner: PBS Pro cannot be installed here. Each scheduler command the service sends
is checked exactly and answered with a real OpenPBS 23.06 capture from
tests/captures/pbs (named per step). The node side is not run: where a save's outcome
matters, the test writes the result file the node would write (builder_jobs' own tests
run that code for real against podman).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.service.save_request import SaveRequest
from api.service.saves import SaveService
from builder_jobs.events import FailureKind, SaveResult, Stage, write_result
from builder_jobs.spec import RESULT_FILE
from core.errors import InvalidRequest, NotFound
from scheduler_glue.pbs.backend import PbsScheduler
from scheduler_glue.states import JobState
from site_configs.schema import SiteConfig, load_site_config
from tests.support.replay import ReplayRunner, Step, as_ordinary_user, pbs_capture

CONFIGS = Path(__file__).resolve().parents[2] / "site_configs"
REQUEST_ID = "0" * 31 + "1"
SERVICE = "pbsuser"  # the account the captures were made with


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")  # the captures come from a UTC host
    time.tzset()
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(REQUEST_ID))
    yield
    monkeypatch.undo()
    time.tzset()


def pbs_site(tmp_path: Path) -> SiteConfig:
    base = load_site_config(CONFIGS / "pbs-sif-oras.toml")
    # portal mode: the captures' jobs are pbsuser's, the service account here
    return base.model_copy(update={"spool_dir": str(tmp_path), "node_python": "/usr/bin/python3",
                                   "service_account": SERVICE})


def qsub(spool: Path) -> list[str]:
    work = spool / REQUEST_ID
    return ["qsub", "-q", "imgsave", "-N", "imgsave-alice",
            "-l", "select=1:host=vm:ncpus=1", "-l", "walltime=00:45:00",
            "-j", "oe", "-o", str(work / "job.out"), str(work / "job.sh")]  # fmt: skip


def as_submitted(capture: str, job_id: str, spool: Path) -> str:
    """The capture's qstat JSON with Submit_arguments set to what this service sent
    (the captured job was submitted with another script path)."""
    document = json.loads(pbs_capture(capture).stdout)
    document["Jobs"][job_id]["Submit_arguments"] = " ".join(qsub(spool)[1:])
    return json.dumps(document)


def service(tmp_path: Path, steps: list[Step]) -> tuple[SaveService, ReplayRunner]:
    runner = ReplayRunner(steps)
    return SaveService(pbs_site(tmp_path), as_ordinary_user(PbsScheduler(runner, 10.0)),
                       account=SERVICE), runner


REQUEST = SaveRequest("alice", "jupyter-alice", "torch-env:v1", node="vm",
                      formats=(), category="cpu")


def request(**changes: object) -> SaveRequest:
    from dataclasses import replace

    from site_configs.schema import ImageFormat

    return replace(REQUEST, formats=(ImageFormat.SIF,), **changes)  # type: ignore[arg-type]


def test_submit_pins_to_the_host_and_status_reads_history(tmp_path: Path) -> None:
    steps = [
        Step.replay(["pbsnodes", "-F", "json", "vm"], pbs_capture("19_pbsnodes_av_F_json")),
        Step.replay(qsub(tmp_path), pbs_capture("01_qsub_imgsave")),
        Step(("qstat", "-fx", "-F", "json", "0.vm"),
             as_submitted("02_qstat_f_F_json_running", "0.vm", tmp_path)),
        Step(("qstat", "-fx", "-F", "json", "0.vm"),
             as_submitted("03_qstat_fx_F_json_finished", "0.vm", tmp_path)),
    ]
    saves, runner = service(tmp_path, steps)
    submitted = saves.submit(request())
    assert submitted.job_id == "0.vm" and submitted.node == "vm"
    assert str(submitted.target) == "oras.example.org/sif/alice/torch-env:v1"
    (running,) = saves.status(["0.vm"], "alice")
    assert running.state is JobState.RUNNING and running.stage is Stage.QUEUED
    write_result(tmp_path / REQUEST_ID / RESULT_FILE,  # what the node writes at the end
                 SaveResult(ok=True, reference=str(submitted.target), sif_path="/x.sif"))
    (done,) = saves.status(["0"], "alice")  # the number alone, as users type it
    assert (done.job_id, done.state, done.stage, done.percent) == (
        "0.vm", JobState.COMPLETED, Stage.DONE, 100)
    with pytest.raises(NotFound):
        saves.status(["0.vm"], "bob")
    runner.assert_done()


def test_a_failed_save_reports_the_nodes_reason(tmp_path: Path) -> None:
    steps = [
        Step.replay(["pbsnodes", "-F", "json", "vm"], pbs_capture("19_pbsnodes_av_F_json")),
        Step.replay(qsub(tmp_path), pbs_capture("04_qsub_fail")),
        Step(("qstat", "-fx", "-F", "json", "1.vm"),
             as_submitted("07_qstat_fx_F_json_failed", "1.vm", tmp_path)),
    ]
    saves, runner = service(tmp_path, steps)
    job_id = saves.submit(request()).job_id
    write_result(tmp_path / REQUEST_ID / RESULT_FILE, SaveResult(
        ok=False, failure=FailureKind.CONTAINER_NOT_FOUND,
        error="container jupyter-alice not found on vm"))
    (status,) = saves.status([job_id], "alice")
    assert status.state is JobState.FAILED
    assert status.reason == "container jupyter-alice not found on vm"
    runner.assert_done()


def test_cancel_of_a_running_save(tmp_path: Path) -> None:
    steps = [
        Step.replay(["pbsnodes", "-F", "json", "vm"], pbs_capture("19_pbsnodes_av_F_json")),
        Step.replay(qsub(tmp_path), pbs_capture("05_qsub_long_for_qdel")),
        # cancel asks PBS whose job it is first
        Step(("qstat", "-fx", "-F", "json", "2.vm"),
             as_submitted("08a_qstat_fx_F_json_deleted_6s_after_qdel_still_R", "2.vm", tmp_path)),
        Step.replay(["qdel", "2.vm"], pbs_capture("06_qdel_running")),
        Step(("qstat", "-fx", "-F", "json", "2.vm"),
             as_submitted("08_qstat_fx_F_json_deleted", "2.vm", tmp_path)),
    ]
    saves, runner = service(tmp_path, steps)
    job_id = saves.submit(request()).job_id
    with pytest.raises(NotFound):
        saves.cancel(job_id, "bob")  # not bob's: refused before any qdel
    saves.cancel(job_id, "alice")
    (status,) = saves.status([job_id], "alice")
    assert status.state is JobState.CANCELLED
    assert status.reason == "the save job was cancelled"
    runner.assert_done()


def test_unknown_host_is_refused_before_qsub(tmp_path: Path) -> None:
    steps = [Step.replay(["pbsnodes", "-F", "json", "nosuchnode"],
                         pbs_capture("19d_pbsnodes_F_json_unknown_node"))]
    saves, runner = service(tmp_path, steps)
    with pytest.raises(NotFound, match="nosuchnode"):
        saves.submit(request(node="nosuchnode"))
    # nothing of the request's: only the requester's submit lock (reused, a few bytes)
    assert [p.name for p in tmp_path.iterdir()] in ([], ["submit-locks"])
    runner.assert_done()


def test_bad_names_never_reach_pbs(tmp_path: Path) -> None:
    saves, runner = service(tmp_path, [])
    for bad in (request(target="Torch:v1"), request(container="a b"), request(target="x")):
        with pytest.raises(InvalidRequest):
            saves.submit(bad)
    assert runner.calls == [] and list(tmp_path.iterdir()) == []
