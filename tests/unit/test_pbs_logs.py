"""Accounting log and tracejob parsers on real OpenPBS 23.06.06 captures.

Sources: 14/14b = ``cat /var/spool/pbs/server_priv/accounting/20261123`` early and at
the end of the capture session; 13* = ``tracejob JOB`` as root (13d as pbsuser).
The capture host ran in UTC, so log times are read with tz=UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler_glue.base import JobRecord
from scheduler_glue.pbs.logs import (
    accounting_log_paths,
    facts_from_accounting,
    parse_accounting_log,
    parse_fields,
    parse_log_time,
    parse_tracejob,
    record_from_facts,
)
from scheduler_glue.states import JobState
from tests.support.replay import pbs_capture


def _t(hms: str) -> datetime:
    h, m, s = (int(x) for x in hms.split(":"))
    return datetime(2026, 11, 23, h, m, s, tzinfo=UTC)


def _accounting(capture: str = "14b_accounting_log_final") -> dict[str, JobRecord]:
    records = parse_accounting_log(pbs_capture(capture).stdout, UTC)
    facts = facts_from_accounting(records)
    return {job_id: record_from_facts(f, "accounting") for job_id, f in facts.items()}


def test_accounting_records_14b() -> None:
    records = parse_accounting_log(pbs_capture("14b_accounting_log_final").stdout, UTC)
    assert len(records) == 82
    assert {r.kind for r in records} == {"Q", "S", "E", "D"}
    first = records[0]
    assert (first.time, first.kind, first.job_id) == (_t("13:20:02"), "Q", "0.vm")
    assert first.fields["jobname"] == "imgsave"
    assert first.fields["Resource_List.select"] == "1:host=vm"


def test_accounting_outcomes_14b() -> None:
    jobs = _accounting()
    ok = jobs["0.vm"]
    assert ok.state is JobState.COMPLETED and ok.raw_state == "accounting:QSE"
    assert (ok.name, ok.user, ok.node, ok.partition) == ("imgsave", "pbsuser", "vm", "workq")
    assert (ok.submit_time, ok.start_time, ok.end_time) == (
        _t("13:20:02"),
        _t("13:20:02"),
        _t("13:20:06"),
    )
    assert ok.cpu_seconds == 0.0
    assert jobs["1.vm"].state is JobState.FAILED and jobs["1.vm"].exit_code == 3
    deleted = jobs["2.vm"]  # D then E with Exit_status=271
    assert deleted.state is JobState.CANCELLED and deleted.signal == 15
    assert deleted.reason.endswith("(by pbsuser@vm)") and deleted.raw_state == "accounting:QSDE"
    queued_deleted = jobs["3.vm"]  # Q and D only, no E
    assert queued_deleted.state is JobState.CANCELLED
    assert queued_deleted.end_time == _t("13:21:03") and queued_deleted.exit_code is None
    assert jobs["23.vm"].state is JobState.CANCELLED  # deleted by root, script exited 0
    assert jobs["26.vm"].state is JobState.TIMEOUT and jobs["26.vm"].exit_code == -29
    assert jobs["11.vm"].exit_code == 7


def test_accounting_early_14_has_three_jobs() -> None:
    assert sorted(_accounting("14_accounting_log")) == ["0.vm", "1.vm", "2.vm"]


def test_accounting_live_jobs() -> None:
    """Truncations of 14b at a moment a job was running and another just deleted."""
    lines = pbs_capture("14b_accounting_log_final").stdout.splitlines()
    upto_start = "\n".join(lines[:2])  # 0.vm: Q, S
    assert _accounting_text(upto_start)["0.vm"].state is JobState.RUNNING
    upto_delete = "\n".join(line for line in lines if "2.vm" in line and ";E;" not in line)
    record = _accounting_text(upto_delete)["2.vm"]  # Q, S, D: qdel sent, E not yet written
    assert record.state is JobState.COMPLETING
    only_queued = "\n".join(lines[:1])
    assert _accounting_text(only_queued)["0.vm"].state is JobState.PENDING


def _accounting_text(text: str) -> dict[str, JobRecord]:
    facts = facts_from_accounting(parse_accounting_log(text, UTC))
    return {job_id: record_from_facts(f, "accounting") for job_id, f in facts.items()}


def test_accounting_skips_garbage_and_reads_quoted_values() -> None:
    text = 'not a record\n11/23/2026 13:20:02;Q;5.vm;user=u jobname=j account="a b"\n;;\n'
    records = parse_accounting_log(text, UTC)
    assert len(records) == 1 and records[0].fields["account"] == "a b"
    assert parse_fields('a=1 b="x y" c=(vm:ncpus=1)') == {"a": "1", "b": "x y", "c": "(vm:ncpus=1)"}
    assert parse_log_time("13/45/2026 99:00:00") is None


def test_accounting_log_paths_cover_a_day_either_side(tmp_path: Path) -> None:
    since = datetime(2026, 11, 23, 12, tzinfo=UTC)
    until = datetime(2026, 11, 24, 1, tzinfo=UTC)
    names = [p.name for p in accounting_log_paths(tmp_path, since, until)]
    assert names[0] <= "20261122" and names[-1] >= "20261125" and "20261123" in names


@pytest.mark.parametrize(
    ("capture", "job_id", "state", "exit_code"),
    [
        ("13_tracejob_success", "0.vm", JobState.COMPLETED, 0),
        ("13b_tracejob_failed", "1.vm", JobState.FAILED, 3),
        ("13c_tracejob_deleted", "2.vm", JobState.CANCELLED, None),
        ("13d_tracejob_as_pbsuser", "0.vm", JobState.COMPLETED, 0),  # no A lines
        ("13e_tracejob_walltime_exceeded", "26.vm", JobState.TIMEOUT, -29),
        ("13f_tracejob_deleted_while_queued", "3.vm", JobState.CANCELLED, None),
        ("13h_tracejob_block_exit7", "11.vm", JobState.FAILED, 7),
    ],
)
def test_tracejob_outcomes(
    capture: str, job_id: str, state: JobState, exit_code: int | None
) -> None:
    facts = parse_tracejob(pbs_capture(capture).stdout, job_id, UTC)
    assert facts is not None
    record = record_from_facts(facts, "tracejob")
    assert record.job_id == job_id
    assert (record.state, record.exit_code) == (state, exit_code)
    assert record.raw_state.startswith("tracejob:")


def test_tracejob_success_details_13_and_as_user_13d() -> None:
    for capture in ("13_tracejob_success", "13d_tracejob_as_pbsuser"):
        facts = parse_tracejob(pbs_capture(capture).stdout, "0.vm", UTC)
        assert facts is not None
        record = record_from_facts(facts, "tracejob")
        assert (record.name, record.user, record.node, record.partition) == (
            "imgsave",
            "pbsuser",
            "vm",
            "workq",
        )
        assert record.submit_time == _t("13:20:02") and record.start_time == _t("13:20:02")
        assert record.end_time == _t("13:20:06") and record.cpu_seconds == 0.0


def test_tracejob_deleted_details_13c_13f() -> None:
    running = parse_tracejob(pbs_capture("13c_tracejob_deleted").stdout, "2.vm", UTC)
    assert running is not None and running.deleted_by == "pbsuser@vm"
    assert record_from_facts(running, "tracejob").signal == 15
    queued = parse_tracejob(pbs_capture("13f_tracejob_deleted_while_queued").stdout, "3.vm", UTC)
    assert queued is not None
    record = record_from_facts(queued, "tracejob")
    assert record.end_time == _t("13:21:03") and record.start_time is None
    assert record.name == "badhost"


def test_tracejob_unknown_job_13g_exits_0_with_unrelated_lines() -> None:
    cap = pbs_capture("13g_tracejob_unknown_job")
    assert cap.returncode == 0 and "Unknown Job Id" in cap.stdout
    assert parse_tracejob(cap.stdout, "9999.vm", UTC) is None


def test_tracejob_cut_short_while_running() -> None:
    """13c up to the MoM's "Started" line: the job ran and the logs stop there."""
    lines = pbs_capture("13c_tracejob_deleted").stdout.splitlines()
    cut = "\n".join(lines[: next(i for i, x in enumerate(lines) if "Started" in x) + 1])
    facts = parse_tracejob(cut, "2.vm", UTC)
    assert facts is not None
    assert record_from_facts(facts, "tracejob").state is JobState.RUNNING
