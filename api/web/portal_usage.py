"""The portal's usage page: the report of every user for the form's ``by``, ``since`` and
``until``, as a table and as the chart of ``GET /api/v1/reports/usage.png``.

The form's values are checked with the report's own parsers, so the page and the API
refuse the same input with the same message; the page shows it next to the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flask import url_for

from api.reports.report import UsageReport, build_report
from api.reports.report_output import failures_text, human_seconds, plot_title
from api.reports.usage_report import Period, UsageRow, parse_groupings
from api.tables import human_bytes
from api.web.errors import status_of
from api.web.state import state
from core.errors import ImgsaveError, InvalidRequest

# What the form offers; any other valid ``by`` (typed into the URL) is added to the list.
GROUPINGS = ("user", "month", "week", "day", "node", "category", "format", "outcome",
             "account")
COMBINATIONS = ("month,category", "month,outcome", "month,user", "user,outcome",
                "node,outcome", "category,format")


@dataclass
class UsageView:
    """What usage.html shows: the form's values, their errors, the report and chart."""

    by: str
    since: str
    until: str
    errors: dict[str, str] = field(default_factory=dict)  # "by", "period" or "report"
    report: UsageReport | None = None
    status: int = 200

    @property
    def choices(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The ``by`` options in groups: (label, [(value, text)])."""
        offered = [*GROUPINGS, *COMBINATIONS]
        extra = [] if self.by in offered else [("As asked", [(self.by, _text(self.by))])]
        return [*extra, ("One grouping", [(g, _text(g)) for g in GROUPINGS]),
                ("Two groupings", [(c, _text(c)) for c in COMBINATIONS])]

    @property
    def caption(self) -> str:
        assert self.report is not None
        return (f"Image saves submitted {self.report.period.label}, "
                f"by {', '.join(self.report.groupings)}")

    @property
    def chart_url(self) -> str:
        """The PNG endpoint for exactly this report's period and groupings."""
        assert self.report is not None
        period = self.report.period
        return url_for("reports.usage_png", by=",".join(self.report.groupings),
                       since=period.since.isoformat(timespec="seconds"),
                       until=period.until.isoformat(timespec="seconds"))

    @property
    def json_url(self) -> str:
        """The same figures from ``GET /api/v1/reports/usage``."""
        assert self.report is not None
        period = self.report.period
        return url_for("reports.usage", by=",".join(self.report.groupings),
                       since=period.since.isoformat(timespec="seconds"),
                       until=period.until.isoformat(timespec="seconds"))

    @property
    def chart_alt(self) -> str:
        """The chart in words: what it plots and the totals it adds up to."""
        assert self.report is not None
        total = self.report.total
        groups = len(self.report.rows)
        text = (f"Bar chart: {plot_title(self.report)}. One stacked bar for each of the "
                f"{groups} group{'s' if groups != 1 else ''}: succeeded saves in green, "
                f"failed in red")
        text += ", unfinished in grey" if total.unfinished else ""
        text += (f". {total.saves} saves in all: {total.succeeded} succeeded, "
                 f"{total.failed} failed")
        text += f", {total.unfinished} unfinished" if total.unfinished else ""
        return text + ". The table has every figure."

    @property
    def unfinished(self) -> bool:
        """Whether the table has an Unfinished column (only when there are any)."""
        return self.report is not None and self.report.total.unfinished > 0

    def cells(self, row: UsageRow) -> list[tuple[str, str]]:
        """A row's figures as the table shows them, after its group columns: (text,
        CSS class): numbers align right, the failure reasons left."""
        cells = [str(row.saves), str(row.succeeded), str(row.failed)]
        reasons = [(failures_text(row.to_dict()).replace("_", " "), "reasons")]
        more = [str(row.unfinished)] if self.unfinished else []
        more += [_seconds(row.median_wait), _seconds(row.p95_wait),
                 _seconds(row.median_run), _seconds(row.p95_run),
                 _seconds(row.cpu_seconds), human_bytes(row.bytes_pushed)]
        return [(c, "num") for c in cells] + reasons + [(c, "num") for c in more]


def _text(by: str) -> str:
    return ", ".join(by.split(",")).capitalize()


def _seconds(value: float | None) -> str:
    return human_seconds(value) or "–"


def usage_view(args: Mapping[str, str]) -> UsageView:
    """Check the form's values and build the report (the caller is an admin)."""
    view = UsageView(by=(args.get("by") or "user").strip(),
                     since=(args.get("since") or "").strip(),
                     until=(args.get("until") or "").strip())
    try:
        parse_groupings(view.by)
    except InvalidRequest as e:
        view.errors["by"] = e.message
    try:
        Period.parse(view.since or None, view.until or None)
    except InvalidRequest as e:
        view.errors["period"] = e.message
    if view.errors:
        view.status = 400
        return view
    try:
        view.report = build_report(state().site, since=view.since or None,
                                   until=view.until or None, by=view.by,
                                   database=state().db)
    except ImgsaveError as e:
        view.errors["report"] = e.message
        view.status = status_of(e)[0]
    return view
