"""``--wait``'s follower (api/cli/follow.py) and the service's reuse of a running job's
record (status_join.LiveRecords), on real files in a temporary spool.

The status calls here are the follower's input, a list of statuses in the order a save
goes through them; the follower's own logic (when it asks, when it stops) is what is
tested. The real path (alice, Slurm, podman) is tests/cluster/test_latency_cluster.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from api.cli import follow as follow_module
from api.cli.follow import FileWatch, follow
from api.service.progress import SaveStatus, status_from_dict
from api.service.status_join import LiveRecords
from scheduler_glue.base import JobRecord
from scheduler_glue.states import JobState


def _status(state: str, stage: str, percent: int = 0) -> SaveStatus:
    return status_from_dict({"job_id": "7", "state": state, "stage": stage, "percent": percent})


def test_file_watch_sees_creation_growth_and_replacement(tmp_path: Path) -> None:
    events, result = tmp_path / "events.jsonl", tmp_path / "result.json"
    watch = FileWatch([events, result])
    assert not watch.changed()
    events.write_text("{}\n")
    assert watch.changed() and not watch.changed()
    with events.open("a") as f:
        f.write("{}\n")
    assert watch.changed()
    result.write_text("{}")
    assert watch.changed()
    start = time.monotonic()
    assert not watch.wait(time.monotonic() + 0.2)  # nothing changes: waits it out
    assert time.monotonic() - start >= 0.2


def test_follow_asks_when_a_file_changes_not_on_a_timer(tmp_path: Path) -> None:
    """Each event written wakes the follower within ~WATCH_SECONDS; with no event it
    asks only at the heartbeat. It stops at the job's final state."""
    events = tmp_path / "events.jsonl"
    script = iter([_status("running", "committing", 20), _status("running", "pushing", 70),
                   _status("running", "done", 100), _status("completed", "done", 100)])
    calls: list[float] = []

    def status() -> list[SaveStatus]:
        calls.append(time.monotonic())
        return [next(script)]

    def node() -> None:
        for _ in range(2):
            time.sleep(0.3)
            with events.open("a") as f:
                f.write("{}\n")

    writer = threading.Thread(target=node)
    start = time.monotonic()
    writer.start()
    final = follow(status, [_status("pending", "queued")], [events], 30, as_json=True)
    writer.join()
    assert final[0].state is JobState.COMPLETED
    assert len(calls) == 4
    # the first two asks follow the two events (0.3 s, 0.6 s), well before the heartbeat
    # (bounds loose for a loaded machine: only "woken by the file" is asserted)
    heartbeat = follow_module.HEARTBEAT_SECONDS
    assert 0.25 < calls[0] - start < heartbeat - 1 and 0.55 < calls[1] - start < heartbeat - 0.5
    # once the save is done (pushed), the job's end is asked for at once
    assert calls[3] - calls[2] < 1.0


def test_follow_without_files_polls_and_gives_up_at_the_timeout() -> None:
    calls = 0

    def status() -> list[SaveStatus]:
        nonlocal calls
        calls += 1
        return [_status("running", "committing")]

    start = time.monotonic()
    final = follow(status, [_status("running", "committing")], [], 0.6, as_json=True)
    assert final[0].state is JobState.RUNNING  # the caller says it did not finish
    assert 0.6 <= time.monotonic() - start < 2.5
    assert 2 <= calls <= 0.6 / follow_module.POLL_SECONDS + 1


def test_live_records_keep_only_fresh_running_records_while_no_result() -> None:
    now = [100.0]
    live = LiveRecords(seconds=3.0, clock=lambda: now[0])
    running = JobRecord("7", JobState.RUNNING, user="alice")
    live.keep({"7": running, "8": JobRecord("8", JobState.PENDING),
               "9": JobRecord("9", JobState.COMPLETED)})
    kept, ask = live.split(["7", "8", "9"], lambda j: True)
    assert kept == {"7": running} and ask == ["8", "9"]  # pending/ended: always asked
    kept, ask = live.split(["7"], lambda j: False)  # its result is there: ask again
    assert kept == {} and ask == ["7"]
    now[0] += 3.5
    assert live.split(["7"], lambda j: True) == ({}, ["7"])  # too old
    live.keep({"7": running})
    live.forget("7")  # cancelled through this process
    assert live.split(["7"], lambda j: True) == ({}, ["7"])
    live.keep({"7": running})
    live.keep({"7": JobRecord("7", JobState.COMPLETED)})  # ended: dropped
    assert live.split(["7"], lambda j: True) == ({}, ["7"])


def test_a_failed_result_is_followed_to_the_jobs_end_at_once(tmp_path: Path) -> None:
    """The node wrote a failed result; the job ends a moment later: asked for at once,
    not at the next heartbeat."""
    script = iter([_status("failed", "failed")])
    calls: list[float] = []

    def status() -> list[SaveStatus]:
        calls.append(time.monotonic())
        return [next(script)]

    start = time.monotonic()
    final = follow(status, [_status("running", "failed")], [tmp_path / "events.jsonl"], 30,
                   as_json=True)
    assert final[0].state is JobState.FAILED
    assert len(calls) == 1 and calls[0] - start < follow_module.HEARTBEAT_SECONDS - 1
