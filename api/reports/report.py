"""Image-build usage reports: who saves, how often, how it ends, how long, how much.

The figures come from the scheduler's accounting through the usage cache
(:mod:`api.reports.usage_cache`): a report first syncs the cache (only the window since the
last sync), then reads every figure from it with one query (:mod:`api.reports.usage_report`).
Bytes pushed and failure reasons come from the save's result file in the spool; whether
images still exist, from the registry when asked (:mod:`registry.presence`).
Output formats live in :mod:`api.reports.report_output`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from api.db import Database, database_url
from api.reports.usage_cache import SyncStats, UsageCache
from api.reports.usage_records import SpoolReader
from api.reports.usage_report import (
    GROUPINGS,
    Period,
    UsageRow,
    aggregate,
    load_rows,
    parse_groupings,
    totals,
)
from core.errors import ImgsaveError, InvalidRequest
from registry.presence import image_presence
from site_configs.schema import current_account

if TYPE_CHECKING:
    from api.service.site import Site

log = logging.getLogger(__name__)

_DATABASES: dict[str, Database] = {}  # one engine per URL and process


@dataclass
class UsageReport:
    """A finished report: its period, groupings, one row per group and the total."""

    period: Period
    groupings: list[str]
    rows: list[UsageRow]
    total: UsageRow
    registry_checked: bool = False
    sync: SyncStats | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON document of ``--format json``."""
        return {
            "period": {"since": self.period.since.isoformat(timespec="seconds"),
                       "until": self.period.until.isoformat(timespec="seconds"),
                       "label": self.period.label},
            "by": self.groupings,
            "registry_checked": self.registry_checked,
            "rows": [r.to_dict() for r in self.rows],
            "total": self.total.to_dict(),
        }


def parse_day(text: str | None, default: datetime) -> datetime:
    """``YYYY-MM-DD`` as UTC midnight, or ``default`` (the saves listing's ``since``)."""
    if not text:
        return default
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as e:
        raise InvalidRequest(f"date {text!r} is not YYYY-MM-DD") from e


def open_cache(site: Site, database: Database | None = None) -> UsageCache:
    """The site's usage cache, in ``database`` or the site's ``database_url``."""
    if database is None:
        url = database_url(site.config, account=current_account())
        database = _DATABASES.get(url) or _DATABASES.setdefault(url, Database(url))
    scheduler = site.scheduler
    return UsageCache(
        database.engine,
        scheduler,
        SpoolReader(site.config.spool_for, site.config.service_account),
        site.config.name,
        chunk=scheduler.accounting_window,
    )


def build_report(
    site: Site,
    *,
    since: str | None = None,
    until: str | None = None,
    by: str = "user",
    user: str | None = None,
    database: Database | None = None,
    check_registry: bool = False,
    sync: bool = True,
    rebuild: bool = False,
) -> UsageReport:
    """Sync the cache (or ``rebuild`` it), then report the period's saves grouped ``by``.

    ``user`` limits the report to one user's saves (what a non-admin sees).
    """
    groupings = parse_groupings(by)
    period = Period.parse(since, until)
    try:
        cache = open_cache(site, database)
        stats = _refresh(cache, period, sync=sync, rebuild=rebuild)
    except OperationalError as e:
        if not _unwritable(e):
            raise ImgsaveError(f"usage cache unusable ({e.orig}); an admin can run "
                               "`imgsave report --rebuild`") from e
        log.warning("usage cache not writable (%s): reporting from a private copy", e.orig)
        cache = open_cache(site, Database("sqlite://"))
        stats = _refresh(cache, period, sync=True, rebuild=False)
    rows = load_rows(cache.engine, cache.cluster, period, groupings, user=user,
                     images=check_registry)
    presence = None
    if check_registry:
        images = [(r[-2], r[-1]) for r in rows if r[-2]]
        presence = image_presence(site.registry, site.config.registry.url, images)
    grouped = aggregate(rows, groupings, presence)
    return UsageReport(period, groupings, grouped, totals(grouped),
                       registry_checked=check_registry, sync=stats)


def _refresh(cache: UsageCache, period: Period, *, sync: bool, rebuild: bool) -> SyncStats | None:
    if rebuild:
        return cache.rebuild(period.since)
    return cache.sync(period.since) if sync else None


def _unwritable(error: OperationalError) -> bool:
    text = str(error.orig).lower()
    return any(s in text for s in ("readonly", "read-only", "unable to open", "permission"))


__all__ = ["GROUPINGS", "UsageReport", "UsageRow", "build_report", "parse_day"]
