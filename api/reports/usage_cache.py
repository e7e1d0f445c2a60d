"""The accounting cache behind usage reports: save jobs in SQL, synced incrementally.

A report over a year must not ask slurmdbd (or PBS) for a year of jobs every time, and
must still count jobs the scheduler has purged since. So save jobs are copied into the
``usage_jobs`` table (SQLAlchemy 2; SQLite by default, PostgreSQL by URL) and each sync
fetches only what may have changed:

- the window from the high-water mark (the end of the last fetched window) minus
  ``overlap`` up to now: new jobs, and jobs that changed since (Slurm's ``sacct -s``
  window lists every job active in it; the overlap covers slurmdbd's lag);
- a backfill window when a report reaches further back than the cache has looked;
- the cached jobs that were not final and the window did not list (PBS lists jobs by
  submit time), through one batched ``Scheduler.status``.

Rows of final jobs never change again: a re-listed final job is skipped before its spool
files are read, unless an older imgsave wrote its row (``usage_version``, see
:data:`ROW_VERSION`). Like every table imgsave keeps, this one is a cache: ``rebuild``
drops it and fetches again (jobs the scheduler purged are then gone from it too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    String,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from api.db import create_tables
from api.reports.usage_records import SpoolReader, cache_row, utc_naive
from api.service.saves import JOB_NAME_PREFIX
from scheduler_glue.base import JobRecord, Scheduler
from scheduler_glue.states import JobState

log = logging.getLogger(__name__)

OVERLAP = timedelta(minutes=10)
# Non-final jobs older than this are left as last seen instead of asked about each sync.
RECHECK_DAYS = 30
_ID_BATCH = 500  # ids per IN (...) list: far below every database's parameter limit
# What a row holds as this imgsave computes it. Raised when that changes, so that rows an
# older imgsave wrote are computed again from accounting and the spool instead of kept as
# final (purged jobs keep their old row). 2: CPU time from the job's steps (it was 0 with
# ``sacct -X``) and the run time the node measured.
ROW_VERSION = 2


class UsageBase(DeclarativeBase):
    """Base of the usage cache's tables (their names start with ``usage_``)."""


class UsageJob(UsageBase):
    """One save job of one cluster; times are naive UTC."""

    __tablename__ = "usage_jobs"
    __table_args__ = (
        Index("ix_usage_jobs_cluster_submit", "cluster", "submit_time"),
        Index("ix_usage_jobs_cluster_final", "cluster", "final"),
    )

    cluster: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), default="")
    user: Mapped[str] = mapped_column(String(64), default="")
    account: Mapped[str] = mapped_column(String(64), default="")
    node: Mapped[str] = mapped_column(String(255), default="")
    formats: Mapped[str] = mapped_column(String(32), default="")
    category: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(20))
    final: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32), default="")
    submit_time: Mapped[datetime] = mapped_column(DateTime)
    submit_epoch: Mapped[int] = mapped_column(BigInteger)  # the same, for fast grouping
    start_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    wait_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_pushed: Mapped[int] = mapped_column(BigInteger, default=0)
    image_ref: Mapped[str] = mapped_column(String(512), default="")
    image_digest: Mapped[str] = mapped_column(String(100), default="")
    synced_at: Mapped[datetime] = mapped_column(DateTime)


class UsageSync(UsageBase):
    """How far each cluster's cache reaches: [covered_from, covered_until]."""

    __tablename__ = "usage_sync"

    cluster: Mapped[str] = mapped_column(String(64), primary_key=True)
    covered_from: Mapped[datetime] = mapped_column(DateTime)
    covered_until: Mapped[datetime] = mapped_column(DateTime)
    synced_at: Mapped[datetime] = mapped_column(DateTime)


class UsageVersion(UsageBase):
    """Per cluster: the :data:`ROW_VERSION` of its rows, and since when (naive UTC); rows
    synced before ``since`` were written by an older imgsave."""

    __tablename__ = "usage_version"

    cluster: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    since: Mapped[datetime] = mapped_column(DateTime)


@dataclass
class SyncStats:
    """What one sync did: the windows it fetched and the rows it wrote."""

    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    listed: int = 0  # records the scheduler returned
    inserted: int = 0
    updated: int = 0
    rechecked: int = 0  # non-final cached jobs asked about by id
    seconds: float = 0.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UsageCache:
    """The ``usage_jobs`` rows of one cluster and how to bring them up to date.

    ``chunk`` splits long windows into several bounded ``list_jobs`` calls (Slurm: one
    sacct per month); None fetches each window at once (PBS: ``qstat -x`` has no time
    filter, so one call returns everything anyway).
    """

    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        spool: SpoolReader,
        cluster: str,
        *,
        name_prefix: str = JOB_NAME_PREFIX,
        overlap: timedelta = OVERLAP,
        chunk: timedelta | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.spool = spool
        self.cluster = cluster
        self.name_prefix = name_prefix
        self.overlap = overlap
        self.chunk = chunk
        self.clock = clock
        create_tables(UsageBase.metadata, engine)

    # -- sync -------------------------------------------------------------------------

    def sync(self, since: datetime) -> SyncStats:
        """Fetch what changed since the last sync, and back to ``since`` if needed."""
        try:
            return self._sync(since)
        except IntegrityError:
            # another process inserted the same new jobs at the same moment: once more
            log.info("usage cache: concurrent sync, retrying")
            return self._sync(since)

    def _sync(self, since: datetime) -> SyncStats:
        started = time.perf_counter()
        now = self.clock()
        stats = SyncStats()
        with Session(self.engine) as session, session.begin():
            covered = session.get(UsageSync, self.cluster)
            current_since = self._row_version(session, covered, now)
            stats.windows = self._windows(since, now, covered)
            seen: set[str] = set()
            for start, end in stats.windows:
                records = self.scheduler.list_jobs(start, end, name_prefix=self.name_prefix)
                stats.listed += len(records)
                seen.update(r.job_id for r in records)
                self._upsert(session, records, now, stats, current_since)
            self._recheck(session, seen, now, stats, current_since)
            self._cover(session, covered, since, now)
        stats.seconds = time.perf_counter() - started
        log.info("usage cache %s: %s", self.cluster, stats)
        return stats

    def _row_version(
        self, session: Session, covered: UsageSync | None, now: datetime
    ) -> datetime:
        """Since when this cluster's rows are of :data:`ROW_VERSION` (naive UTC).

        On the first sync after an upgrade that raised it, the cache's high-water mark
        goes back to how far it had looked, so this sync lists the whole covered period
        again (in ``chunk`` windows) and every older row still in accounting is redone.
        """
        mark = session.get(UsageVersion, self.cluster)
        if mark is not None and mark.version >= ROW_VERSION:
            return mark.since
        high = utc_naive(now)
        assert high is not None
        if mark is None:
            session.add(UsageVersion(cluster=self.cluster, version=ROW_VERSION, since=high))
        else:
            mark.version, mark.since = ROW_VERSION, high
        if covered is not None:
            log.info("usage cache %s: rows of an older imgsave, listing again from %s",
                     self.cluster, covered.covered_from)
            covered.covered_until = covered.covered_from
        return high

    def _windows(
        self, since: datetime, now: datetime, covered: UsageSync | None
    ) -> list[tuple[datetime, datetime]]:
        since = since.astimezone(UTC)
        if covered is None:
            wanted = [(since, now)] if since < now else []
        else:
            low = covered.covered_from.replace(tzinfo=UTC)
            high = covered.covered_until.replace(tzinfo=UTC)
            wanted = [(since, low + self.overlap)] if since < low else []
            wanted.append((min(high - self.overlap, now), now))
        return [piece for window in wanted for piece in self._split(*window)]

    def _split(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        if self.chunk is None:
            yield start, end
            return
        while end - start > self.chunk:
            yield start, start + self.chunk
            start += self.chunk
        yield start, end

    def _upsert(
        self,
        session: Session,
        records: Iterable[JobRecord],
        now: datetime,
        stats: SyncStats,
        current_since: datetime,
    ) -> None:
        latest: dict[str, JobRecord] = {}
        for record in records:
            have = latest.get(record.job_id)
            if have is None or record.state.order >= have.state.order:
                latest[record.job_id] = record
        cached = self._cached(session, list(latest), current_since)
        new_rows: list[dict[str, Any]] = []
        changed_rows: list[dict[str, Any]] = []
        for job_id, record in latest.items():
            known = cached.get(job_id)
            request_id = record.metadata.get("request_id", "")
            if known is not None and known[0] and request_id in ("", known[1]):
                continue  # final rows never change: no spool reads for them
            row = cache_row(self.cluster, record, self.spool, now)
            if row is None:
                continue
            (changed_rows if known is not None else new_rows).append(row)
        if new_rows:
            session.execute(insert(UsageJob), new_rows)
        if changed_rows:
            session.execute(update(UsageJob), changed_rows)
        stats.inserted += len(new_rows)
        stats.updated += len(changed_rows)

    def _cached(
        self, session: Session, job_ids: Sequence[str], current_since: datetime
    ) -> dict[str, tuple[bool, str]]:
        """job_id → (final, request_id) for the cached ones among ``job_ids``; a row an
        older imgsave wrote (synced before ``current_since``) counts as not final."""
        found: dict[str, tuple[bool, str]] = {}
        for i in range(0, len(job_ids), _ID_BATCH):
            query = select(
                UsageJob.job_id, UsageJob.final, UsageJob.request_id, UsageJob.synced_at
            ).where(
                UsageJob.cluster == self.cluster,
                UsageJob.job_id.in_(job_ids[i : i + _ID_BATCH]),
            )
            for job_id, final, request_id, synced_at in session.execute(query):
                found[job_id] = (final and synced_at >= current_since, request_id)
        return found

    def _recheck(
        self,
        session: Session,
        seen: set[str],
        now: datetime,
        stats: SyncStats,
        current_since: datetime,
    ) -> None:
        """Ask by id about cached jobs that were not final and that no window listed."""
        oldest = utc_naive(now - timedelta(days=RECHECK_DAYS))
        query = select(UsageJob.job_id, UsageJob.submit_time).where(
            UsageJob.cluster == self.cluster,
            UsageJob.final.is_(False),
            UsageJob.submit_time >= oldest,
        )
        open_jobs = {j: t for j, t in session.execute(query) if j not in seen}
        if not open_jobs:
            return
        since = min(open_jobs.values()).replace(tzinfo=UTC)
        answers = self.scheduler.status(list(open_jobs), since)
        known = [r for r in answers.values() if r.state is not JobState.UNKNOWN]
        stats.rechecked += len(open_jobs)
        self._upsert(session, known, now, stats, current_since)

    def _cover(
        self, session: Session, covered: UsageSync | None, since: datetime, now: datetime
    ) -> None:
        low, high = utc_naive(since), utc_naive(now)
        assert low is not None and high is not None
        if covered is None:
            session.add(UsageSync(cluster=self.cluster, covered_from=min(low, high),
                                  covered_until=high, synced_at=high))
        else:
            covered.covered_from = min(covered.covered_from, low)
            covered.covered_until = high
            covered.synced_at = high

    # -- maintenance ------------------------------------------------------------------

    def covered_from(self) -> datetime | None:
        """The earliest time this cluster's cache has looked back to (aware UTC)."""
        with Session(self.engine) as session:
            covered = session.get(UsageSync, self.cluster)
            return covered.covered_from.replace(tzinfo=UTC) if covered else None

    def rebuild(self, since: datetime) -> SyncStats:
        """Drop this cluster's cache and fetch it again from ``since`` (or further back,
        if the cache reached further). With no other cluster in the tables, the tables
        themselves are dropped and created again (a new schema takes effect)."""
        earlier = self.covered_from()
        start = min(since.astimezone(UTC), earlier) if earlier else since
        with Session(self.engine) as session, session.begin():
            others = session.scalar(
                select(func.count()).select_from(UsageSync).where(UsageSync.cluster != self.cluster)
            )
            if others:
                session.execute(delete(UsageJob).where(UsageJob.cluster == self.cluster))
                session.execute(delete(UsageSync).where(UsageSync.cluster == self.cluster))
        if not others:
            UsageBase.metadata.drop_all(self.engine)
            create_tables(UsageBase.metadata, self.engine)
        return self.sync(start)

    def count(self) -> int:
        """How many jobs of this cluster the cache holds."""
        with Session(self.engine) as session:
            query = select(func.count()).select_from(UsageJob)
            return int(session.scalar(query.where(UsageJob.cluster == self.cluster)) or 0)

