"""A save run as a step of the user's own job (``imgsave submit --job J --in-job``) on
the real local cluster: Slurm 22.05 with accounting, podman on the node, the registry,
the node's privileged entry through sudo. Every command runs as the user themselves.

The local cluster's ``whole`` partition has no MaxCPUsPerNode, so users' ``--exclusive``
jobs run there (``batch`` refuses them, capture 53); a job holding a whole node leaves no
CPU to the ``imgsave`` partition, and the step route is what still saves its container.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.reports.report import build_report
from api.service.site import Site
from builder_jobs.node_guard import JobGuard, record_path
from scheduler_glue.states import JobState
from site_configs.schema import get_site_config
from tests.support.cluster_helpers import (
    TOP,
    as_user,
    imgsave_as,
    job_state,
    node_exec,
    registry_tags,
    require_cluster,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = pytest.mark.cluster
ENTRY = "/usr/local/sbin/imgsave-node-save"
STATE_DIR = Path("/var/lib/imgsave-node")


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


def _wait_running(job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (state := job_state(job_id)) != "RUNNING":
        assert time.monotonic() < deadline, f"job {job_id} is {state}, not running"
        time.sleep(0.5)


def _cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=False)


@pytest.fixture
def users_job() -> Iterator[object]:
    """Start a job of USER's in the whole partition: ``users_job(user, node, *options)``."""
    started: list[str] = []

    def start(user: str, node: str, *options: str) -> str:
        done = as_user(user, "sbatch", "--parsable", "-p", "whole", "-w", node, "-t", "10",
                       "-J", "session", "-o", "/dev/null", "--chdir", "/tmp", *options,
                       "--wrap", "sleep 600", check=False)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip().split(";")[0]
        started.append(job_id)
        _wait_running(job_id)
        return job_id

    yield start
    for job_id in started:
        _cancel(job_id)


def _submit_in_job(user: str, container: str, target: str, job_id: str, *options: str
                   ) -> subprocess.CompletedProcess[str]:
    return imgsave_as(user, "--json", "submit", container, target, "--job", job_id,
                      "--in-job", *options, check=False)


def _report_site(tmp_path: Path) -> Site:
    """The local site with the usage cache in ``tmp_path`` (as test_report_cluster)."""
    text = (TOP / "site_configs" / "local.toml").read_text()
    lines = [f'database_url = "sqlite:///{tmp_path / "usage.db"}"'
             if line.startswith("database_url") else line for line in text.splitlines()]
    (tmp_path / "site.toml").write_text("\n".join(lines) + "\n")
    return Site(get_site_config(str(tmp_path / "site.toml")))


def test_a_save_inside_an_exclusive_job_completes_as_its_step(  # type: ignore[no-untyped-def]
        users_job, tmp_path: Path) -> None:
    s = site()
    repo = unique("alice/injob")
    with session_container("n1", "alice") as name:
        job = users_job("alice", "n1", "--exclusive")
        # the partition route cannot start on a node an --exclusive job holds
        blocked = submit_as("alice", name, f"{repo}:blocked", node="n1")
        try:
            # the report below counts from here: alice's saves of earlier tests were
            # submitted before (a session and a job take seconds to start)
            since = datetime.now(UTC).isoformat(timespec="seconds")
            done = _submit_in_job("alice", name, f"{repo}:v1", job)
            assert done.returncode == 0, done.stderr
            step = json.loads(done.stdout)["job_id"]
            assert re.fullmatch(rf"{job}\.[0-9]+", step), step
            status = wait_final(s, step, "alice")
            assert job_state(blocked) == "PENDING"  # still: the step did not need a CPU
        finally:
            _cancel(blocked)
    assert status.state is JobState.COMPLETED, status.reason
    assert status.node == "n1" and status.digest.startswith("sha256:")
    assert "v1" in registry_tags(repo) and "blocked" not in registry_tags(repo)
    assert job_state(job) == "RUNNING"  # the user's job goes on
    # status and queue, as alice, find the step by its id
    shown = json.loads(imgsave_as("alice", "--json", "status", step).stdout)
    assert shown[0]["job_id"] == step and shown[0]["state"] == "completed", shown
    queue = json.loads(imgsave_as("alice", "--json", "queue").stdout)
    assert step in [row["job_id"] for row in queue]
    # accounting: a step of alice's job, marked as imgsave's
    out = subprocess.run(["sacct", "-n", "-P", "-j", step, "-o", "JobID,JobName,State"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert re.match(rf"{re.escape(step)}\|imgsave-save-alice-[0-9a-f]{{32}}\|COMPLETED", out), out
    # bob asks the entry for alice's step: refused, the step's owner (its job's) decides
    request = json.loads(done.stdout)["request_id"]
    direct = as_user("bob", "sudo", "-n", ENTRY, step, request, check=False)
    assert direct.returncode == 2 and "not yours" in direct.stderr, direct.stderr
    # and bob sees no status of it
    assert imgsave_as("bob", "status", step, check=False).returncode != 0
    # usage reports count it, as a save of alice's with its bytes (accounting's listing)
    deadline = time.monotonic() + 60
    while True:
        report = build_report(_report_site(tmp_path), since=since, by="user,outcome",
                              user="alice")
        rows = {r.group["outcome"]: r for r in report.rows}
        if "succeeded" in rows or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert rows["succeeded"].saves == 1, report.to_dict()
    assert status.result is not None  # the report counts what was pushed (re-saves: less)
    assert rows["succeeded"].bytes_pushed == status.result.bytes_pushed > 0


def test_another_users_job_and_steps_are_refused(users_job) -> None:  # type: ignore[no-untyped-def]
    with session_container("n2", "bob") as bobs:
        alices = users_job("alice", "n2")
        refused = _submit_in_job("bob", bobs, "x:v1", alices)
        assert refused.returncode != 0 and "is not yours" in refused.stderr, refused.stderr
        # bob asks the entry directly for alice's job: its owner decides
        direct = as_user("bob", "sudo", "-n", ENTRY, alices, "0" * 32, check=False)
        assert direct.returncode == 2 and "not yours" in direct.stderr, direct.stderr
        # a step of bob's own job named for a request of alice's: bob's spool has no such
        # request, so nothing runs (and it could only ever save for bob)
        bobs_job = users_job("bob", "n2")
        forged = as_user("bob", "srun", "--jobid", bobs_job, "--overlap", "-N1", "-n1",
                         "--job-name", f"imgsave-save-alice-{'a' * 32}", "sh", "-c",
                         f'exec sudo -n {ENTRY} "$SLURM_JOB_ID.$SLURM_STEP_ID" {"a" * 32}',
                         check=False, timeout=60)
        assert forged.returncode != 0 and "refused" in forged.stderr + forged.stdout, forged


def test_a_job_not_on_the_containers_node_is_refused(users_job) -> None:  # type: ignore[no-untyped-def]
    with session_container("n1", "alice") as name:
        job = users_job("alice", "n2")
        done = _submit_in_job("alice", name, f"{unique('alice/elsewhere')}:v1", job,
                              "--node", "n1")
    assert done.returncode != 0, done.stdout
    assert "srun refused" in done.stderr and "n1" in done.stderr, done.stderr


def test_the_epilog_at_the_jobs_end_undoes_a_killed_step_save() -> None:
    """A step save killed outright leaves jobs/J.N.json; the job's epilog (run by Slurm
    per job, not per step) finds it: the container runs again, the record is gone."""
    job = "980000" + str(os.getpid())
    podman = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]  # local.toml's
    with session_container("n1", "alice") as name:
        cid = node_exec("n1", "podman", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        node_exec("n1", "podman", "pause", name)
        guard = JobGuard(record_path(STATE_DIR, f"{job}.3"), "e" * 32,
                         unpause=[*podman, "unpause", cid])
        guard.write()
        done = subprocess.run([str(TOP / "scripts" / "cluster.sh"), "node-exec", "n1", "env",
                               f"SLURM_JOB_ID={job}", "/usr/local/sbin/imgsave-epilog"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        state = node_exec("n1", "podman", "inspect", "-f", "{{.State.Status}}", name).stdout
        assert state.strip() == "running"
        assert not guard.path.exists()
