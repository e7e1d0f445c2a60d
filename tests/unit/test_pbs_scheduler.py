"""PbsScheduler driven end to end by the replay runner (tests/support/replay.py).

FAKE runner: PBS Pro cannot be installed here; each step answers the argv this backend
sends with the stdout/stderr/exit code of a real OpenPBS 23.06 capture (named in each
step). The captures' own command lines differ slightly (they used ``-v`` and relative
scripts, ``pbsnodes -av``); where a capture's text is edited, the test says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import InvalidRequest, NotFound, PermissionDenied, SchedulerError
from scheduler_glue.base import BatchJob
from scheduler_glue.metadata import encode_metadata
from scheduler_glue.pbs.backend import PbsScheduler
from scheduler_glue.pbs.commands import qsub_argv
from scheduler_glue.states import JobState
from tests.support.replay import Capture, ReplayRunner, Step, as_ordinary_user, pbs_capture

NOW = datetime(2026, 11, 23, 13, 30, tzinfo=UTC)
SINCE = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
META = {"user": "alice", "target": "harbor.example.org/alice/torch:v1"}
PBSNODES_VM = ["pbsnodes", "-F", "json", "vm"]


@pytest.fixture(autouse=True)
def utc_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """qstat prints local time; the captures come from a UTC host."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def job(tmp_path: Path) -> BatchJob:
    spool = tmp_path / "r1"
    spool.mkdir()
    script = spool / "job.sh"
    script.write_text("#!/bin/sh\n")
    return BatchJob(
        name="imgsave-r1",
        script=script,
        node="vm",
        output_path=spool / "job.out",
        metadata=META,
        partition="imgsave",
    )


def _pbs(
    steps: list[Step], *, server_history: bool = True, accounting_log_dir: str | None = None
) -> tuple[PbsScheduler, ReplayRunner]:
    runner = ReplayRunner(steps)
    pbs = as_ordinary_user(PbsScheduler(
        runner,
        10.0,
        server_history=server_history,
        accounting_log_dir=accounting_log_dir,
        clock=lambda: NOW,
    ))
    return pbs, runner


def _qstat(*ids: str) -> list[str]:
    return ["qstat", "-fx", "-F", "json", *ids]


def _as_ours(capture: str, job_id: str, job: BatchJob) -> str:
    """The capture's stdout with Submit_arguments rewritten to this backend's argv
    (the captured job used ``-v`` and a relative script), so metadata can be found."""
    document = json.loads(pbs_capture(capture).stdout)
    document["Jobs"][job_id]["Submit_arguments"] = " ".join(qsub_argv(job)[1:])
    return json.dumps(document, indent="\t")


def _submit_steps(job: BatchJob, qsub_capture: str) -> list[Step]:
    return [
        # 19: `pbsnodes -av -F json` on the one-node server; same shape as `-F json vm`
        Step.replay(PBSNODES_VM, pbs_capture("19_pbsnodes_av_F_json")),
        Step.replay(qsub_argv(job), pbs_capture(qsub_capture)),
    ]


def test_submit_running_then_success(job: BatchJob) -> None:
    pbs, runner = _pbs(
        [
            *_submit_steps(job, "01_qsub_imgsave"),
            Step(tuple(_qstat("0.vm")), _as_ours("02_qstat_f_F_json_running", "0.vm", job)),
            Step(tuple(_qstat("0.vm")), _as_ours("03_qstat_fx_F_json_finished", "0.vm", job)),
        ]
    )
    assert pbs.submit(job) == "0.vm"
    assert (job.script.parent / "metadata").read_text() == encode_metadata(META) + "\n"
    running = pbs.status(["0.vm"], SINCE)["0.vm"]
    assert running.state is JobState.RUNNING and running.node == "vm"
    assert running.user == "pbsuser" and running.metadata == META
    done = pbs.status(["0.vm"], SINCE)["0.vm"]
    assert done.state is JobState.COMPLETED and done.exit_code == 0
    assert done.end_time == datetime(2026, 11, 23, 13, 20, 6, tzinfo=UTC)
    assert done.metadata == META
    runner.assert_done()


def test_submit_then_script_fails(job: BatchJob) -> None:
    pbs, runner = _pbs(
        [
            *_submit_steps(job, "04_qsub_fail"),
            Step.replay(_qstat("1.vm"), pbs_capture("07_qstat_fx_F_json_failed")),
        ]
    )
    assert pbs.submit(job) == "1.vm"
    record = pbs.status(["1.vm"], SINCE)["1.vm"]
    assert (record.state, record.exit_code) == (JobState.FAILED, 3)
    runner.assert_done()


def test_submit_qdel_running_then_cancelled(job: BatchJob) -> None:
    pbs, runner = _pbs(
        [
            *_submit_steps(job, "05_qsub_long_for_qdel"),
            Step.replay(["qdel", "2.vm"], pbs_capture("06_qdel_running")),
            Step.replay(
                _qstat("2.vm"), pbs_capture("08a_qstat_fx_F_json_deleted_6s_after_qdel_still_R")
            ),
            Step.replay(_qstat("2.vm"), pbs_capture("08_qstat_fx_F_json_deleted")),
        ]
    )
    job_id = pbs.submit(job)
    pbs.cancel(job_id)
    assert pbs.status([job_id], SINCE)[job_id].state is JobState.RUNNING  # kill_delay
    record = pbs.status([job_id], SINCE)[job_id]
    assert (record.state, record.signal) == (JobState.CANCELLED, 15)
    runner.assert_done()


def test_submit_walltime_exceeded(job: BatchJob) -> None:
    pbs, runner = _pbs(
        [
            *_submit_steps(job, "22_qsub_walltime_exceeded"),
            Step.replay(_qstat("26.vm"), pbs_capture("22b_qstat_fx_F_json_walltime_exceeded")),
        ]
    )
    job_id = pbs.submit(job)
    record = pbs.status([job_id], SINCE)[job_id]
    assert (record.state, record.exit_code) == (JobState.TIMEOUT, -29)
    runner.assert_done()


def test_queued_job_deleted_while_queued() -> None:
    pbs, runner = _pbs(
        [
            Step.replay(_qstat("3.vm"), pbs_capture("15b_qstat_f_F_json_invalid_host_job")),
            Step.replay(["qdel", "3.vm"], pbs_capture("15d_qdel_queued_invalid_host")),
            Step.replay(_qstat("3.vm"), pbs_capture("15e_qstat_fx_F_json_deleted_while_queued")),
        ]
    )
    queued = pbs.status(["3.vm"], SINCE)["3.vm"]
    assert queued.state is JobState.PENDING and "Can Never Run" in queued.reason
    pbs.cancel("3.vm")
    assert pbs.status(["3.vm"], SINCE)["3.vm"].state is JobState.CANCELLED
    runner.assert_done()


def test_unknown_node_is_refused_before_qsub(job: BatchJob) -> None:
    unknown = BatchJob(**{**job.__dict__, "node": "nosuchnode"})
    pbs, runner = _pbs(
        [
            Step.replay(
                ["pbsnodes", "-F", "json", "nosuchnode"],
                pbs_capture("19d_pbsnodes_F_json_unknown_node"),  # exit 0, "Unknown node"
            )
        ]
    )
    with pytest.raises(NotFound, match="node nosuchnode is not a PBS execution host"):
        pbs.submit(unknown)
    assert not (job.script.parent / "metadata").exists()
    runner.assert_done()


@pytest.mark.parametrize(
    ("capture", "message", "retryable"),
    [
        ("16b_qsub_unknown_queue", "qsub refused the job: qsub: Unknown queue", False),
        ("16_qsub_unknown_resource", "qsub: Unknown resource: nosuchres", False),
        ("16c_qsub_missing_script", "No such file or directory", False),
        ("00_pitfall_qsub_no_setuid_pbs_iff", "cannot connect to server vm", True),
    ],
)
def test_qsub_failure(job: BatchJob, capture: str, message: str, retryable: bool) -> None:
    pbs, runner = _pbs(_submit_steps(job, capture))
    with pytest.raises(SchedulerError, match=message) as err:
        pbs.submit(job)
    assert err.value.retryable is retryable
    runner.assert_done()


def test_invalid_job_runs_nothing(job: BatchJob) -> None:
    pbs, runner = _pbs([])
    with pytest.raises(InvalidRequest):
        pbs.submit(BatchJob(**{**job.__dict__, "node": "vm:ncpus=64"}))
    runner.assert_done()


def test_node_exists() -> None:
    pbs, runner = _pbs(
        [
            Step.replay(PBSNODES_VM, pbs_capture("19f_pbsnodes_av_F_json_busy")),
            Step.replay(
                ["pbsnodes", "-F", "json", "nosuchnode"],
                pbs_capture("19d_pbsnodes_F_json_unknown_node"),
            ),
            Step(tuple(PBSNODES_VM), "", "pbsnodes: cannot connect to server vm, error=15010\n", 1),
        ]
    )
    assert pbs.node_exists("vm") is True
    assert pbs.node_exists("nosuchnode") is False
    with pytest.raises(SchedulerError, match="cannot connect"):
        pbs.node_exists("vm")  # a failing pbsnodes is an error, never "no such node"
    runner.assert_done()


# -- status: failures and fallbacks -----------------------------------------------------


def test_failing_status_command_makes_every_id_unknown(caplog: pytest.LogCaptureFixture) -> None:
    pbs, runner = _pbs(
        [
            # 09: qstat refusing its options (rc 2, usage) stands for any broken qstat
            Step.replay(_qstat("0.vm", "1.vm"), pbs_capture("09_qstat_x_F_json_all")),
            Step(tuple(_qstat("0.vm", "1.vm")), timed_out=True),
        ]
    )
    for _ in range(2):
        records = pbs.status(["0.vm", "1.vm", "0.vm"], SINCE)
        assert set(records) == {"0.vm", "1.vm"}
        assert all(r.state is JobState.UNKNOWN and not r.state.final for r in records.values())
    assert "every job UNKNOWN" in caplog.text
    runner.assert_done()


def test_partial_answer_and_unknown_id() -> None:
    """Composed from 03 (stdout) and 12c (stderr, exit 153): qstat's per-id loop."""
    ok, bad = (
        pbs_capture("03_qstat_fx_F_json_finished"),
        pbs_capture("12c_qstat_fx_F_json_unknown_job"),
    )
    pbs, runner = _pbs(
        [
            Step(tuple(_qstat("0.vm", "9999.vm")), ok.stdout, bad.stderr, bad.returncode),
            Step.replay(
                ["tracejob", "-n", "1", "9999.vm"], pbs_capture("13g_tracejob_unknown_job")
            ),
        ]
    )
    records = pbs.status(["0.vm", "9999.vm"], SINCE)
    assert records["0.vm"].state is JobState.COMPLETED
    assert records["9999.vm"].state is JobState.UNKNOWN
    runner.assert_done()


def test_history_purged_falls_back_to_tracejob() -> None:
    pbs, runner = _pbs(
        [
            Step.replay(_qstat("0.vm"), pbs_capture("23d_qstat_fx_F_json_after_qdel_x")),
            Step.replay(["tracejob", "-n", "2", "0.vm"], pbs_capture("13_tracejob_success")),
        ]
    )
    since = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)  # yesterday: two days of logs
    record = pbs.status(["0.vm"], since)["0.vm"]
    assert record.state is JobState.COMPLETED and record.raw_state == "tracejob:QSE"
    assert record.metadata == {}
    runner.assert_done()


def test_history_off_uses_qstat_f_then_tracejob() -> None:
    pbs, runner = _pbs(
        [
            Step.replay(
                ["qstat", "-f", "-F", "json", "0.vm"],
                pbs_capture("12_qstat_f_F_json_finished_without_x"),  # rc 35
            ),
            Step.replay(["tracejob", "-n", "1", "0.vm"], pbs_capture("13d_tracejob_as_pbsuser")),
        ],
        server_history=False,
    )
    assert pbs.status(["0.vm"], SINCE)["0.vm"].state is JobState.COMPLETED
    runner.assert_done()


def test_accounting_log_fallback_needs_no_tracejob(tmp_path: Path) -> None:
    (tmp_path / "20261123").write_text(pbs_capture("14b_accounting_log_final").stdout)
    pbs, runner = _pbs(
        [Step.replay(_qstat("2.vm", "3.vm"), _unknown_both("2.vm", "3.vm"))],
        accounting_log_dir=str(tmp_path),
    )
    records = pbs.status(["2.vm", "3.vm"], SINCE)
    assert records["2.vm"].state is JobState.CANCELLED and records["2.vm"].signal == 15
    assert (
        records["3.vm"].state is JobState.CANCELLED and records["3.vm"].raw_state == "accounting:QD"
    )
    runner.assert_done()


def _unknown_both(*ids: str) -> Capture:
    """12c with one "Unknown Job Id" line per id (qstat prints one per bad id)."""
    cap = pbs_capture("12c_qstat_fx_F_json_unknown_job")
    stderr = "".join(f"qstat: Unknown Job Id {job_id}\n" for job_id in ids)
    return Capture(cap.command, cap.stdout, stderr, cap.returncode)


def test_logs_that_end_while_running_give_unknown() -> None:
    """13c cut after "Started": the logs never say the job ended, qstat lost it."""
    lines = pbs_capture("13c_tracejob_deleted").stdout.splitlines()
    cut = "\n".join(lines[: next(i for i, x in enumerate(lines) if "Started" in x) + 1])
    pbs, runner = _pbs(
        [
            Step.replay(_qstat("2.vm"), _unknown_both("2.vm")),
            Step(("tracejob", "-n", "1", "2.vm"), cut),
        ]
    )
    record = pbs.status(["2.vm"], SINCE)["2.vm"]
    assert record.state is JobState.UNKNOWN and "running" in record.reason
    runner.assert_done()


def test_empty_status_runs_nothing() -> None:
    pbs, runner = _pbs([])
    assert pbs.status([], SINCE) == {}
    runner.assert_done()


# -- list_jobs, cancel, node_of_job -------------------------------------------------------


def test_list_jobs_filters_by_time_and_name(tmp_path: Path) -> None:
    all_jobs = pbs_capture("09c_qstat_fx_F_json_all_final")
    (tmp_path / "20261123").write_text(pbs_capture("14b_accounting_log_final").stdout)
    pbs, runner = _pbs(
        [Step.replay(_qstat(), all_jobs), Step.replay(_qstat(), all_jobs)],
        accounting_log_dir=str(tmp_path),
    )
    since = datetime(2026, 11, 23, 13, 22, tzinfo=UTC)
    until = datetime(2026, 11, 23, 13, 22, 50, tzinfo=UTC)
    busy = pbs.list_jobs(since, until, name_prefix="busy")
    assert [r.job_id for r in busy] == ["23.vm", "24.vm", "25.vm"]
    assert all(r.state is JobState.CANCELLED for r in busy)
    # 0.vm was purged from qstat history (qdel -x); the accounting log still has it
    purged = pbs.list_jobs(SINCE, None, name_prefix="imgsave")
    assert [(r.job_id, r.raw_state) for r in purged] == [("0.vm", "accounting:QSE")]
    runner.assert_done()


def test_list_jobs_failure_raises() -> None:
    pbs, runner = _pbs([Step.replay(_qstat(), pbs_capture("09_qstat_x_F_json_all"))])
    with pytest.raises(SchedulerError):
        pbs.list_jobs(SINCE)
    runner.assert_done()


def test_cancel_finished_is_a_no_op_and_unknown_is_not_found() -> None:
    pbs, runner = _pbs(
        [
            Step.replay(["qdel", "0.vm"], pbs_capture("23_qdel_finished_job")),  # rc 35
            Step.replay(["qdel", "9999.vm"], pbs_capture("23b_qdel_unknown_job")),  # rc 153
            # not captured: the message qdel prints for another user's job
            Step(("qdel", "5.vm"), "", "qdel: Unauthorized Request  5.vm\n", 159),
        ]
    )
    pbs.cancel("0.vm")
    with pytest.raises(NotFound):
        pbs.cancel("9999.vm")
    with pytest.raises(SchedulerError, match="Unauthorized"):
        pbs.cancel("5.vm")
    runner.assert_done()


def test_node_of_job() -> None:
    qstat_f = ["qstat", "-f", "-F", "json"]
    pbs, runner = _pbs(
        [
            Step.replay([*qstat_f, "0.vm"], pbs_capture("02_qstat_f_F_json_running")),
            Step.replay([*qstat_f, "3.vm"], pbs_capture("15b_qstat_f_F_json_invalid_host_job")),
            Step.replay([*qstat_f, "0.vm"], pbs_capture("12_qstat_f_F_json_finished_without_x")),
            # 12c was captured with -fx; without -x qstat answers an unknown id the same way
            Step.replay([*qstat_f, "9999.vm"], pbs_capture("12c_qstat_fx_F_json_unknown_job")),
        ]
    )
    assert pbs.node_of_job("0.vm") == ("vm", "pbsuser")
    with pytest.raises(NotFound, match="not running"):
        pbs.node_of_job("3.vm")
    with pytest.raises(NotFound, match="has finished"):
        pbs.node_of_job("0.vm")
    with pytest.raises(NotFound, match="unknown"):
        pbs.node_of_job("9999.vm")
    runner.assert_done()


def test_root_never_submits(tmp_path: Path, job: BatchJob) -> None:
    """qsub as root is refused by OpenPBS without acl_roots, and MoM does not track a
    root job's processes (tests/captures/pbs, root_*): imgsave refuses before any command."""
    pbs, runner = _pbs([])
    pbs.submitter_uid = lambda: 0  # type: ignore[method-assign]
    with pytest.raises(PermissionDenied, match="never submits jobs as root"):
        pbs.submit(job)
    assert runner.calls == []
    assert list(tmp_path.glob("*.metadata*")) == []


def test_history_switched_off_on_the_server_is_detected_whatever_the_config_says() -> None:
    """The site config says history is on; the server answers ``qstat -fx`` with "not
    configured to maintain job history" (exit 0, no jobs; captures 31e, 31g): the live
    job is asked again without -x and is RUNNING, not UNKNOWN; later polls skip -x."""
    pbs, runner = _pbs([
        Step.replay(_qstat("44.vm"), pbs_capture("31e_qstat_fx_F_json_live_job_history_off")),
        Step.replay(["qstat", "-f", "-F", "json", "44.vm"],
                    pbs_capture("31g_qstat_f_F_json_live_job_history_off")),
        Step.replay(["qstat", "-f", "-F", "json", "44.vm"],
                    pbs_capture("31g_qstat_f_F_json_live_job_history_off")),
    ])
    record = pbs.status(["44.vm"], SINCE)["44.vm"]
    assert record.state is JobState.RUNNING and record.user == "alice"
    assert pbs.server_history is False
    assert pbs.status(["44.vm"], SINCE)["44.vm"].state is JobState.RUNNING
    runner.assert_done()


def test_a_listing_without_history_or_logs_fails_rather_than_covering_the_window() -> None:
    """qstat -fx of every job with history off lists nothing (capture 31i); without an
    accounting log the finished jobs cannot be listed: an error, so the usage cache
    never records that window as covered by an empty answer."""
    pbs, runner = _pbs([
        Step.replay(["qstat", "-fx", "-F", "json"],
                    pbs_capture("31i_qstat_fx_F_json_all_history_off")),
        Step.replay(["qstat", "-f", "-F", "json"],
                    pbs_capture("31g_qstat_f_F_json_live_job_history_off")),
    ])
    with pytest.raises(SchedulerError, match="keeps no job history"):
        pbs.list_jobs(SINCE)
    runner.assert_done()


def test_tracejob_runs_and_is_read_in_the_servers_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user in Asia/Seoul: tracejob runs with the server's TZ (so it picks the right
    daily files, captures 28e/28f) and its times are read in that zone (28d: the job
    started 00:56:48 UTC), not 9 h off."""
    monkeypatch.setenv("TZ", "Asia/Seoul")
    time.tzset()
    try:
        runner = ReplayRunner([
            Step.replay(_qstat("36.vm"), _unknown_both("36.vm", "36.vm")),
            Step.replay(["env", "TZ=UTC", "tracejob", "-n", "1", "36.vm"],
                        pbs_capture("28d_tracejob_n1_as_alice_TZ_UTC")),
        ])
        pbs = as_ordinary_user(PbsScheduler(runner, 10.0, clock=lambda: datetime(
            2026, 11, 30, 1, 0, tzinfo=UTC), server_timezone="UTC"))
        record = pbs.status(["36.vm"], datetime(2026, 11, 30, 0, 50, tzinfo=UTC))["36.vm"]
        runner.assert_done()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert record.start_time == datetime(2026, 11, 30, 0, 56, 48, tzinfo=UTC)
    assert record.end_time == datetime(2026, 11, 30, 0, 57, 0, tzinfo=UTC)
