"""scheduler_glue.live_status: many polls, one batched scheduler query per interval."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from scheduler_glue.live_status import SharedStatus
from scheduler_glue.states import JobState

SINCE = datetime(2026, 11, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Record:
    job_id: str
    state: JobState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Scheduler:
    """Answers a batch with every id it knows; counts the batches."""

    def __init__(self, states: dict[str, JobState]) -> None:
        self.states = states
        self.batches: list[tuple[list[str], datetime]] = []

    def __call__(self, ids: list[str], since: datetime) -> dict[str, Record]:
        self.batches.append((list(ids), since))
        return {j: Record(j, self.states[j]) for j in ids if j in self.states}


def test_polls_within_the_interval_share_one_query_for_every_watched_job() -> None:
    clock = Clock()
    shared: SharedStatus[Record] = SharedStatus(1.0, clock=clock)
    sched = Scheduler({"1": JobState.RUNNING, "2": JobState.PENDING, "3": JobState.RUNNING})
    assert shared.records(["1"], SINCE, sched) == {"1": Record("1", JobState.RUNNING)}
    clock.now += 0.5
    assert shared.records(["1"], SINCE, sched)["1"].state is JobState.RUNNING  # fresh enough
    assert shared.records(["2"], SINCE - timedelta(hours=1), sched)["2"].state is JobState.PENDING
    assert len(sched.batches) == 2  # "2" was never asked before: one more query
    assert sorted(sched.batches[-1][0]) == ["1", "2"]  # and "1", watched, came along
    assert sched.batches[-1][1] == SINCE - timedelta(hours=1)  # the widest window asked
    clock.now += 1.1
    sched.states["1"] = JobState.COMPLETED
    got = shared.records(["2"], SINCE, sched)
    # the one query asked for every job watched
    assert sorted(sched.batches[-1][0]) == ["1", "2"]
    assert got == {"2": Record("2", JobState.PENDING)}
    # "1" was answered by that same query
    assert shared.records(["1"], SINCE, sched)["1"].state is JobState.COMPLETED
    assert len(sched.batches) == 3 and shared.queries == 3


def test_an_ended_job_and_a_forgotten_one_leave_the_watch_list() -> None:
    clock = Clock()
    shared: SharedStatus[Record] = SharedStatus(1.0, watch_seconds=30, clock=clock)
    sched = Scheduler({"1": JobState.COMPLETED, "2": JobState.RUNNING, "3": JobState.RUNNING})
    shared.records(["1", "2"], SINCE, sched)
    clock.now += 20
    shared.records(["3"], SINCE, sched)
    assert sorted(sched.batches[-1][0]) == ["2", "3"]  # "1" ended: not asked again
    clock.now += 15
    shared.records(["3"], SINCE, sched)
    assert sched.batches[-1][0] == ["3"]  # nobody asked about "2" for 35 s


def test_an_id_the_scheduler_does_not_name_is_absent_and_errors_reach_the_caller() -> None:
    clock = Clock()
    shared: SharedStatus[Record] = SharedStatus(1.0, clock=clock)
    sched = Scheduler({})
    assert shared.records(["9"], SINCE, sched) == {}

    def broken(ids: list[str], since: datetime) -> dict[str, Record]:
        raise RuntimeError("sacct failed")

    clock.now += 2
    with pytest.raises(RuntimeError, match="sacct failed"):
        shared.records(["9"], SINCE, broken)
    assert shared.records(["9"], SINCE, sched) == {}  # a failure is not kept


def test_many_threads_polling_at_once_send_one_query() -> None:
    shared: SharedStatus[Record] = SharedStatus(60.0)
    started = threading.Event()
    release = threading.Event()
    batches: list[list[str]] = []

    def slow(ids: list[str], since: datetime) -> dict[str, Record]:
        batches.append(list(ids))
        started.set()
        release.wait(10)
        return {j: Record(j, JobState.RUNNING) for j in ids}

    results: dict[str, dict[str, Record]] = {}
    first = threading.Thread(
        target=lambda: results.__setitem__("0", shared.records(["0"], SINCE, slow)))
    first.start()
    assert started.wait(10)
    # 50 polls arrive while the first query runs: they wait for one query after it
    others = [threading.Thread(target=lambda i=i: results.__setitem__(
        str(i), shared.records([str(i)], SINCE, slow))) for i in range(1, 51)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert len(results) == 51 and all(str(i) in results[str(i)] for i in range(51))
    assert len(batches) == 2 and sorted(batches[1], key=int) == [str(i) for i in range(51)]
