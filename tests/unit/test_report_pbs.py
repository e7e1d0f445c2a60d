"""A usage report over PBS Pro: real OpenPBS 23.06 output replayed (tests/support/replay.py).

PBS cannot run here, so ``qstat -fx -F json`` answers with the capture of every job the
server kept (09c) and the accounting log holds a job whose history was purged (14b).
Those jobs were exploration jobs, not saves: each test writes the spool files the
service and the node would have written for some of them (spec, by-job index, result),
which is how PBS saves are recognised when the metadata file beside the script is gone.
The cache lists every job name (``name_prefix=""``), as the captured names lack the
``imgsave`` prefix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from api.reports.usage_cache import UsageCache
from api.reports.usage_records import FAILURE_REASONS, SpoolReader
from api.reports.usage_report import Period, aggregate, load_rows, totals
from builder_jobs.events import FailureKind, SaveResult
from scheduler_glue.pbs.backend import PbsScheduler
from tests.support.replay import ReplayRunner, Step, pbs_capture
from tests.unit.test_report_cache import _write_save

DAY = datetime(2026, 11, 23, tzinfo=UTC)
QSTAT_ALL = ("qstat", "-fx", "-F", "json")


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The captures' clock was UTC; PBS prints local times, so read them as UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _ok(size: int) -> SaveResult:
    return SaveResult(ok=True, reference="127.0.0.1:5000/alice/x:1",
                      digest="sha256:" + "2" * 64, size_bytes=size)


def _failed(kind: FailureKind) -> SaveResult:
    return SaveResult(ok=False, failure=kind, error=kind.value)


# job id → (user, result the node wrote), for the jobs the spool says were saves
SAVES: dict[str, tuple[str, SaveResult | None]] = {
    "0.vm": ("alice", _ok(1000)),  # in the accounting log only (history purged)
    "1.vm": ("alice", _failed(FailureKind.ENGINE)),  # exit 3
    "2.vm": ("alice", _failed(FailureKind.INTERNAL)),  # qdel while running: 271
    "3.vm": ("bob", None),  # pinned to an unknown host, deleted while queued
    "7.vm": ("bob", None),  # exit 0, its result file since removed
    "8.vm": ("bob", _failed(FailureKind.NOT_OWNER)),
    "11.vm": ("bob", None),  # exit 7, no result: the node never wrote one
    "26.vm": ("alice", _failed(FailureKind.INTERNAL)),  # walltime exceeded: -29
}


Figures = dict[str, object]


def _report_rows(tmp_path: Path, by: list[str]) -> tuple[list[Figures], Figures]:
    spool = tmp_path / "spool"
    for n, (job_id, (user, result)) in enumerate(SAVES.items()):
        _write_save(spool, job_id, f"{n:032x}", user, "nosuchnode" if job_id == "3.vm" else "vm",
                    result)
    logs = tmp_path / "accounting"
    logs.mkdir()
    (logs / "20261123").write_text(pbs_capture("14b_accounting_log_final").stdout)
    runner = ReplayRunner([Step.replay(QSTAT_ALL, pbs_capture("09c_qstat_fx_F_json_all_final"))])
    clock = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    scheduler = PbsScheduler(runner, accounting_log_dir=str(logs), clock=lambda: clock)
    engine = create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    # the captures' jobs are pbsuser's: portal mode, pbsuser the service account
    spool_reader = SpoolReader(spool, service_account="pbsuser")
    cache = UsageCache(engine, scheduler, spool_reader, "pbs", name_prefix="",
                       clock=lambda: clock)
    stats = cache.sync(DAY)
    runner.assert_done()
    assert stats.listed == 28 and stats.inserted == len(SAVES)
    period = Period(DAY, datetime(2026, 11, 24, tzinfo=UTC))
    rows = aggregate(load_rows(engine, "pbs", period, by), by)
    engine.dispose()
    return [r.to_dict() for r in rows], totals(rows).to_dict()


def _reasons(row: dict[str, object]) -> dict[str, object]:
    return {r: row[f"failed_{r}"] for r in FAILURE_REASONS if row[f"failed_{r}"]}


def test_pbs_report_by_user_and_outcome(tmp_path: Path) -> None:
    rows, total = _report_rows(tmp_path, ["user", "outcome"])
    table = {(r["user"], r["outcome"]): (r["saves"], _reasons(r)) for r in rows}
    assert table == {
        ("alice", "failed"): (3, {"engine": 1, "cancelled": 1, "timeout": 1}),
        ("alice", "succeeded"): (1, {}),
        ("bob", "failed"): (3, {"not_owner": 1, "cancelled": 1, "other": 1}),
        ("bob", "succeeded"): (1, {}),
    }
    assert (total["saves"], total["succeeded"], total["failed"]) == (8, 2, 6)
    assert total["bytes_pushed"] == 1000  # the one result file that says pushed


def test_pbs_report_by_node_times(tmp_path: Path) -> None:
    rows, _ = _report_rows(tmp_path, ["node"])
    by_node = {r["node"]: r for r in rows}
    assert set(by_node) == {"vm", "nosuchnode"}  # 3.vm never ran: the node it was pinned to
    vm = by_node["vm"]
    assert vm["saves"] == 7
    # run times from the captures (end - start, seconds): 0.vm 4, 1.vm 1, 2.vm 12, 7.vm 4,
    # 8.vm 0, 11.vm 0, 26.vm 10; sorted 0 0 1 4 4 10 12 → median 4, nearest-rank p95 12
    assert (vm["median_run_seconds"], vm["p95_run_seconds"]) == (4.0, 12.0)
    assert (vm["median_wait_seconds"], vm["p95_wait_seconds"]) == (0.0, 0.0)
    assert by_node["nosuchnode"]["median_run_seconds"] is None  # never started


def test_local_days_follow_the_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: 13:20 UTC is the next day
    time.tzset()
    try:
        rows, _ = _report_rows(tmp_path, ["day"])
    finally:
        os.environ["TZ"] = "UTC"
        time.tzset()
    assert [(r["day"], r["saves"]) for r in rows] == [("2026-11-24", 8)]
