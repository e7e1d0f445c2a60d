"""A usage report as a terminal table, CSV, JSON or a PNG bar chart for a slide.

Every text the chart draws is plain (``parse_math=False``): group names come from users
(a category, a node, an account), and matplotlib would read ``$...$`` in one as mathtext
and fail to draw the whole chart on a bad formula.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.reports.report import UsageReport
from api.reports.usage_report import FIGURE_KEYS, TIME_GROUPINGS, UsageRow
from api.tables import human_bytes, render_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_BARS = 40  # beyond this a non-time grouping shows its busiest groups only
MAX_LABELS = 24  # x labels readable on a slide
SLIDE_INCHES = (13.33, 7.5)  # 16:9
COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "unfinished": "#9e9e9e"}


def render(report: UsageReport, output_format: str) -> str:
    """The report as ``table``, ``csv`` or ``json`` text."""
    return render_document(report.to_dict(), output_format)


def render_document(doc: Mapping[str, Any], output_format: str) -> str:
    """A report's JSON document (:meth:`UsageReport.to_dict`, what ``GET
    /api/v1/reports/usage`` returns) as ``table``, ``csv`` or ``json`` text: direct and
    ``--api`` mode print the same."""
    if output_format == "csv":
        return csv_text(doc)
    if output_format == "json":
        return json.dumps(doc, indent=2)
    return table_text(doc)


def human_seconds(value: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``; "" for no value."""
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def failures_text(row: Mapping[str, Any]) -> str:
    """``cancelled 2, engine 1``: the failure reasons of a row (its ``failed_REASON``
    fields) that occurred, most frequent first, ties by name (the same text whatever
    order the row's keys came in, e.g. sorted by a JSON round trip)."""
    found = [(n, key.removeprefix("failed_")) for key, n in row.items()
             if key.startswith("failed_") and n]  # fmt: skip
    found.sort(key=lambda pair: (-pair[0], pair[1]))
    return ", ".join(f"{reason} {n}" for n, reason in found)


def table_text(doc: Mapping[str, Any]) -> str:
    """A caption line and an aligned table, with a TOTAL line when there are groups."""
    groupings: list[str] = list(doc["by"])
    caption = f"Image saves submitted {doc['period']['label']}, by {', '.join(groupings)}"
    if not doc["rows"]:
        return f"{caption}\nno save jobs in this period"
    total = doc["total"]
    unfinished = total["unfinished"] > 0
    headers = [g.upper() for g in groupings] + ["SAVES", "OK", "FAILED"]
    headers += ["UNFINISHED"] if unfinished else []
    headers += ["WAIT_MED", "WAIT_P95", "RUN_MED", "RUN_P95", "CPU", "PUSHED"]
    headers += ["PRESENT", "DELETED"] if doc["registry_checked"] else []
    headers += ["FAILURES"]
    lines = []
    for row in [*doc["rows"], total]:
        keys = [row.get(g, "") for g in groupings]
        if row is total:
            keys = ["TOTAL"] + [""] * (len(groupings) - 1)
        cells: list[object] = [*keys, row["saves"], row["succeeded"], row["failed"]]
        cells += [row["unfinished"]] if unfinished else []
        cells += [human_seconds(row["median_wait_seconds"]),
                  human_seconds(row["p95_wait_seconds"]),
                  human_seconds(row["median_run_seconds"]),
                  human_seconds(row["p95_run_seconds"]),
                  human_seconds(row["cpu_seconds"]), human_bytes(row["bytes_pushed"])]  # fmt: skip
        if doc["registry_checked"]:
            cells += [row["images_present"], row["images_deleted"]]
        cells.append(failures_text(row))
        lines.append(cells)
    return caption + "\n" + render_table(headers, lines)


def csv_text(doc: Mapping[str, Any]) -> str:
    """One line per group: the group columns, then every figure (seconds, bytes)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [*doc["by"], *FIGURE_KEYS]
    writer.writerow(columns)
    for row in doc["rows"]:
        writer.writerow(["" if row.get(k) is None else row[k] for k in columns])
    return out.getvalue()


def build_figure(report: UsageReport) -> Figure:
    """Stacked succeeded/failed(/unfinished) bars per group, titled with the period."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=SLIDE_INCHES, dpi=150)
    FigureCanvasAgg(figure)  # Agg: no display, no pyplot state
    axes = figure.subplots()
    rows, note = _bars(report)
    labels = [" / ".join(r.group.values()) or "(none)" for r in rows]
    positions = list(range(len(rows)))
    bottom = [0] * len(rows)
    for name in ("succeeded", "failed", "unfinished"):
        heights = [getattr(r, name) for r in rows]
        if name == "unfinished" and not any(heights):
            continue
        axes.bar(positions, heights, bottom=bottom, label=name, color=COLOURS[name])
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if len(rows) <= 30:
        for x, height in zip(positions, bottom, strict=True):
            axes.text(x, height, str(height), ha="center", va="bottom", fontsize=12,
                      parse_math=False)
    axes.set_ylim(0, max(max(bottom, default=0) * 1.18, 1))  # room for labels and legend
    _label_axes(axes, report, labels, note)
    if not rows:
        axes.text(0.5, 0.5, "no saves in this period", transform=axes.transAxes,
                  ha="center", va="center", fontsize=18, parse_math=False)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return figure


def _bars(report: UsageReport) -> tuple[list[UsageRow], str]:
    rows = report.rows
    if len(rows) <= MAX_BARS or any(g in TIME_GROUPINGS for g in report.groupings):
        return rows, ""
    busiest = sorted(rows, key=lambda r: -r.saves)[:MAX_BARS]
    note = f" (busiest {MAX_BARS} of {len(rows)})"
    return sorted(busiest, key=lambda r: tuple(r.group.values())), note


def _label_axes(axes: Axes, report: UsageReport, labels: list[str], note: str) -> None:
    rotate = len(labels) > 8 or max((len(x) for x in labels), default=0) > 12
    step = max(1, -(-len(labels) // MAX_LABELS))  # long series: every n-th label
    axes.set_xticks(range(0, len(labels), step), labels[::step], parse_math=False,
                    rotation=45 if rotate else 0, ha="right" if rotate else "center")
    axes.tick_params(labelsize=13)
    axes.set_xlabel(" / ".join(report.groupings), fontsize=15, parse_math=False)
    axes.set_ylabel("saves", fontsize=15, parse_math=False)
    axes.set_title(plot_title(report) + note, fontsize=18, parse_math=False)
    legend = axes.legend(fontsize=13, loc="upper right", ncols=3)
    for text in legend.get_texts():
        text.set_parse_math(False)
    axes.grid(axis="y", alpha=0.3)


def plot_title(report: UsageReport) -> str:
    """``Image saves by user, 2026-01-01 – 2026-01-31``."""
    return f"Image saves by {', '.join(report.groupings)}, {report.period.label}"


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def png_bytes(report: UsageReport) -> bytes:
    """The chart as PNG bytes (what ``GET /api/v1/reports/usage.png`` answers)."""
    return figure_png(build_figure(report))


def write_png(report: UsageReport, path: Path) -> Figure:
    """Draw the chart and write it to ``path`` as PNG; returns the figure."""
    figure = build_figure(report)
    path.write_bytes(figure_png(figure))
    return figure
