"""Image-build usage from the scheduler's accounting: who saves, how often, how long.

Each save job's request metadata travels in accounting (Slurm ``--comment``), so a
report needs nothing but the scheduler; bytes pushed come from the spool's results.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from api.service import JOB_NAME_PREFIX
from builder_jobs.events import read_result
from builder_jobs.spec import RESULT_FILE, spool_dir_for
from scheduler_glue.base import JobRecord
from site_configs.errors import InvalidRequest

if TYPE_CHECKING:
    from api.context import Site

GROUPINGS = ("user", "account", "day", "week", "month", "node", "format", "category", "outcome")


@dataclass
class UsageRow:
    group: dict[str, str]
    saves: int = 0
    succeeded: int = 0
    failed: int = 0
    run_seconds: list[float] = field(default_factory=list)
    wait_seconds: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    bytes_pushed: int = 0

    @property
    def median_run(self) -> float | None:
        return round(statistics.median(self.run_seconds), 1) if self.run_seconds else None

    @property
    def p95_run(self) -> float | None:
        return _p95(self.run_seconds)

    def to_dict(self) -> dict[str, object]:
        return {
            **self.group,
            "saves": self.saves,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "median_run_seconds": self.median_run,
            "p95_run_seconds": self.p95_run,
            "median_wait_seconds": (
                round(statistics.median(self.wait_seconds), 1) if self.wait_seconds else None
            ),
            "p95_wait_seconds": _p95(self.wait_seconds),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "bytes_pushed": self.bytes_pushed,
        }


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)


def parse_day(text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as e:
        raise InvalidRequest(f"date {text!r} is not YYYY-MM-DD") from e


def group_key(record: JobRecord, grouping: str) -> str:
    meta = record.metadata
    when = record.submit_time or record.end_time
    if grouping == "user":
        return meta.get("user", record.user)
    if grouping == "account":
        return record.account
    if grouping == "node":
        return record.node
    if grouping == "format":
        return meta.get("formats", "")
    if grouping == "category":
        return meta.get("category", "")
    if grouping == "outcome":
        return record.state.label
    if when is None:
        return ""
    if grouping == "day":
        return when.strftime("%Y-%m-%d")
    if grouping == "week":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    return when.strftime("%Y-%m")


def aggregate(
    records: Iterable[JobRecord], groupings: list[str], bytes_of: dict[str, int]
) -> list[UsageRow]:
    rows: dict[tuple[str, ...], UsageRow] = {}
    for record in records:
        key = tuple(group_key(record, g) for g in groupings)
        row = rows.setdefault(key, UsageRow(dict(zip(groupings, key, strict=True))))
        row.saves += 1
        if record.state.final:
            if record.state.succeeded:
                row.succeeded += 1
            else:
                row.failed += 1
        if record.run_seconds is not None and record.state.final:
            row.run_seconds.append(record.run_seconds)
        if record.queue_wait_seconds is not None:
            row.wait_seconds.append(record.queue_wait_seconds)
        row.cpu_seconds += record.cpu_seconds or 0.0
        row.bytes_pushed += bytes_of.get(record.job_id, 0)
    return [rows[k] for k in sorted(rows)]


def usage_report(
    site: Site, *, since: str | None, until: str | None, by: str, user: str | None
) -> list[UsageRow]:
    groupings = [g.strip() for g in by.split(",") if g.strip()]
    unknown = [g for g in groupings if g not in GROUPINGS]
    if unknown or not groupings:
        raise InvalidRequest(f"cannot group by {', '.join(unknown) or 'nothing'}; "
                             f"use {', '.join(GROUPINGS)}")
    now = datetime.now(UTC)
    start = parse_day(since, now - timedelta(days=30))
    end = parse_day(until, now)
    records = [
        r for r in site.scheduler.list_jobs(start, end, name_prefix=JOB_NAME_PREFIX)
        if r.metadata.get("request_id") and (user is None or r.metadata.get("user") == user)
    ]
    spool = site.config.spool_dir
    bytes_of: dict[str, int] = {}
    for record in records:
        try:
            workdir = spool_dir_for(spool, record.metadata["request_id"])
        except InvalidRequest:
            continue  # a job that only looks like a save (someone else's comment)
        result = read_result(workdir / RESULT_FILE)
        if result is not None and result.ok:
            bytes_of[record.job_id] = result.size_bytes
    return aggregate(records, groupings, bytes_of)
