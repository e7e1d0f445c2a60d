"""SlurmScheduler's command exchanges, replayed from real Slurm 22.05 captures.

``tests/support/replay.py``'s ReplayRunner answers each expected argv with a capture from
``tests/captures/slurm/`` (named in each test), so these tests pin both the argv the
backend runs and how it reads the real answers. The same paths run for real against the
local cluster in ``test_slurm_cluster.py``.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import (
    ConfigError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SchedulerError,
)
from scheduler_glue import SCHEDULER_NAMES, make_scheduler
from scheduler_glue.base import BatchJob
from scheduler_glue.slurm import backend as slurm_module
from scheduler_glue.slurm.backend import SlurmScheduler, backend_path
from scheduler_glue.slurm.commands import (
    sacct_list_argv,
    sacct_status_argv,
    sbatch_argv,
    scancel_argv,
    sinfo_nodes_argv,
    squeue_node_argv,
    squeue_status_argv,
)
from scheduler_glue.states import JobState
from site_configs.schema import SchedulerSection
from tests.support.replay import (
    CAPTURES,
    Capture,
    ReplayRunner,
    Step,
    as_ordinary_user,
    load_capture,
)

SINCE = datetime(2026, 11, 26, 3, 15, tzinfo=UTC)
JOB = BatchJob(
    name="imgsave-save-r-0001",
    script=Path("/var/spool/imgsave/r-0001/job.sh"),
    node="n1",
    output_path=Path("/var/spool/imgsave/r-0001/output.log"),
    metadata={"user": "alice", "request_id": "r-0001"},
    partition="imgsave",
    workdir=Path("/var/spool/imgsave/r-0001"),
)


# The job's environment as the backend builds it for the replayed submitter (the real
# one comes from the account database: test_the_jobs_environment_is_the_accounts_alone).
JOB_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/alice", "USER": "alice",
           "LOGNAME": "alice", "LANG": "C.UTF-8"}


def submit_argv(job: BatchJob, extra: list[str] | None = None) -> list[str]:
    return sbatch_argv(job, extra or [], environment=JOB_ENV, sbatch="/usr/bin/sbatch")


def replayed(slurm: SlurmScheduler) -> SlurmScheduler:
    as_ordinary_user(slurm)
    slurm.submit_environment = lambda: (dict(JOB_ENV), "/usr/bin/sbatch")  # type: ignore[method-assign]
    return slurm


def capture(name: str) -> Capture:
    return load_capture(CAPTURES / "slurm" / f"{name}.txt")


def answer(argv: list[str], name: str) -> Step:
    """``argv`` answered with capture ``name``'s stdout, stderr and exit code."""
    return Step.replay(argv, capture(name))


def scheduler(*steps: Step) -> tuple[SlurmScheduler, ReplayRunner]:
    runner = ReplayRunner(steps)
    return replayed(SlurmScheduler(runner=runner, timeout=5)), runner


@pytest.fixture(autouse=True)
def local_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The capture host's local zone was UTC; sacct prints naive local times."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- submit ---------------------------------------------------------------------------


def test_submit_checks_the_node_then_runs_sbatch() -> None:
    # 31_sinfo_node_names.txt, 01_sbatch_parsable_ok.txt
    slurm, runner = scheduler(
        answer(sinfo_nodes_argv(), "31_sinfo_node_names"),
        answer(submit_argv(JOB), "01_sbatch_parsable_ok"),
        answer(submit_argv(JOB), "01_sbatch_parsable_ok"),
    )
    assert slurm.submit(JOB) == "4"
    assert slurm.submit(JOB) == "4"  # the node list is cached: one sinfo
    runner.assert_done()
    argv = runner.calls[1]
    assert argv[argv.index("--nodelist") + 1] == "n1"
    assert argv[argv.index("--comment") + 1] == "imgsave/1 request_id=r-0001;user=alice"


def test_submit_refuses_an_unknown_node_before_sbatch() -> None:
    slurm, runner = scheduler(answer(sinfo_nodes_argv(), "31_sinfo_node_names"))
    with pytest.raises(NotFound) as raised:
        slurm.submit(BatchJob("j", Path("/s.sh"), "n9", Path("/o"), partition="imgsave"))
    assert str(raised.value) == "node n9 is not a node of this Slurm cluster (known: n1, n2)"
    runner.assert_done()  # no sbatch


def test_unknown_node_rereads_the_node_list_when_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_module, "NODE_CACHE_SECONDS", 0.5)
    slurm, runner = scheduler(
        answer(sinfo_nodes_argv(), "31_sinfo_node_names"),
        Step(tuple(sinfo_nodes_argv()), "n1\nn2\nn3\n"),
    )
    assert slurm.node_exists("n1")
    time.sleep(0.6)
    assert slurm.node_exists("n3")  # added to the cluster since
    runner.assert_done()
    monkeypatch.setattr(slurm_module, "NODE_CACHE_SECONDS", 3600.0)
    assert not slurm.node_exists("-a") and not slurm.node_exists("n1,n2")  # fresh: no re-read


@pytest.mark.parametrize(
    ("capture_name", "message"),
    [
        ("05_sbatch_bad_partition", "invalid partition specified: nosuchpart; Batch job"),
        ("06_sbatch_unknown_node", "Invalid node name specified"),
        ("07b_sbatch_batch_over_maxcpuspernode", "Requested node configuration is not available"),
    ],
)
def test_sbatch_failure_surfaces_its_stderr(capture_name: str, message: str) -> None:
    slurm, runner = scheduler(
        answer(sinfo_nodes_argv(), "31_sinfo_node_names"), answer(submit_argv(JOB), capture_name)
    )
    with pytest.raises(SchedulerError, match="sbatch refused job imgsave-save-r-0001") as raised:
        slurm.submit(JOB)
    assert message in str(raised.value) and not raised.value.retryable
    runner.assert_done()


def test_busy_controller_is_retryable() -> None:
    busy = "sbatch: error: Batch job submission failed: Slurm temporarily unable to accept job\n"
    slurm, _ = scheduler(
        answer(sinfo_nodes_argv(), "31_sinfo_node_names"),
        Step(tuple(submit_argv(JOB)), "", busy, 1),
    )
    with pytest.raises(SchedulerError) as raised:
        slurm.submit(JOB)
    assert raised.value.retryable


@pytest.mark.parametrize(
    "job",
    [
        BatchJob("a|b", Path("/s"), "n1", Path("/o"), partition="imgsave"),
        BatchJob("a", Path("/s"), "n1", Path("/o"), partition=""),
        BatchJob("a", Path("/s"), "n1", Path("/o"), partition="imgsave", cpus=0),
    ],
)
def test_bad_jobs_run_nothing(job: BatchJob) -> None:
    slurm, runner = scheduler()
    with pytest.raises(InvalidRequest):
        slurm.submit(job)
    runner.assert_done()


def test_extra_submit_args_go_before_the_script() -> None:
    runner = ReplayRunner(
        [
            answer(sinfo_nodes_argv(), "31_sinfo_node_names"),
            answer(submit_argv(JOB, ["--mem=1G"]), "01_sbatch_parsable_ok"),
        ]
    )
    slurm = replayed(SlurmScheduler(runner, extra_submit_args=["--mem=1G"]))
    assert slurm.submit(JOB) == "4"
    assert runner.calls[1][-2:] == ("--mem=1G", str(JOB.script))


def test_the_jobs_environment_is_the_accounts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch runs under ``env -i`` with the account's name and home from the account
    database: what the caller's environment says (a planted PATH, LD_PRELOAD, PYTHONPATH,
    BASH_ENV, HOME, SLURM_*/SBATCH_* settings) is not passed on; SLURM_CONF is."""
    me = pwd.getpwuid(os.getuid())
    planted = {"PATH": "/tmp/planted:/usr/bin", "LD_PRELOAD": "/tmp/planted/x.so",
               "PYTHONPATH": "/tmp/planted", "BASH_ENV": "/tmp/planted/rc", "HOME": "/tmp/p",
               "USER": "mallory", "SBATCH_PARTITION": "debug", "SLURM_EXPORT_ENV": "ALL",
               "SLURM_CONF": "/etc/slurm/site.conf", "IMGSAVE_TOKEN": "secret"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    slurm = SlurmScheduler(ReplayRunner([]))
    slurm.submitter_uid = lambda: me.pw_uid  # type: ignore[method-assign]
    environment, sbatch = slurm.submit_environment()
    assert environment == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": me.pw_dir,
                           "USER": me.pw_name, "LOGNAME": me.pw_name, "LANG": "C.UTF-8",
                           "SLURM_CONF": "/etc/slurm/site.conf"}
    assert sbatch.endswith("sbatch") and not sbatch.startswith("/tmp/planted")
    argv = slurm.submit_argv(JOB)
    assert argv[:2] == ["env", "-i"]
    assert argv[argv.index(sbatch) - 1] == "SLURM_CONF=/etc/slurm/site.conf"
    assert argv[argv.index("--export") + 1] == "ALL"
    assert not any("planted" in a or "secret" in a or "mallory" in a for a in argv)


# -- status ---------------------------------------------------------------------------


def test_status_of_finished_jobs_is_one_sacct() -> None:
    # 40_sacct_status_finished.txt: every job final, so no squeue (taken with -X, the
    # argv before; the job rows are the same without it, 46c vs 46)
    ids = [str(i) for i in range(3, 15)]
    slurm, runner = scheduler(answer(sacct_status_argv(ids, SINCE), "40_sacct_status_finished"))
    records = slurm.status(ids, SINCE)
    runner.assert_done()
    assert {i: r.state for i, r in records.items() if i in {"3", "4", "7", "9"}} == {
        "3": JobState.TIMEOUT,
        "4": JobState.COMPLETED,
        "7": JobState.FAILED,
        "9": JobState.CANCELLED,
    }
    assert records["4"].metadata["request_id"] == "r-0001" and records["7"].exit_code == 3


def test_status_cpu_time_is_the_steps_sum() -> None:
    # 46_sacct_status_steps.txt: the exact argv, real saves as alice and a 3-step job
    since = datetime(2026, 11, 30, 4, 28, 43, tzinfo=UTC)
    ids = ["830", "831", "832"]
    slurm, runner = scheduler(answer(sacct_status_argv(ids, since), "46_sacct_status_steps"))
    records = slurm.status(ids, since)
    runner.assert_done()  # every job final and whole: no squeue
    assert set(records) == set(ids)  # no record for 830.batch and friends
    assert {i: r.cpu_seconds for i, r in records.items()} == pytest.approx(
        {"830": 1.168, "831": 0.661, "832": 0.753}
    )
    assert records["831"].state is JobState.FAILED and records["830"].name == "imgsave-alice"


def test_status_asks_squeue_for_new_and_live_jobs() -> None:
    # 41: sacct lacks 19 (just submitted) and 99999, has 17/18 without comment;
    # 42: squeue has 17, 18, 19 with their comments
    ids = ["17", "18", "19", "99999"]
    slurm, runner = scheduler(
        answer(sacct_status_argv(ids, SINCE), "41_sacct_status_live_just_submitted"),
        answer(squeue_status_argv(ids), "42_squeue_status_live"),
    )
    records = slurm.status(ids, SINCE)
    runner.assert_done()
    assert [records[i].state for i in ids] == [
        JobState.PENDING,
        JobState.RUNNING,
        JobState.PENDING,
        JobState.UNKNOWN,
    ]
    assert records["18"].metadata == {"case": "cap-live-running"} and records["18"].node == "n1"
    assert records["17"].reason == "JobHeldUser" and records["17"].metadata
    assert records["19"].name == "cap-live-new"
    assert records["99999"].reason == "not known to Slurm yet"


def test_status_takes_a_final_state_squeue_already_has() -> None:
    # sacct 41 still says RUNNING; squeue 45 (within MinJobAge) says CANCELLED
    ids = ["18"]
    slurm, _ = scheduler(
        answer(sacct_status_argv(ids, SINCE), "41_sacct_status_live_just_submitted"),
        answer(squeue_status_argv(ids), "45_squeue_status_cancelled_within_minjobage"),
    )
    record = slurm.status(ids, SINCE)["18"]
    assert record.state is JobState.CANCELLED and record.end_time is not None


def test_status_completes_a_partial_accounting_record_from_squeue() -> None:
    # 45b: sacct had job 19 only partly (name "allocation", no partition) for a few
    # seconds; 45: squeue still had it (its row for 19 only, as squeue -j 19 prints it)
    ids = ["17", "18", "19"]
    row_19 = [
        line
        for line in capture("45_squeue_status_cancelled_within_minjobage").stdout.splitlines()
        if line.startswith("19|")
    ]
    slurm, runner = scheduler(
        answer(sacct_status_argv(ids, SINCE), "45b_sacct_status_cancelled"),
        Step(tuple(squeue_status_argv(["19"])), row_19[0] + "\n"),
    )
    records = slurm.status(ids, SINCE)
    runner.assert_done()  # 17 and 18 are final and whole: squeue only for 19
    assert records["19"].state is JobState.CANCELLED
    assert (records["19"].name, records["19"].partition) == ("cap-live-new", "imgsave")
    assert records["17"].name == "cap-live-held"


def test_status_when_only_unknown_ids_remain() -> None:
    # sacct prints nothing for an id it lacks (41: 19 and 99999 are absent);
    # 42b: squeue exits 1 "Invalid job id specified" for an id it never had
    slurm, runner = scheduler(
        Step(tuple(sacct_status_argv(["99999"], SINCE)), ""),
        answer(squeue_status_argv(["99999"]), "42b_squeue_status_only_unknown"),
    )
    assert slurm.status(["99999"], SINCE)["99999"].state is JobState.UNKNOWN
    runner.assert_done()


def test_failing_sacct_asks_squeue_and_says_accounting_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """slurmdbd down: the controller is asked for what it still knows; what it does not
    know is UNKNOWN with the reason (never finished, never lost)."""
    down = "sacct: error: Problem talking to the database: Connection refused\n"
    slurm, runner = scheduler(
        Step(tuple(sacct_status_argv(["4", "7"], SINCE)), "", down, 1),
        answer(squeue_status_argv(["4", "7"]), "42b_squeue_status_only_unknown"),
    )
    with caplog.at_level(logging.WARNING):
        records = slurm.status(["4", "7", "4"], SINCE)
    runner.assert_done()
    assert {r.state for r in records.values()} == {JobState.UNKNOWN} and len(records) == 2
    assert "slurmdbd" in records["4"].reason and "Connection refused" in records["4"].reason
    assert "sacct failed" in caplog.text


def test_failing_squeue_keeps_what_sacct_said(caplog: pytest.LogCaptureFixture) -> None:
    ids = ["17", "18", "19"]
    down = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    slurm, _ = scheduler(
        answer(sacct_status_argv(ids, SINCE), "41_sacct_status_live_just_submitted"),
        Step(tuple(squeue_status_argv(ids)), "", down, 1),
    )
    with caplog.at_level(logging.WARNING):
        records = slurm.status(ids, SINCE)
    assert records["18"].state is JobState.RUNNING and records["19"].state is JobState.UNKNOWN
    assert "connect failure" in caplog.text


def test_status_validates_ids_and_accepts_none() -> None:
    slurm, runner = scheduler()
    assert slurm.status([], SINCE) == {}
    with pytest.raises(InvalidRequest, match="'-a'"):
        slurm.status(["4", "-a"], SINCE)
    runner.assert_done()


# -- list_jobs ------------------------------------------------------------------------


def test_list_jobs_filters_by_name_prefix() -> None:
    # 43_sacct_list_window.txt (taken with -X, the argv before)
    slurm, runner = scheduler(answer(sacct_list_argv(SINCE), "43_sacct_list_window"))
    records = slurm.list_jobs(SINCE, name_prefix="imgsave-")
    runner.assert_done()
    assert [(r.job_id, r.state) for r in records] == [("4", JobState.COMPLETED)]


def test_list_jobs_one_record_per_job_with_its_cpu_time() -> None:
    # 46d_sacct_list_window_steps.txt: the exact argv; step rows fold into their jobs
    since = datetime(2026, 11, 30, 4, 28, 43, tzinfo=UTC)
    slurm, runner = scheduler(answer(sacct_list_argv(since), "46d_sacct_list_window_steps"))
    records = slurm.list_jobs(since, name_prefix="imgsave-")
    runner.assert_done()
    assert [(r.job_id, r.cpu_seconds) for r in records] == [("830", 1.168), ("831", 0.661)]


def test_list_jobs_failure_and_bad_window() -> None:
    # 43d_sacct_list_refuses_state_CG.txt stands in for any sacct failure
    slurm, _ = scheduler(answer(sacct_list_argv(SINCE), "43d_sacct_list_refuses_state_CG"))
    with pytest.raises(SchedulerError, match="job state CG is not supported"):
        slurm.list_jobs(SINCE)
    with pytest.raises(InvalidRequest):
        slurm.list_jobs(SINCE, until=datetime(2026, 1, 1, tzinfo=UTC))


# -- cancel ---------------------------------------------------------------------------


def test_cancel_outcomes() -> None:
    # 33f running, 33g finished within MinJobAge, 33c unknown, 33e another user's job
    slurm, runner = scheduler(
        answer(scancel_argv("13"), "33f_scancel_v_running"),
        answer(scancel_argv("14"), "33g_scancel_v_completed_still_in_squeue"),
        answer(scancel_argv("99999"), "33c_scancel_v_unknown_job"),
        answer(scancel_argv("13"), "33e_scancel_v_other_user"),
    )
    slurm.cancel("13")
    slurm.cancel("14")  # already finished: nothing to do
    with pytest.raises(NotFound, match="99999"):
        slurm.cancel("99999")
    with pytest.raises(PermissionDenied, match="Access/permission denied"):
        slurm.cancel("13")
    runner.assert_done()


# -- node_of_job ----------------------------------------------------------------------


def test_node_of_job() -> None:
    # 44 running on n1, 44b pending, 44c unknown
    slurm, runner = scheduler(
        answer(squeue_node_argv("18"), "44_squeue_node_running"),
        answer(squeue_node_argv("17"), "44b_squeue_node_pending"),
        answer(squeue_node_argv("99999"), "44c_squeue_node_unknown"),
    )
    assert slurm.node_of_job("18") == ("n1", "root")
    with pytest.raises(NotFound, match="PENDING"):
        slurm.node_of_job("17")
    with pytest.raises(NotFound, match="not in the queue"):
        slurm.node_of_job("99999")
    runner.assert_done()


def test_node_of_a_multi_node_job_is_its_first_node() -> None:
    slurm, _ = scheduler(Step(tuple(squeue_node_argv("7")), "RUNNING|gpu[07-09]|bob\n"))
    assert slurm.node_of_job("7") == ("gpu07", "bob")


# -- factory and backend path ---------------------------------------------------------


def test_make_scheduler_by_name() -> None:
    section = SchedulerSection(
        kind="slurm",
        partition="imgsave",
        command_timeout_seconds=12,
        extra_submit_args=["--export=NONE"],
    )
    slurm = make_scheduler(section)
    assert isinstance(slurm, SlurmScheduler)
    assert slurm.timeout == 12 and slurm.extra_submit_args == ("--export=NONE",)
    pbs = make_scheduler(section.model_copy(update={"kind": "pbs"}))
    assert pbs.name != "slurm" and type(pbs).__name__ == "PbsScheduler"
    assert SCHEDULER_NAMES == ("pbs", "slurm")


def test_make_scheduler_lists_valid_names() -> None:
    bogus = SchedulerSection.model_construct(kind="lsf", partition="x")
    with pytest.raises(ConfigError, match="unknown scheduler kind 'lsf'.*valid: pbs, slurm"):
        make_scheduler(bogus)


def test_backend_path_is_cli_without_a_matching_pyslurm(monkeypatch: pytest.MonkeyPatch) -> None:
    # No pyslurm here (PyPI has none for 22.05). The module below is a FAKE pyslurm,
    # only to show the version check; 31b_sinfo_version.txt is real.
    version = ReplayRunner([answer(["sinfo", "--version"], "31b_sinfo_version")] * 2)
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    assert backend_path(version) == "cli"
    fake = types.ModuleType("pyslurm")
    fake.__version__ = "22.5.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyslurm", fake)
    assert backend_path(version) == "pyslurm"
    fake.__version__ = "25.11.2"  # type: ignore[attr-defined]
    assert backend_path(version) == "cli"
    version.assert_done()


def test_root_never_submits() -> None:
    """Issue 10: no path submits as root; refused before sinfo or sbatch runs."""
    slurm, runner = scheduler()  # no step may run
    slurm.submitter_uid = lambda: 0  # type: ignore[method-assign]
    with pytest.raises(PermissionDenied, match="never submits jobs as root"):
        slurm.submit(JOB)
    assert runner.calls == []


def test_ended_jobs_are_not_asked_about_again_live_ones_are() -> None:
    """A final state never changes: once accounting has a job ended and whole, status
    answers it from the kept record (no sacct); a live or just-ended one is asked again."""
    since = datetime(2026, 11, 30, 4, 28, 43, tzinfo=UTC)
    ids = ["830", "831", "832"]
    live = ["17", "18", "19"]
    slurm, runner = scheduler(
        answer(sacct_status_argv(ids, since), "46_sacct_status_steps"),
        # 41/42: 17 and 18 live, 19 just submitted: asked each time
        answer(sacct_status_argv(live, SINCE), "41_sacct_status_live_just_submitted"),
        answer(squeue_status_argv(live), "42_squeue_status_live"),
        answer(sacct_status_argv(live, SINCE), "41_sacct_status_live_just_submitted"),
        answer(squeue_status_argv(live), "42_squeue_status_live"),
    )
    first = slurm.status(ids, since)
    again = slurm.status(list(reversed(ids)), since)  # no command: all three kept
    assert again == first and slurm.finals.hits == 3
    slurm.status(["17", "18", "19", "830"], SINCE)  # 830 kept; the live ones asked
    slurm.status(["17", "18", "19"], SINCE)  # and asked again: not final
    runner.assert_done()
    assert slurm.finals.hits == 4
