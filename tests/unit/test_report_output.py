"""Report output: table, CSV that parses back, the JSON document, the PNG chart, and the
``imgsave report`` command wired to them. Data: the FAKE sacct of bench/report_scale.py
(see test_report_cache.py); the command runs against the real cluster in
test_report_cluster.py."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from api.cli import commands as cli
from api.reports.report import UsageReport, build_report
from api.reports.report_output import (
    build_figure,
    failures_text,
    plot_title,
    render,
    render_document,
    write_png,
)
from api.reports.usage_report import FIGURE_KEYS
from bench.report_scale import BenchSite, FakeSacct, SacctJob, bench_site, generate, write_spool
from scheduler_glue.metadata import encode_metadata

NOW = datetime.now(UTC)
SINCE = (NOW - timedelta(days=10)).strftime("%Y-%m-%d")


@pytest.fixture
def site(tmp_path: Path) -> BenchSite:
    jobs = generate(400, NOW, days=9, live=3)
    write_spool(tmp_path / "spool", jobs)
    return bench_site(tmp_path, FakeSacct(jobs))


@pytest.fixture
def report(site: BenchSite) -> UsageReport:
    return build_report(site, since=SINCE, by="user,category")


def test_csv_parses_back_to_the_rows(report: UsageReport) -> None:
    parsed = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert len(parsed) == len(report.rows) > 10
    assert list(parsed[0]) == ["user", "category", *FIGURE_KEYS]
    for line, row in zip(parsed, report.rows, strict=True):
        expected = {k: "" if v is None else str(v) for k, v in row.to_dict().items()}
        assert line == expected
    assert sum(int(line["saves"]) for line in parsed) == 400


def test_json_document(report: UsageReport) -> None:
    doc = json.loads(render(report, "json"))
    assert set(doc) == {"period", "by", "registry_checked", "rows", "total"}
    assert doc["by"] == ["user", "category"] and doc["registry_checked"] is False
    assert datetime.fromisoformat(doc["period"]["since"]) == report.period.since
    for row in doc["rows"]:
        assert isinstance(row["user"], str) and row["category"] in ("cpu", "gpu")
        for key in ("saves", "succeeded", "failed", "unfinished", "bytes_pushed"):
            assert isinstance(row[key], int)
        assert row["saves"] == row["succeeded"] + row["failed"] + row["unfinished"]
        assert row["failed"] == sum(v for k, v in row.items() if k.startswith("failed_"))
        for key in ("median_wait_seconds", "p95_run_seconds", "cpu_seconds"):
            assert row[key] is None or isinstance(row[key], float)
        assert row["images_present"] is None and row["images_deleted"] is None
    assert doc["total"]["saves"] == 400 and doc["total"]["unfinished"] == 3


def test_the_json_document_alone_prints_the_same_table_and_csv(report: UsageReport) -> None:
    # What `imgsave --api URL report` gets over the wire is enough to print exactly
    # what direct mode prints.
    doc = json.loads(render(report, "json"))
    assert render_document(doc, "table") == render(report, "table")
    assert render_document(doc, "csv") == render(report, "csv")
    assert any(failures_text(row) for row in doc["rows"])  # the reasons travel too


def test_table_has_a_caption_groups_and_a_total(report: UsageReport) -> None:
    lines = render(report, "table").splitlines()
    assert lines[0].startswith("Image saves submitted ") and lines[0].endswith("user, category")
    assert lines[1].split()[:6] == ["USER", "CATEGORY", "SAVES", "OK", "FAILED", "UNFINISHED"]
    assert lines[-1].startswith("TOTAL") and " 400 " in lines[-1]
    assert len(lines) == 2 + len(report.rows) + 1


def test_png_is_a_slide_sized_chart_with_the_period_in_its_title(
    site: BenchSite, tmp_path: Path
) -> None:
    report = build_report(site, since=SINCE, by="day")
    figure = build_figure(report)
    (axes,) = figure.axes
    assert axes.get_title() == plot_title(report)
    assert report.period.label in axes.get_title() and "by day" in axes.get_title()
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("day", "saves")
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "succeeded", "failed", "unfinished"]
    heights = [round(p.get_height()) for p in axes.patches]
    assert sum(heights) == report.total.saves  # stacked bars add up to every save
    path = tmp_path / "usage.png"
    write_png(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size in ((1999, 1125), (2000, 1125))
    assert 20_000 < path.stat().st_size < 2_000_000


def test_png_of_an_empty_period(site: BenchSite, tmp_path: Path) -> None:
    report = build_report(site, since="2020-01-01", until="2020-01-31", by="user")
    figure = build_figure(report)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "no saves in this period" in texts
    assert "2020-01-01 – 2020-01-31" in figure.axes[0].get_title()


@pytest.fixture
def cli_site(site: BenchSite, monkeypatch: pytest.MonkeyPatch) -> BenchSite:
    monkeypatch.setattr(cli.Context, "site", property(lambda self: site))
    return site


def test_command_formats_and_plot(cli_site: BenchSite, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli.main, ["report", "--since", SINCE, "--by", "month,category",
                                   "--format", "csv", "--plot", str(tmp_path / "m.png")])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].startswith("month,category,saves,")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    as_json = runner.invoke(cli.main, ["--json", "report", "--since", SINCE, "--by", "node"])
    assert json.loads(as_json.output)["total"]["saves"] == 400
    table = runner.invoke(cli.main, ["report", "--since", SINCE, "--no-sync"])
    assert table.exit_code == 0 and table.output.splitlines()[1].startswith("USER ")


def test_command_errors(cli_site: BenchSite) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli.main, ["report", "--by", "colour"])
    assert bad.exit_code == 1 and "imgsave: error: cannot group by colour" in bad.output
    # root acting for a user is that user: no rebuild, and only their own saves
    refused = runner.invoke(cli.main, ["--user", "user01", "report", "--rebuild"])
    assert refused.exit_code == 2 and "--rebuild needs root/admin" in refused.output
    mine = runner.invoke(cli.main, ["--user", "user01", "report", "--since", SINCE,
                                    "--format", "json"])
    assert {r["user"] for r in json.loads(mine.output)["rows"]} == {"user01"}


# matplotlib reads "$...$" as mathtext: the first is an unknown command (a ValueError
# when the chart is drawn), the second would be drawn as a formula.
MATH_CATEGORIES = ("$\\foo$", "$x^2$")


def with_category(job: SacctJob, category: str) -> SacctJob:
    """``job`` with another category in its comment (a finished job; a live one's
    comes from its spec in the spool)."""
    meta = {**job.meta, "category": category}
    cols = job.line.split("|", 13)
    cols[13] = encode_metadata(meta)
    return replace(job, line="|".join(cols), meta=meta)


def math_site(tmp_path: Path) -> BenchSite:
    """The saves of the ``site`` fixture, the finished ones in the MATH_CATEGORIES."""
    jobs = [job if job.end == float("inf") else with_category(job, MATH_CATEGORIES[n % 2])
            for n, job in enumerate(generate(400, NOW, days=9, live=3))]
    write_spool(tmp_path / "spool", jobs)
    return bench_site(tmp_path, FakeSacct(jobs))


def test_dollar_signs_in_group_names_are_drawn_as_plain_text(tmp_path: Path) -> None:
    report = build_report(math_site(tmp_path), since=SINCE, by="category")
    assert set(MATH_CATEGORIES) <= {r.group["category"] for r in report.rows}
    figure = build_figure(report)
    (axes,) = figure.axes
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert set(MATH_CATEGORIES) <= set(labels)
    texts = [*axes.get_xticklabels(), *axes.texts, axes.title, axes.xaxis.label,
             *axes.get_legend().get_texts()]
    assert not any(t.get_parse_math() for t in texts)
    path = tmp_path / "usage.png"
    write_png(report, path)  # was: ValueError from matplotlib's mathtext parser
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size in ((1999, 1125), (2000, 1125))


def test_the_plot_command_draws_dollar_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = math_site(tmp_path)
    monkeypatch.setattr(cli.Context, "site", property(lambda self: site))
    chart = tmp_path / "m.png"
    out = CliRunner().invoke(cli.main, ["report", "--since", SINCE, "--by", "month,category",
                                        "--plot", str(chart)])
    assert out.exit_code == 0, out.output
    assert "$x^2$" in out.output
    with Image.open(chart) as image:
        assert image.format == "PNG"
