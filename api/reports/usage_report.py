"""Usage figures from the accounting cache: one query, grouped in Python.

Rows are loaded with a single ``SELECT`` of only the columns a report needs (bounded by
the period's submit times, on an index), then grouped and summarised here: medians and
95th percentiles are not portable SQL (SQLite has neither), and grouping 10^5 tuples in
Python takes a fraction of a second (docs/benchmarks.md, "Usage reports").
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import InstrumentedAttribute

from api.reports.usage_cache import UsageJob
from api.reports.usage_records import FAILURE_REASONS, Outcome, utc_naive
from core.errors import InvalidRequest

GROUPINGS = ("user", "account", "day", "week", "month", "node", "format", "category", "outcome")
TIME_GROUPINGS = ("day", "week", "month")
SLOT_SECONDS = 900
_COLUMN_OF: dict[str, InstrumentedAttribute[Any]] = {
    "user": UsageJob.user,
    "account": UsageJob.account,
    "node": UsageJob.node,
    "format": UsageJob.formats,
    "category": UsageJob.category,
    "outcome": UsageJob.outcome,
}
# Figures every row carries, after the outcome, reason and time columns.
_FIGURES = (UsageJob.outcome, UsageJob.reason, UsageJob.wait_seconds, UsageJob.run_seconds,
            UsageJob.cpu_seconds, UsageJob.bytes_pushed)
_IMAGE = (UsageJob.image_ref, UsageJob.image_digest)


def parse_groupings(by: str) -> list[str]:
    """``"month,category"`` → ["month", "category"]; InvalidRequest names the valid ones."""
    groupings = [g.strip() for g in by.split(",") if g.strip()]
    unknown = [g for g in groupings if g not in GROUPINGS]
    if unknown or not groupings or len(set(groupings)) != len(groupings):
        what = ", ".join(unknown) or ("a grouping twice" if groupings else "nothing")
        raise InvalidRequest(f"cannot group by {what}; use a comma-separated list of "
                             f"{', '.join(GROUPINGS)}")
    return groupings


def parse_when(text: str | None, default: datetime, *, end: bool = False) -> datetime:
    """An aware time from ``YYYY-MM-DD`` or an ISO date-time (local time when naive).

    A bare date means its local midnight; with ``end`` the midnight after it, so
    ``--until 2026-01-31`` includes the 31st.
    """
    if not text:
        return default
    try:
        moment = (datetime.strptime(text, "%Y-%m-%d") if len(text) == 10
                  else datetime.fromisoformat(text))
    except ValueError as e:
        raise InvalidRequest(f"date {text!r} is not YYYY-MM-DD or an ISO date-time") from e
    try:
        if len(text) == 10:
            moment += timedelta(days=1) if end else timedelta()
        moment = moment if moment.tzinfo else moment.astimezone()
        moment.astimezone(UTC)  # the cache keeps UTC
        return moment
    except (ValueError, OverflowError) as e:  # the year 1 or 9999 in another time zone
        raise InvalidRequest(f"date {text!r} is out of range") from e


MAX_SPAN = timedelta(days=10 * 365)  # ten years


@dataclass(frozen=True)
class Period:
    """The submit times a report covers: ``since <= submit < until``."""

    since: datetime
    until: datetime

    @classmethod
    def parse(cls, since: str | None, until: str | None, *, days: int = 30) -> Period:
        """From ``--since``/``--until`` text; defaults: the last ``days`` days up to now."""
        end = parse_when(until, datetime.now(UTC).astimezone(), end=True)
        try:
            default_start = end - timedelta(days=days)
        except OverflowError as e:
            raise InvalidRequest(f"date {until!r} is out of range") from e
        start = parse_when(since, default_start)
        if start >= end:
            raise InvalidRequest(f"since ({start:%Y-%m-%d %H:%M}) is not before until "
                                 f"({end:%Y-%m-%d %H:%M})")
        if end - start > MAX_SPAN:
            # each month of the span may cost a sacct call on the first report
            raise InvalidRequest(f"a report spans at most {MAX_SPAN.days // 365} years; "
                                 f"since {start:%Y-%m-%d} is too far before until")
        return cls(start, end)

    @property
    def label(self) -> str:
        """``2026-01-01 – 2026-01-31``: a day at midnight (``until`` names the last day
        included), any other time to the minute."""
        return f"{_moment_text(self.since, 0)} – {_moment_text(self.until, 1)}"


def _moment_text(moment: datetime, days_back: int) -> str:
    local = moment.astimezone()
    if local.time() == datetime.min.time():
        return f"{local - timedelta(days=days_back):%Y-%m-%d}"
    return f"{local:%Y-%m-%d %H:%M}"


def _p95(ordered: Sequence[float]) -> float | None:
    """The nearest-rank 95th percentile of sorted values."""
    if not ordered:
        return None
    rank = -(-95 * len(ordered) // 100)  # ceil(0.95 n)
    return round(ordered[rank - 1], 1)


def _median(ordered: Sequence[float]) -> float | None:
    return round(statistics.median(ordered), 1) if ordered else None


@dataclass
class UsageRow:
    """The figures of one group of saves."""

    group: dict[str, str]
    saves: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    failed_by_reason: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0)
    )
    wait_seconds: list[float] = field(default_factory=list)  # sorted
    run_seconds: list[float] = field(default_factory=list)  # sorted
    cpu_seconds: float = 0.0
    bytes_pushed: int = 0
    images_present: int | None = None  # None: the registry was not checked
    images_deleted: int | None = None

    @classmethod
    def from_saves(
        cls,
        group: dict[str, str],
        saves: Sequence[tuple[Any, ...]],
        first: int,
        presence: Mapping[tuple[str, str], bool] | None = None,
    ) -> UsageRow:
        """Sum rows of :func:`load_rows` whose figures start at index ``first``:
        outcome, reason, wait, run, CPU, bytes (then image reference and digest)."""
        o, r, w, u, c, b = range(first, first + 6)
        succeeded, failed = Outcome.SUCCEEDED.value, Outcome.FAILED.value
        outcomes = [s[o] for s in saves]
        row = cls(group, saves=len(saves), succeeded=outcomes.count(succeeded),
                  failed=outcomes.count(failed))
        row.unfinished = row.saves - row.succeeded - row.failed
        for reason in [s[r] for s in saves if s[o] == failed]:
            row.failed_by_reason[reason if reason in row.failed_by_reason else "other"] += 1
        row.wait_seconds = sorted([s[w] for s in saves if s[w] is not None])
        row.run_seconds = sorted([s[u] for s in saves if s[u] is not None])
        row.cpu_seconds = float(sum([s[c] for s in saves if s[c]]))
        row.bytes_pushed = int(sum([s[b] for s in saves if s[b]]))
        if presence is not None:
            found = [presence.get((s[b + 1], s[b + 2])) for s in saves if s[b + 1]]
            row.images_present, row.images_deleted = found.count(True), found.count(False)
        return row

    @property
    def median_wait(self) -> float | None:
        return _median(self.wait_seconds)

    @property
    def p95_wait(self) -> float | None:
        return _p95(self.wait_seconds)

    @property
    def median_run(self) -> float | None:
        return _median(self.run_seconds)

    @property
    def p95_run(self) -> float | None:
        return _p95(self.run_seconds)

    def to_dict(self) -> dict[str, object]:
        """The row as flat JSON/CSV fields: group keys first, then the figures."""
        return {
            **self.group,
            "saves": self.saves,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "unfinished": self.unfinished,
            **{f"failed_{reason}": n for reason, n in self.failed_by_reason.items()},
            "median_wait_seconds": self.median_wait,
            "p95_wait_seconds": self.p95_wait,
            "median_run_seconds": self.median_run,
            "p95_run_seconds": self.p95_run,
            "cpu_seconds": round(self.cpu_seconds, 1),
            "bytes_pushed": self.bytes_pushed,
            "images_present": self.images_present,
            "images_deleted": self.images_deleted,
        }


FIGURE_KEYS = tuple(UsageRow({}).to_dict())


def load_rows(engine: Engine, cluster: str, period: Period, groupings: Sequence[str], *,
              user: str | None = None, images: bool = False) -> list[tuple[Any, ...]]:
    """One query: the group columns, the submit time (epoch) if a time grouping needs it,
    the figures (and image reference and digest with ``images``) of the period's saves."""
    columns: list[InstrumentedAttribute[Any]] = [
        _COLUMN_OF[g] for g in groupings if g not in TIME_GROUPINGS
    ]
    if any(g in TIME_GROUPINGS for g in groupings):
        columns.append(UsageJob.submit_epoch)
    columns += [*_FIGURES, *(_IMAGE if images else ())]
    query = select(*columns).where(
        UsageJob.cluster == cluster,
        UsageJob.submit_time >= utc_naive(period.since),
        UsageJob.submit_time < utc_naive(period.until),
    )
    if user is not None:
        query = query.where(UsageJob.user == user)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def aggregate(
    rows: Iterable[tuple[Any, ...]],
    groupings: Sequence[str],
    presence: Mapping[tuple[str, str], bool] | None = None,
) -> list[UsageRow]:
    """Group rows of :func:`load_rows` and sum the figures, groups in key order.

    With ``presence`` ((image reference, digest) → still in the registry; rows loaded
    with ``images``), each group also counts its saved images present and deleted.
    """
    plain = sum(g not in TIME_GROUPINGS for g in groupings)
    first = plain + (plain < len(groupings))
    key_of = _key_function(groupings, plain)
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        groups[key_of(row)].append(row)
    return [
        UsageRow.from_saves(dict(zip(groupings, key, strict=True)), groups[key], first, presence)
        for key in sorted(groups)
    ]


def totals(rows: Iterable[UsageRow]) -> UsageRow:
    """One row summing ``rows`` (percentiles over every save, not over the groups)."""
    total = UsageRow({})
    checked = False
    for row in rows:
        total.saves += row.saves
        total.succeeded += row.succeeded
        total.failed += row.failed
        total.unfinished += row.unfinished
        for reason, n in row.failed_by_reason.items():
            total.failed_by_reason[reason] += n
        total.wait_seconds += row.wait_seconds
        total.run_seconds += row.run_seconds
        total.cpu_seconds += row.cpu_seconds
        total.bytes_pushed += row.bytes_pushed
        if row.images_present is not None:
            checked = True
            total.images_present = (total.images_present or 0) + row.images_present
            total.images_deleted = (total.images_deleted or 0) + (row.images_deleted or 0)
    if not checked:
        total.images_present = total.images_deleted = None
    total.wait_seconds.sort()
    total.run_seconds.sort()
    return total


def _key_function(
    groupings: Sequence[str], plain: int
) -> Callable[[tuple[Any, ...]], tuple[str, ...]]:
    """row → group key, in the order of ``groupings``. A row starts with the plain group
    columns, then (with a time grouping) the submit epoch; C-level slicing and
    itemgetter keep this fast at 10^5 rows."""
    if plain == len(groupings):
        return lambda row: row[:plain]
    slots = _LocalSlots()
    positions = _positions(groupings, plain)
    pick = itemgetter(*positions)
    if len(positions) == 1:
        return lambda row: (pick(row[:plain] + slots[row[plain] // SLOT_SECONDS]),)
    return lambda row: pick(row[:plain] + slots[row[plain] // SLOT_SECONDS])


def _positions(groupings: Sequence[str], plain: int) -> list[int]:
    """Where each grouping's value sits in ``row[:plain] + (day, week, month)``."""
    positions, column = [], 0
    for grouping in groupings:
        if grouping in TIME_GROUPINGS:
            positions.append(plain + TIME_GROUPINGS.index(grouping))
        else:
            positions.append(column)
            column += 1
    return positions


class _LocalSlots(dict[int, tuple[str, str, str]]):
    """15-minute slot of the epoch → its local (day, ISO week, month). Every time zone's
    offset is a multiple of 15 minutes, so a slot never straddles a local midnight."""

    def __missing__(self, slot: int) -> tuple[str, str, str]:
        local = time.localtime(slot * SLOT_SECONDS)
        day = date(local.tm_year, local.tm_mon, local.tm_mday)
        year, week, _ = day.isocalendar()
        text = day.isoformat()
        keys = self[slot] = (text, f"{year}-W{week:02d}", text[:7])
        return keys
