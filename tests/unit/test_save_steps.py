"""A save run as a step of the user's own job (``submit --job J --in-job``): the pure
parts. The real route on the local cluster: tests/cluster/test_save_in_job.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from api.service.save_request import SaveRequest, validate_request
from api.service.saves import SaveService
from builder_jobs.node_gate import Refused
from builder_jobs.spec import SPEC_FILE, SaveSpec, spool_dir_for
from builder_jobs.step_gate import is_step, step_request
from core.errors import InvalidRequest, PermissionDenied
from scheduler_glue.base import BatchJob
from scheduler_glue.slurm.commands import squeue_steps_argv, srun_step_argv
from scheduler_glue.slurm.parse import (
    is_job_id,
    job_of_step,
    parse_sacct_rows,
    slurm_errors,
    step_metadata,
)
from scheduler_glue.slurm.steps import parse_squeue_steps
from scheduler_glue.states import JobState
from site_configs.schema import ImageFormat, SiteConfig
from tests.support.api_support import SERVICE_ACCOUNT, MemoryScheduler, site_config
from tests.support.replay import CAPTURES, load_capture

REQUEST = "0123456789abcdef0123456789abcdef"


def slurm(name: str) -> str:
    return load_capture(CAPTURES / "slurm" / f"{name}.txt").stdout


@pytest.mark.parametrize("text, ok", [
    ("123", True), ("123.4", True), ("123_4.0", True), ("123.batch", False),
    ("123.", False), (".4", False), ("123.4.5", False), ("-1.2", False),
])
def test_a_numbered_step_is_a_slurm_job_id(text: str, ok: bool) -> None:
    assert is_job_id(text) is ok
    if ok:  # the entry asks is_step of an id its grammar already admitted
        assert is_step(text) is ("." in text)


def test_job_of_step() -> None:
    assert job_of_step("123.4") == "123"
    assert job_of_step("123") == "" and job_of_step("123.batch") == ""


def test_srun_runs_one_task_inside_the_job_beside_its_steps(tmp_path: Path) -> None:
    step = BatchJob(name=f"imgsave-save-alice-{REQUEST}", script=tmp_path / "job.sh",
                    node="n1", output_path=tmp_path / "50%.out", workdir=tmp_path)
    argv = srun_step_argv("77", step, environment={"PATH": "/usr/bin", "USER": "alice"},
                          srun="/usr/bin/srun")
    assert argv[:4] == ["env", "-i", "PATH=/usr/bin", "USER=alice"]
    srun = argv[4:]
    assert srun[0] == "/usr/bin/srun" and srun[-1] == str(tmp_path / "job.sh")
    joined = " ".join(srun)
    for option in ("--jobid 77", "--overlap", "--nodes 1", "--ntasks 1", "--nodelist n1",
                   f"--job-name imgsave-save-alice-{REQUEST}", "--export ALL",
                   f"--chdir {tmp_path}"):
        assert option in joined
    assert f"--output {tmp_path}/50%%.out" in joined  # srun expands %j: escaped
    with pytest.raises(ValueError):
        srun_step_argv("77", step, environment={"BAD NAME": "x"})
    assert squeue_steps_argv("77")[:5] == ["squeue", "-h", "-s", "-j", "77"]


def test_an_asked_step_is_a_record_with_its_jobs_owner() -> None:
    # real sacct output: job 832 (alice's) and its steps; its step rows have no user
    records = {r.job_id: r for r in parse_sacct_rows(slurm("46_sacct_status_steps"),
                                                     steps=["832.1"])}
    step = records["832.1"]
    assert step.user == "alice" and step.partition == "imgsave" and step.node == "n2"
    assert step.state is JobState.COMPLETED and step.exit_code == 0
    assert step.name == "true" and step.metadata == {}  # not an imgsave step's name
    assert step.cpu_seconds == pytest.approx(0.003)
    # the job's own record is unchanged, its CPU time still every step's
    assert records["832"].cpu_seconds == pytest.approx(0.028 + 0.722 + 0.003)
    # without asking, steps are no records
    assert "832.1" not in {r.job_id for r in parse_sacct_rows(slurm("46_sacct_status_steps"))}


def test_a_step_name_binds_one_request_only() -> None:
    assert step_metadata(f"imgsave-save-alice-{REQUEST}") == {"request_id": REQUEST}
    assert step_metadata("imgsave-save-alice-notahexid") == {}
    assert step_metadata(f"train-{REQUEST}") == {}


def test_running_steps_from_squeue() -> None:
    # real squeue -s while a step named as imgsave names it ran in alice's job 2992
    step, batch = parse_squeue_steps(slurm("61_squeue_steps_running")) + [None]
    assert batch is None  # 2992.batch is no numbered step
    assert step is not None and step.job_id == "2992.0"
    assert step.user == "alice" and step.node == "n1" and step.partition == "whole"
    assert step.state is JobState.RUNNING and step.metadata == {"request_id": REQUEST}
    (by_id,) = parse_squeue_steps(slurm("61b_squeue_steps_by_id"))
    assert by_id == step


def test_an_imgsave_step_in_accounting_and_in_a_listing() -> None:
    out = slurm("60_sacct_status_step_of_exclusive_job")
    (step,) = [r for r in parse_sacct_rows(out, steps=["2992.0"]) if r.job_id == "2992.0"]
    assert step.user == "alice" and step.partition == "whole" and step.node == "n1"
    assert step.state is JobState.COMPLETED and step.metadata == {"request_id": REQUEST}
    # a listing by name finds the step, not the user's job it ran in ("session")
    assert [r.job_id for r in parse_sacct_rows(out, name_prefix="imgsave")] == ["2992.0"]


def test_srun_refusals_are_slurms_own_words() -> None:
    assert "Requested node configuration is not available" in slurm_errors(
        load_capture(CAPTURES / "slurm" / "60b_srun_overlap_node_outside_job.txt").stderr)
    assert "Access/permission denied" in slurm_errors(
        load_capture(CAPTURES / "slurm" / "60c_srun_overlap_other_users_job.txt").stderr)


def test_in_job_needs_the_job(tmp_path: Path) -> None:
    config = site_config(tmp_path)
    request = SaveRequest(user="alice", container="c", target="x:v1", in_job=True)
    with pytest.raises(InvalidRequest, match="--job JOBID"):
        validate_request(config, request)
    # --node beside --job picks one of the job's nodes
    validate_request(config, SaveRequest(user="alice", container="c", target="x:v1",
                                         in_job=True, job_id="7", node="n2"))


def test_the_portal_cannot_run_a_step_in_a_users_job(tmp_path: Path) -> None:
    scheduler = MemoryScheduler()
    service = SaveService(site_config(tmp_path), scheduler, python="/usr/bin/python3",
                          account=SERVICE_ACCOUNT)
    request = SaveRequest(user="alice", container="c", target="x:v1", job_id="7",
                          in_job=True)
    with pytest.raises(PermissionDenied, match="service account runs no steps"):
        service.submit(request)
    assert scheduler.submitted == []


def _spool_spec(tmp_path: Path, **changes: object) -> SiteConfig:
    config = site_config(tmp_path)
    spec = SaveSpec(request_id=REQUEST, user="root", container="c1", target="r/root/x:v1",
                    formats=(ImageFormat.OCI,), category="cpu", node="n1",
                    site_config="", created="2026-11-30T09:00:00+00:00")
    data = json.loads(spec.to_json()) | changes
    workdir = spool_dir_for(config.spool_for("root"), REQUEST)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SPEC_FILE).write_text(json.dumps(data))
    return config


def test_the_step_runs_the_spec_its_owners_spool_holds(tmp_path: Path) -> None:
    # read as the owner (root here: the test runs as root; the cluster test as alice)
    config = _spool_spec(tmp_path)
    meta = step_request(config, "77.0", "root", "n1", {"request_id": REQUEST})
    assert meta["container"] == "c1" and meta["user"] == "root" and meta["formats"] == "oci"
    with pytest.raises(Refused, match="not an imgsave save step"):
        step_request(config, "77.0", "root", "n1", {})
    with pytest.raises(Refused, match="runs on n2"):
        step_request(config, "77.0", "root", "n2", {"request_id": REQUEST})


def test_a_spec_naming_another_user_or_a_planted_link_is_refused(tmp_path: Path) -> None:
    config = _spool_spec(tmp_path, user="bob")
    with pytest.raises(Refused, match="not request"):
        step_request(config, "77.0", "root", "n1", {"request_id": REQUEST})
    spec_path = spool_dir_for(config.spool_for("root"), REQUEST) / SPEC_FILE
    spec_path.unlink()
    spec_path.symlink_to("/etc/shadow")
    with pytest.raises(Refused, match="cannot read its request"):
        step_request(config, "77.0", "root", "n1", {"request_id": REQUEST})


def test_reports_take_a_steps_request_from_its_owners_spool(tmp_path: Path) -> None:
    from api.reports.usage_records import SpoolReader, request_of
    from api.service.spool import index_job
    from scheduler_glue.base import JobRecord

    config = _spool_spec(tmp_path)
    spool = config.spool_for("root")
    index_job(spool, "2992.0", REQUEST)
    step = JobRecord(job_id="2992.0", state=JobState.COMPLETED, user="root", node="n1",
                     name=f"imgsave-save-root-{REQUEST}", metadata={"request_id": REQUEST})
    meta, node = request_of(step, SpoolReader(spool))
    assert meta["target"] == "r/root/x:v1" and meta["category"] == "cpu" and node == "n1"
    # a step whose spool entry is gone is no save of anyone's
    assert request_of(replace(step, job_id="2992.1"), SpoolReader(spool)) == ({}, "")
