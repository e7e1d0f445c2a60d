"""CPU and run times of saves, from real captures: sacct with its steps, the node's result.

``tests/captures/slurm/46*``: two real saves as alice on the local cluster (job 830
pushed, 831 container missing) and a three-step job, listed with the argv the backend
runs; ``46_spool`` holds those saves' real ``result.json``, with the start and end the
job measured on its node. The commands are answered by tests/support/replay.py's ReplayRunner
(a FAKE runner: a sacct history cannot be replayed on the live cluster); the same sync
runs for real in test_report_cluster.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import Engine

from api.reports.usage_cache import UsageCache, UsageJob, UsageVersion
from api.reports.usage_records import SpoolReader, run_seconds_of
from builder_jobs.events import SaveResult, read_result
from scheduler_glue.base import JobRecord
from scheduler_glue.slurm.backend import SlurmScheduler
from scheduler_glue.slurm.commands import sacct_list_argv
from scheduler_glue.states import JobState
from tests.support.replay import CAPTURES, Capture, ReplayRunner, Step, load_capture

SLURM = CAPTURES / "slurm"
SPOOL = SLURM / "46_spool"
SINCE = datetime(2026, 11, 30, 4, 28, 43, tzinfo=UTC)  # the 46* captures' window
UNTIL = datetime(2026, 11, 30, 4, 28, 56, tzinfo=UTC)
SAVED, MISSING = "ef5490b455b146d7891348c172da69a5", "81df925820d841ab92e343b765f75b87"
RESTART_DELAY = 72  # seconds accounting's end was late after a slurmctld restart


def capture(name: str) -> Capture:
    return load_capture(SLURM / f"{name}.txt")


def result(request_id: str) -> SaveResult:
    found = read_result(SPOOL / request_id / "result.json")
    assert found is not None
    return found


@pytest.fixture(autouse=True)
def _local_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The capture host's zone was UTC; sacct prints naive local times."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    yield engine
    engine.dispose()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _cache(
    engine: Engine, steps: list[Step], clock: Clock, spool: Path = SPOOL
) -> tuple[UsageCache, ReplayRunner]:
    runner = ReplayRunner(steps)
    cache = UsageCache(engine, SlurmScheduler(runner), SpoolReader(spool), "test", clock=clock)
    return cache, runner


def _rows(engine: Engine) -> dict[str, UsageJob]:
    with engine.connect() as connection:
        return {r.job_id: r for r in connection.execute(select(UsageJob))}  # type: ignore[misc]


def test_the_results_carry_the_nodes_measure() -> None:
    saved = result(SAVED)
    assert saved.ok and saved.started_at is not None and saved.ended_at is not None
    assert saved.job_seconds == pytest.approx(1.057, abs=0.001)
    # the node's start lies within accounting's start second (830: 04:28:46)
    start = datetime.fromtimestamp(saved.started_at, UTC)
    assert start.replace(microsecond=0) == datetime(2026, 11, 30, 4, 28, 46, tzinfo=UTC)
    assert result(MISSING).job_seconds == pytest.approx(0.542, abs=0.001)
    assert SaveResult.from_json(saved.to_json()) == saved
    assert replace(saved, ended_at=None).job_seconds is None
    assert replace(saved, ended_at=saved.started_at - 1).job_seconds is None  # a clock jump


def test_sync_takes_cpu_from_the_steps_and_run_from_the_node(engine: Engine) -> None:
    argv = sacct_list_argv(SINCE, UNTIL)  # exactly 46b's command
    listing = capture("46b_sacct_list_window_steps_until")
    cache, runner = _cache(engine, [Step.replay(argv, listing)], Clock(UNTIL))
    stats = cache.sync(SINCE)
    runner.assert_done()
    assert stats.inserted == 2  # the saves; cap-steps is no save, the step rows no jobs
    rows = _rows(engine)
    assert set(rows) == {"830", "831"}
    assert rows["830"].cpu_seconds == pytest.approx(1.168)  # was 0.0 with sacct -X
    assert rows["831"].cpu_seconds == pytest.approx(0.661)
    # run: the node's measure, not accounting's whole seconds (1 s each)
    assert rows["830"].run_seconds == result(SAVED).job_seconds
    assert rows["831"].run_seconds == result(MISSING).job_seconds
    assert (rows["830"].outcome, rows["831"].reason) == ("succeeded", "container_missing")
    assert rows["830"].wait_seconds == 1.0  # the wait stays accounting's


def _restarted(stdout: str, job_id: str, seconds: int) -> str:
    """``stdout`` with ``job_id``'s End (and its steps') moved ``seconds`` later: what
    accounting records when slurmctld restarts as the job ends (seen: 72 s). Derived from
    the real capture; the restart itself is another test's (it cannot run here)."""
    lines = []
    for line in stdout.splitlines():
        cols = line.split("|")
        if cols[0].partition(".")[0] == job_id:
            end = datetime.fromisoformat(cols[9]) + timedelta(seconds=seconds)
            cols[9] = end.isoformat()
        lines.append("|".join(cols))
    return "\n".join(lines) + "\n"


def test_a_late_accounting_end_does_not_inflate_the_run(engine: Engine, tmp_path: Path) -> None:
    stdout = _restarted(capture("46b_sacct_list_window_steps_until").stdout, "830", RESTART_DELAY)
    argv = sacct_list_argv(SINCE, UNTIL)
    # the same saves, one spool with the node's measure and one whose results lack it
    # (written by an imgsave before the field existed)
    old_spool = tmp_path / "old-spool"
    for request_id in (SAVED, MISSING):
        data = json.loads((SPOOL / request_id / "result.json").read_text())
        del data["started_at"], data["ended_at"]
        (old_spool / request_id).mkdir(parents=True)
        (old_spool / request_id / "result.json").write_text(json.dumps(data))
    cache, _ = _cache(engine, [Step(tuple(argv), stdout)], Clock(UNTIL))
    cache.sync(SINCE)
    assert _rows(engine)["830"].run_seconds == pytest.approx(1.057, abs=0.001)

    other = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cache, _ = _cache(other, [Step(tuple(argv), stdout)], Clock(UNTIL), old_spool)
    cache.sync(SINCE)
    assert _rows(other)["830"].run_seconds == 1 + RESTART_DELAY  # accounting's, late
    assert _rows(other)["831"].run_seconds == 1.0
    other.dispose()


def test_run_seconds_prefers_the_node_and_falls_back_to_accounting() -> None:
    start = datetime(2026, 11, 30, 4, 28, 46, tzinfo=UTC)
    record = JobRecord(
        "830",
        JobState.COMPLETED,
        node="n1",
        start_time=start,
        end_time=start + timedelta(seconds=73),
    )
    assert run_seconds_of(record, result(SAVED)) == result(SAVED).job_seconds
    assert run_seconds_of(record, replace(result(SAVED), started_at=None)) == 73.0
    assert run_seconds_of(record, None) == 73.0


def test_rows_of_an_older_imgsave_are_read_again(engine: Engine) -> None:
    argv = sacct_list_argv(SINCE, UNTIL)
    listing = capture("46b_sacct_list_window_steps_until")
    cache, _ = _cache(engine, [Step.replay(argv, listing)], Clock(UNTIL))
    cache.sync(SINCE)
    # what an older imgsave left: CPU 0.0 (sacct -X), accounting's run, no usage_version
    with engine.begin() as connection:
        connection.execute(update(UsageJob).values(cpu_seconds=0.0, run_seconds=1.0))
    UsageVersion.__table__.drop(engine)  # type: ignore[attr-defined]

    later = UNTIL + timedelta(hours=1)
    # the whole covered period is listed again (from covered_from minus the overlap);
    # the capture of the narrower window stands in for it (the same jobs)
    relist = sacct_list_argv(SINCE - timedelta(minutes=10), later)
    cache, runner = _cache(engine, [Step(tuple(relist), listing.stdout)], Clock(later))
    stats = cache.sync(SINCE)
    runner.assert_done()
    assert (stats.inserted, stats.updated) == (0, 2)
    rows = _rows(engine)
    assert rows["830"].cpu_seconds == pytest.approx(1.168)
    assert rows["830"].run_seconds == result(SAVED).job_seconds

    # once redone, a final row is left alone again: only the window since the last sync
    with engine.begin() as connection:
        connection.execute(update(UsageJob).values(cpu_seconds=0.5))
    again = later + timedelta(hours=1)
    window = sacct_list_argv(later - timedelta(minutes=10), again)
    cache, runner = _cache(engine, [Step(tuple(window), listing.stdout)], Clock(again))
    stats = cache.sync(SINCE)
    runner.assert_done()
    assert stats.updated == 0 and _rows(engine)["830"].cpu_seconds == 0.5
