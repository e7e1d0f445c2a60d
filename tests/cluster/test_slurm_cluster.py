"""SlurmScheduler against the real local Slurm 22.05 cluster (``scripts/cluster.sh up``).

Jobs are tiny shell scripts that alice submits (every command runs as her, through
``runuser``: imgsave never submits as root); each test cancels what it leaves running.
Partitions: ``batch`` (users, MaxCPUsPerNode = CPUs-1) and ``imgsave`` on n1, n2.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from core.errors import CommandFailed, NotFound, SchedulerError
from core.runner import DEFAULT_TIMEOUT_SECONDS, CommandResult, run_command
from scheduler_glue.base import BatchJob, JobRecord
from scheduler_glue.slurm.backend import SlurmScheduler
from scheduler_glue.states import JobState
from tests.support.cluster_helpers import require_cluster

pytestmark = pytest.mark.cluster
T = TypeVar("T")


USER = "alice"


class RecordingRunner:
    """The real runner, as alice, keeping every argv it ran (to check what was, or was
    not, run)."""

    submitter = USER

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail_on = fail_on  # a command name whose runs raise, as a down slurmdbd would

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        check: bool = True,
        input_text: str | None = None,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        if args[0] == self.fail_on:
            raise CommandFailed(list(args), 1, "", f"{args[0]}: error: injected failure")
        as_alice = ("runuser", "-u", self.submitter, "--", *args)
        return run_command(as_alice, timeout=timeout, check=check, input_text=input_text)

    def ran(self, command: str) -> int:
        return sum(1 for call in self.calls if call[0] == command)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    require_cluster()


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def slurm(runner: RecordingRunner) -> SlurmScheduler:
    scheduler = SlurmScheduler(runner=runner, timeout=30)
    # every command runs as alice (runuser), so that is whose jobs these are
    scheduler.submitter_uid = lambda: pwd.getpwnam(USER).pw_uid  # type: ignore[method-assign]
    return scheduler


@pytest.fixture
def jobdir() -> Iterator[Path]:
    """alice's own directory for job scripts and output (pytest's jobdir is root's)."""
    directory = Path(tempfile.mkdtemp(prefix="imgsave-slurm-", dir="/tmp"))
    entry = pwd.getpwnam(USER)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def to_cancel() -> Iterator[list[str]]:
    """Job ids to scancel at the end of the test, whatever happened."""
    ids: list[str] = []
    yield ids
    if ids:
        run_command(["scancel", *ids], check=False)


def script(jobdir: Path, name: str, body: str) -> Path:
    path = jobdir / f"{name}.sh"
    path.write_text(f'#!/bin/sh\necho "ran on $SLURMD_NODENAME"\n{body}\n')
    path.chmod(0o755)
    return path


def job(
    jobdir: Path,
    name: str,
    body: str,
    node: str,
    *,
    partition: str = "imgsave",
    cpus: int = 1,
    metadata: dict[str, str] | None = None,
) -> BatchJob:
    return BatchJob(
        name=f"imgsave-test-{name}",
        script=script(jobdir, name, body),
        node=node,
        output_path=jobdir / f"{name}.out",
        metadata=metadata or {},
        partition=partition,
        time_limit_minutes=2,
        cpus=cpus,
        workdir=jobdir,
    )


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def state_of(slurm: SlurmScheduler, job_id: str, since: datetime) -> JobRecord:
    return slurm.status([job_id], since)[job_id]


def wait_state(
    slurm: SlurmScheduler, job_id: str, since: datetime, states: set[JobState], timeout: float
) -> JobRecord:
    def probe() -> JobRecord | None:
        record = state_of(slurm, job_id, since)
        return record if record.state in states else None

    return wait_for(f"job {job_id} in {sorted(s.label for s in states)}", probe, timeout)


def left_squeue(job_id: str) -> bool:
    out = run_command(["squeue", "-h", "-t", "all", "-j", job_id], check=False)
    return out.stdout.strip() == ""


def partition_idle(partition: str) -> bool:
    out = run_command(["squeue", "-h", "-p", partition, "-t", "PD,CF,R,CG"], check=False)
    return out.returncode == 0 and out.stdout.strip() == ""


def node_cpus(node: str) -> int:
    out = run_command(["sinfo", "-h", "-n", node, "-o", "%c"]).stdout.split()
    return int(out[0])


def test_pinned_job_completes_and_stays_in_accounting(
    slurm: SlurmScheduler, runner: RecordingRunner, jobdir: Path
) -> None:
    since = datetime.now(UTC)
    metadata = {"user": "alice", "request_id": "r-test-1", "target": "alice/nb:v1 x|y"}
    save = job(jobdir, "complete", "sleep 1", "n2", metadata=metadata)
    job_id = slurm.submit(save)
    record = wait_state(slurm, job_id, since, {s for s in JobState if s.final}, 180)
    assert record.state is JobState.COMPLETED, record
    assert (record.node, record.exit_code, record.name) == ("n2", 0, save.name)
    assert record.metadata == metadata  # through --comment and slurmdbd
    assert record.start_time is not None and record.end_time is not None
    assert record.start_time.tzinfo is not None
    assert abs(record.start_time - datetime.now(UTC)) < timedelta(minutes=2)
    assert (jobdir / "complete.out").read_text().strip() == "ran on n2"

    wait_for(f"job {job_id} to leave squeue (MinJobAge)", lambda: left_squeue(job_id), 120, 2)
    squeues = runner.ran("squeue")
    later = state_of(slurm, job_id, since)
    assert runner.ran("squeue") == squeues  # a final sacct answer needs no squeue
    assert later.state is JobState.COMPLETED and later.metadata == metadata
    assert later.node == "n2" and later.end_time == record.end_time


def test_cancel_a_running_job(slurm: SlurmScheduler, jobdir: Path, to_cancel: list[str]) -> None:
    since = datetime.now(UTC)
    job_id = slurm.submit(job(jobdir, "cancel", "sleep 60", "n1", metadata={"k": "v"}))
    to_cancel.append(job_id)
    # generous: other engineers' load tests may fill the imgsave partition for a while
    running = wait_state(slurm, job_id, since, {JobState.RUNNING}, 180)
    assert running.metadata == {"k": "v"}  # from squeue: sacct has no comment yet
    assert slurm.node_of_job(job_id) == ("n1", USER)
    slurm.cancel(job_id)
    record = wait_state(slurm, job_id, since, {JobState.CANCELLED}, 60)
    assert record.raw_state.startswith("CANCELLED")
    with pytest.raises(NotFound):
        slurm.node_of_job(job_id)


def test_unknown_node_is_refused_before_sbatch(
    slurm: SlurmScheduler, runner: RecordingRunner, jobdir: Path
) -> None:
    with pytest.raises(NotFound, match=r"node n9 is not a node .*\(known: n1, n2\)"):
        slurm.submit(job(jobdir, "nonode", "true", "n9"))
    assert runner.ran("sbatch") == 0


def test_sbatch_failure_surfaces_stderr(slurm: SlurmScheduler, jobdir: Path) -> None:
    with pytest.raises(SchedulerError, match="invalid partition specified: nosuchpart"):
        slurm.submit(job(jobdir, "badpart", "true", "n1", partition="nosuchpart"))


def test_failing_sacct_falls_back_to_the_controller(
    slurm: SlurmScheduler, jobdir: Path, to_cancel: list[str]
) -> None:
    """sacct fails (as with slurmdbd down): a live job's state comes from squeue; an id
    the controller does not know is UNKNOWN, saying accounting does not answer."""
    since = datetime.now(UTC)
    job_id = slurm.submit(job(jobdir, "nosacct", "sleep 30", "n2"))
    to_cancel.append(job_id)
    broken = SlurmScheduler(runner=RecordingRunner(fail_on="sacct"))
    record = wait_state(broken, job_id, since, {JobState.RUNNING}, 60)
    assert record.user == USER and record.node == "n2"
    gone = state_of(broken, "1", since)  # long out of the controller's memory
    assert gone.state is JobState.UNKNOWN and "injected failure" in gone.reason
    assert "slurmdbd" in gone.reason


def test_save_job_starts_beside_a_job_filling_the_user_partition(
    slurm: SlurmScheduler, jobdir: Path, to_cancel: list[str]
) -> None:
    """The busy-node requirement: n1's batch share is full, a save on n1 still starts."""
    # Measure with the save CPU otherwise free: wait out other engineers' queued saves.
    wait_for("an idle imgsave partition", lambda: partition_idle("imgsave"), 300, 2)
    since = datetime.now(UTC)
    user_share = max(node_cpus("n1") - 1, 1)  # batch's MaxCPUsPerNode
    blocker = slurm.submit(
        job(jobdir, "blocker", "sleep 60", "n1", partition="batch", cpus=user_share)
    )
    to_cancel.append(blocker)
    wait_state(slurm, blocker, since, {JobState.RUNNING}, 180)

    # control: another batch job on n1 cannot start now
    other = slurm.submit(job(jobdir, "queued", "true", "n1", partition="batch"))
    to_cancel.append(other)
    save_id = slurm.submit(job(jobdir, "save", "sleep 1", "n1"))
    to_cancel.append(save_id)
    started = wait_state(
        slurm, save_id, since, {JobState.RUNNING, JobState.COMPLETING, JobState.COMPLETED}, 60
    )
    assert started.node == "n1"
    # The save ran while the blocker still filled n1's batch share: the control job,
    # submitted before it, is still waiting. (How fast it starts: docs/benchmarks.md.)
    assert state_of(slurm, blocker, since).state is JobState.RUNNING
    assert state_of(slurm, other, since).state is JobState.PENDING
    done = wait_state(slurm, save_id, since, {s for s in JobState if s.final}, 60)
    assert done.state is JobState.COMPLETED
