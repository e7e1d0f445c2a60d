"""PBS output parsers on real OpenPBS 23.06.06 captures (tests/captures/pbs/*.txt).

Each test names the capture it reads; the captures are unmodified copies of
/work/shared/fixtures/pbs (a live server, host ``vm``, user ``pbsuser``, zone UTC).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pytest

from core.errors import SchedulerError
from scheduler_glue.base import JobRecord
from scheduler_glue.pbs.parse import (
    _EXEC_CODES,
    _STATE_MAP,
    finished_outcome,
    first_exec_host,
    owner_user,
    parse_ctime,
    parse_duration,
    parse_pbsnodes_json,
    parse_qstat_json,
    parse_qsub_job_id,
    record_from_qstat,
    scheduler_message,
    script_from_submit_arguments,
)
from scheduler_glue.states import JobState
from tests.support.replay import pbs_capture


def _t(hms: str) -> datetime:
    """A time on the capture day (2026-11-23, UTC)."""
    h, m, s = (int(x) for x in hms.split(":"))
    return datetime(2026, 11, 23, h, m, s, tzinfo=UTC)


def _record(capture: str, job_id: str) -> JobRecord:
    cap = pbs_capture(capture)
    answer = parse_qstat_json(cap.stdout, cap.stderr, cap.returncode)
    return record_from_qstat(job_id, answer.jobs[job_id], tz=UTC)


# -- qsub ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "job_id"),
    [
        ("01_qsub_imgsave", "0.vm"),
        ("04_qsub_fail", "1.vm"),
        ("05_qsub_long_for_qdel", "2.vm"),
        ("15_qsub_invalid_host", "3.vm"),  # accepted although the host does not exist
        ("16d_qsub_too_many_ncpus", "6.vm"),  # accepted although it can never run
        ("22_qsub_walltime_exceeded", "26.vm"),
    ],
)
def test_qsub_job_id_from_real_stdout(capture: str, job_id: str) -> None:
    assert parse_qsub_job_id(pbs_capture(capture).stdout) == job_id


def test_qsub_job_id_other_forms() -> None:
    assert parse_qsub_job_id("12.pbs.example.org\n") == "12.pbs.example.org"
    assert parse_qsub_job_id("27[].vm\n") == "27[].vm"


def test_qsub_without_job_id_shows_pattern_and_output() -> None:
    # 16_qsub_unknown_resource: empty stdout, the error is on stderr
    with pytest.raises(SchedulerError) as err:
        parse_qsub_job_id(pbs_capture("16_qsub_unknown_resource").stdout)
    assert "expected a line matching" in err.value.message and "''" in err.value.message


@pytest.mark.parametrize(
    ("capture", "message"),
    [
        ("16_qsub_unknown_resource", "qsub: Unknown resource: nosuchres"),
        ("16b_qsub_unknown_queue", "qsub: Unknown queue"),
        ("16c_qsub_missing_script", "qsub: script file:: No such file or directory"),
        ("00_pitfall_qsub_no_setuid_pbs_iff", "qsub: cannot connect to server vm (errno=-1)"),
    ],
)
def test_scheduler_message_is_last_stderr_line(capture: str, message: str) -> None:
    cap = pbs_capture(capture)
    assert cap.returncode != 0
    assert scheduler_message(cap.stderr, cap.stdout) == message


# -- qstat -f -F json --------------------------------------------------------------------


def test_running_job_02() -> None:
    record = _record("02_qstat_f_F_json_running", "0.vm")
    assert record.state is JobState.RUNNING
    assert record.raw_state == "R/41"
    assert (record.name, record.user, record.node, record.partition) == (
        "imgsave",
        "pbsuser",
        "vm",
        "workq",
    )
    assert record.submit_time == _t("13:20:02") and record.start_time == _t("13:20:02")
    assert record.end_time is None and record.exit_code is None and record.reason == ""


def test_finished_success_03() -> None:
    record = _record("03_qstat_fx_F_json_finished", "0.vm")
    assert record.state is JobState.COMPLETED
    assert record.raw_state == "F/92 Exit_status=0"
    assert (record.exit_code, record.signal, record.reason) == (0, None, "")
    assert record.end_time == _t("13:20:06")  # obittime
    assert record.run_seconds == 4.0 and record.cpu_seconds == 0.0


def test_finished_failure_07() -> None:
    record = _record("07_qstat_fx_F_json_failed", "1.vm")
    assert record.state is JobState.FAILED
    assert (record.exit_code, record.signal) == (3, None)
    assert record.reason.startswith("exit code 3; PBS comment: Job run at")


def test_qdel_while_running_08_is_cancelled_by_sigterm() -> None:
    record = _record("08_qstat_fx_F_json_deleted", "2.vm")
    assert record.state is JobState.CANCELLED
    assert record.raw_state == "F/91 Exit_status=271"
    assert (record.exit_code, record.signal) == (None, 15)
    assert "SIGTERM" in record.reason and "terminated by pbsuser@vm" in record.reason
    assert record.end_time == _t("13:20:27")


def test_qdel_while_running_08a_still_running_during_kill_delay() -> None:
    record = _record("08a_qstat_fx_F_json_deleted_6s_after_qdel_still_R", "2.vm")
    assert record.state is JobState.RUNNING and record.raw_state == "R/42"
    assert record.node == "vm"  # exec_host vm/1


def test_walltime_exceeded_22b_is_timeout() -> None:
    record = _record("22b_qstat_fx_F_json_walltime_exceeded", "26.vm")
    assert record.state is JobState.TIMEOUT
    assert record.exit_code == -29
    assert record.reason.startswith("JOB_EXEC_KILL_WALLTIME")


def test_queued_never_runnable_15b_is_pending_with_reason() -> None:
    record = _record("15b_qstat_f_F_json_invalid_host_job", "3.vm")
    assert record.state is JobState.PENDING and record.raw_state == "Q/10"
    assert record.reason.startswith("Can Never Run: Insufficient amount of resource: host")
    assert record.node == "" and record.start_time is None


def test_qdel_while_queued_15e_is_cancelled_ending_at_mtime() -> None:
    record = _record("15e_qstat_fx_F_json_deleted_while_queued", "3.vm")
    assert record.state is JobState.CANCELLED
    assert record.raw_state == "F/91"
    assert record.exit_code is None and record.reason.startswith("deleted before it ran")
    assert record.end_time == _t("13:21:03")


def test_all_jobs_09c() -> None:
    """09c: every job the server kept; each maps to a final state (23.vm: qdel, exit 0)."""
    cap = pbs_capture("09c_qstat_fx_F_json_all_final")
    answer = parse_qstat_json(cap.stdout, cap.stderr, cap.returncode)
    states = {
        job_id: record_from_qstat(job_id, attrs, tz=UTC).state
        for job_id, attrs in answer.jobs.items()
    }
    assert "0.vm" not in states  # purged by qdel -x (23c)
    assert all(state.final for state in states.values())
    assert states["23.vm"] is JobState.CANCELLED  # deleted while running, script exited 0
    assert states["25.vm"] is JobState.CANCELLED  # deleted while queued
    assert states["26.vm"] is JobState.TIMEOUT
    assert states["27[].vm"] is JobState.COMPLETED  # array parent
    assert states["12.vm"] is JobState.COMPLETED


def test_unknown_job_12c_is_a_per_job_error_not_a_failure() -> None:
    cap = pbs_capture("12c_qstat_fx_F_json_unknown_job")
    assert cap.returncode == 153
    answer = parse_qstat_json(cap.stdout, cap.stderr, cap.returncode)
    assert answer.jobs == {} and answer.unknown == {"9999.vm"}


def test_finished_without_x_12_prints_header_and_exits_35() -> None:
    cap = pbs_capture("12_qstat_f_F_json_finished_without_x")
    answer = parse_qstat_json(cap.stdout, cap.stderr, cap.returncode)
    assert cap.returncode == 35
    assert answer.jobs == {} and answer.finished == {"0.vm"}


def test_no_jobs_12d() -> None:
    cap = pbs_capture("12d_qstat_f_F_json_no_jobs_current")
    assert parse_qstat_json(cap.stdout, cap.stderr, cap.returncode).jobs == {}


@pytest.mark.parametrize("capture", ["09_qstat_x_F_json_all", "12i_qstat_F_json_without_f"])
def test_conflicting_options_is_a_failure(capture: str) -> None:
    cap = pbs_capture(capture)  # rc 2, usage on stderr
    with pytest.raises(SchedulerError, match="qstat failed"):
        parse_qstat_json(cap.stdout, cap.stderr, cap.returncode)


def test_partial_answer_keeps_known_jobs() -> None:
    """Composed: 03's stdout with 12c's stderr line and exit 153, which is what qstat's
    per-id loop prints for ``qstat -fx -F json 0.vm 9999.vm`` (openpbs qstat.c)."""
    ok, bad = (
        pbs_capture("03_qstat_fx_F_json_finished"),
        pbs_capture("12c_qstat_fx_F_json_unknown_job"),
    )
    answer = parse_qstat_json(ok.stdout, bad.stderr, bad.returncode)
    assert set(answer.jobs) == {"0.vm"} and answer.unknown == {"9999.vm"}


def test_server_down_with_header_only_json_is_a_failure() -> None:
    """qstat prints its JSON header before connecting; a connect error must not read
    as "no jobs" (message format from openpbs qstat.c)."""
    header = pbs_capture("12d_qstat_f_F_json_no_jobs_current").stdout
    with pytest.raises(SchedulerError, match="cannot connect"):
        parse_qstat_json(header, "qstat: cannot connect to server vm (errno=15010)\n", 1)


def test_stderr_note_with_exit_0_keeps_the_answer() -> None:
    cap = pbs_capture("03_qstat_fx_F_json_finished")
    answer = parse_qstat_json(cap.stdout, "qstat: some warning\n", 0)
    assert set(answer.jobs) == {"0.vm"}


def test_non_json_stdout_is_a_failure() -> None:
    with pytest.raises(SchedulerError, match="no JSON"):
        parse_qstat_json("Job id  Name\n----\n", "", 0)


# -- state rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_status", "deleted", "state", "exit_code", "sig"),
    [
        (0, False, JobState.COMPLETED, 0, None),
        (3, False, JobState.FAILED, 3, None),
        (256, False, JobState.FAILED, 256, None),
        (265, False, JobState.FAILED, None, 9),
        (271, True, JobState.CANCELLED, None, 15),
        (271, False, JobState.FAILED, None, 15),
        (0, True, JobState.CANCELLED, 0, None),
        (None, True, JobState.CANCELLED, None, None),
        (None, False, JobState.FAILED, None, None),
        (-29, False, JobState.TIMEOUT, -29, None),
        (-27, False, JobState.OUT_OF_MEMORY, -27, None),
        (-20, False, JobState.NODE_FAIL, -20, None),
        (-1, False, JobState.FAILED, -1, None),
        (-99, False, JobState.FAILED, -99, None),
    ],
)
def test_finished_outcome(
    exit_status: int | None, deleted: bool, state: JobState, exit_code: int | None, sig: int | None
) -> None:
    outcome = finished_outcome(exit_status, deleted=deleted)
    assert (outcome.state, outcome.exit_code, outcome.signal) == (state, exit_code, sig)
    assert outcome.state.final


def test_state_map_covers_every_live_letter() -> None:
    assert set(_STATE_MAP) == set("QHWTRBSUEM")
    assert all(not state.final for state in _STATE_MAP.values())
    assert all(code < 0 for code in _EXEC_CODES)


def test_unknown_job_state_letter_is_unknown() -> None:
    record = record_from_qstat("1.vm", {"job_state": "Z"})
    assert record.state is JobState.UNKNOWN and "Z" in record.reason


# -- small helpers -----------------------------------------------------------------------


def test_helpers() -> None:
    assert parse_ctime("Mon Nov 23 13:20:02 2026", UTC) == _t("13:20:02")
    assert parse_ctime("Tue Nov  3 01:02:03 2026", UTC) == datetime(
        2026, 11, 3, 1, 2, 3, tzinfo=UTC
    )
    assert parse_ctime("garbage", UTC) is None and parse_ctime(None) is None
    local = parse_ctime("Mon Nov 23 13:20:02 2026")
    assert local is not None and local.tzinfo is not None
    assert parse_duration("00:00:03") == 3.0 and parse_duration("123:00:01") == 442801.0
    assert parse_duration(None) is None and parse_duration("x") is None
    assert first_exec_host("vm/0") == "vm" and first_exec_host("n1/0*2+n2/1") == "n1"
    assert first_exec_host("") == ""
    assert owner_user("pbsuser@vm") == "pbsuser"


def test_script_from_submit_arguments() -> None:
    # 03: the capture's own job used a relative script: no metadata lookup for it
    attrs = json.loads(pbs_capture("03_qstat_fx_F_json_finished").stdout)["Jobs"]["0.vm"]
    assert script_from_submit_arguments(attrs["Submit_arguments"]) is None
    ours = "-q imgsave -N s1 -l select=1:host=vm:ncpus=1 -j oe -o /spool/r1/out /spool/r1/job.sh"
    assert script_from_submit_arguments(ours) == PurePosixPath("/spool/r1/job.sh")
    assert script_from_submit_arguments("") is None


# -- pbsnodes -F json --------------------------------------------------------------------


def test_pbsnodes_known_node_19_and_busy_19f() -> None:
    assert parse_pbsnodes_json(pbs_capture("19_pbsnodes_av_F_json").stdout, "vm") == "free"
    assert (
        parse_pbsnodes_json(pbs_capture("19f_pbsnodes_av_F_json_busy").stdout, "vm") == "job-busy"
    )


def test_pbsnodes_unknown_node_19d_exits_0_but_is_unknown() -> None:
    cap = pbs_capture("19d_pbsnodes_F_json_unknown_node")
    assert cap.returncode == 0
    assert parse_pbsnodes_json(cap.stdout, "nosuchnode") is None


def test_pbsnodes_other_shapes() -> None:
    older = '{"nodes": {"n9": {"Error": "Unknown node"}}}'  # openpbs pbsnodes.c LISTSP error
    assert parse_pbsnodes_json(older, "n9") is None
    assert parse_pbsnodes_json(pbs_capture("19_pbsnodes_av_F_json").stdout, "other") is None
    with pytest.raises(SchedulerError):
        parse_pbsnodes_json("pbsnodes: cannot connect", "vm")
