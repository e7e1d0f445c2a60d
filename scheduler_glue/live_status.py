"""One status query per interval for every job a server is being asked about.

A portal with many users open sends the server a status poll per user per second or
so; asking the scheduler once per poll would send slurmctld/slurmdbd (or the PBS
server) that many queries a second. :class:`SharedStatus` answers every poll from one
batched query per ``interval``: the ids asked about recently form the *watch list*,
and when a poll needs a record newer than ``interval`` the one query runs for the
whole list while other polls wait for it. Ended jobs leave the list (their records are
kept by :class:`~scheduler_glue.base.FinalRecords`).

A record is never older than ``interval`` when its poll arrived: a poll waits for the
query that starts after it, not an earlier one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from scheduler_glue.states import JobState


class _Record(Protocol):
    @property
    def state(self) -> JobState: ...


R = TypeVar("R", bound=_Record)


@dataclass
class _Watched:
    asked: float  # monotonic time of the last poll about it
    since: datetime  # the accounting window that poll asked for


class SharedStatus(Generic[R]):
    """Polls about live jobs coalesced into one query per ``interval`` seconds."""

    def __init__(self, interval: float, *, watch_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.watch_seconds = watch_seconds
        self.clock = clock
        self.queries = 0  # batched queries sent to the scheduler
        self._watched: dict[str, _Watched] = {}
        self._records: dict[str, tuple[float, R | None]] = {}
        self._lock = threading.Lock()  # the two dicts
        self._query = threading.Lock()  # one query at a time

    def records(self, job_ids: Sequence[str], since: datetime,
                fetch: Callable[[list[str], datetime], Mapping[str, R]]) -> dict[str, R]:
        """Records of ``job_ids`` no older than ``interval`` before this call (an id the
        scheduler did not name is absent). Errors of ``fetch`` reach the caller."""
        arrived = self.clock()
        with self._lock:
            for job_id in job_ids:
                self._watched[job_id] = _Watched(arrived, since)
            if (fresh := self._fresh(job_ids, arrived - self.interval)) is not None:
                return fresh
        with self._query:
            with self._lock:  # a query that ran while this poll waited may answer it
                if (fresh := self._fresh(job_ids, arrived)) is not None:
                    return fresh
                batch, window = self._batch(job_ids, arrived, since)
            found = fetch(batch, window)
            stamp = self.clock()
            with self._lock:
                self.queries += 1
                for job_id in batch:
                    record = found.get(job_id)
                    self._records[job_id] = (stamp, record)
                    if record is not None and record.state.final:
                        self._watched.pop(job_id, None)  # FinalRecords keeps it now
                return {j: r for j in job_ids if (r := self._records[j][1]) is not None}

    def _fresh(self, job_ids: Sequence[str], not_before: float
               ) -> dict[str, R] | None:
        out: dict[str, R] = {}
        for job_id in job_ids:
            kept = self._records.get(job_id)
            if kept is None or kept[0] < not_before:
                return None
            if kept[1] is not None:
                out[job_id] = kept[1]
        return out

    def _batch(self, job_ids: Sequence[str], now: float, since: datetime
               ) -> tuple[list[str], datetime]:
        """Every id watched lately (the ones asked now first), and the widest window."""
        for job_id, watched in list(self._watched.items()):
            if now - watched.asked > self.watch_seconds:
                del self._watched[job_id]
                self._records.pop(job_id, None)
        batch = list(dict.fromkeys([*job_ids, *self._watched]))
        window = min((self._watched[j].since for j in batch if j in self._watched),
                     default=since)
        return batch, window
