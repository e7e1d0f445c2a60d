"""The admin's usage page (``GET /usage``) and the chart it shows
(``GET /api/v1/reports/usage.png``), through the Flask test client.

The saves come from the FAKE sacct of bench/report_scale.py (see test_report_cache.py):
400 generated save jobs with their result files, read by the real SlurmScheduler, usage
cache and report code. The same page runs in chromium against the real cluster in
test_portal_browser.py.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from api.web.app import create_app
from bench.report_scale import BenchSite, FakeSacct, bench_site, generate, write_spool
from tests.support.api_support import any_account, bearer, make_token, portal_login, site_config
from tests.unit.test_report_output import MATH_CATEGORIES, math_site

NOW = datetime.now(UTC)
SINCE = (NOW - timedelta(days=10)).strftime("%Y-%m-%d")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def site(tmp_path: Path) -> BenchSite:
    jobs = generate(400, NOW, days=9, live=3)
    write_spool(tmp_path / "spool", jobs)
    return with_api_config(bench_site(tmp_path, FakeSacct(jobs)), tmp_path)


def with_api_config(bench: BenchSite, tmp_path: Path) -> BenchSite:
    api = site_config(tmp_path).api  # [api] admins = ["carol"], as the other API tests
    bench.config = bench.config.model_copy(update={"api": api})
    return bench


@pytest.fixture
def app(tmp_path: Path, site: BenchSite) -> Flask:
    return site_app(tmp_path, site)


def site_app(tmp_path: Path, site: BenchSite) -> Flask:
    return create_app({
        "TESTING": True,
        "SITE_CONFIG": site.config,
        "SITE_FACTORY": lambda config: site,
        "ACCOUNT_EXISTS": any_account,  # a FAKE of pwd: the users of bench/report_scale.py
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
        "SECRET_KEY": "test",
    })


def logged_in(app: Flask, user: str, *, admin: bool = False) -> FlaskClient:
    """A test client with a portal session opened through the token login form."""
    client = app.test_client()
    r = portal_login(client, make_token(app, user, admin=admin))
    assert r.status_code == 303
    return client


class Page(HTMLParser):
    """The parts of a page the tests look at: table cells by row, images, alerts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[dict[str, str | None]] = []
        self.alerts: list[str] = []
        self.caption = ""
        self._cell: list[str] | None = None
        self._in: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td") and self.rows:
            self._cell = []
        elif tag == "img":
            self.images.append(found)
        elif found.get("role") == "alert":
            self._in = "alert"
            self.alerts.append("")
        elif tag == "caption":
            self._in = "caption"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag in ("p", "caption"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in == "alert":
            self.alerts[-1] += data
        elif self._in == "caption":
            self.caption += data


def test_the_admin_sees_the_table_and_the_chart(app: Flask) -> None:
    client = logged_in(app, "carol")  # an admin by the config's [api] admins
    r = client.get(f"/usage?by=month,category&since={SINCE}")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = Page(r.text)
    header, *body, total = page.rows
    assert header[:5] == ["Month", "Category", "Saves", "Succeeded", "Failed"]
    assert "Failed by reason" in header and "Bytes pushed" in header
    assert "Unfinished" in header  # 3 of the generated saves are still live
    assert page.caption.startswith("Image saves submitted ")
    assert page.caption.endswith("by month, category")
    assert total[0] == "Total" and total[1] == "400"
    saves = header.index("Saves")
    assert sum(int(row[saves]) for row in body) == 400
    assert {row[1] for row in body} <= {"cpu", "gpu"}
    # the JSON endpoint has the same groups and counts
    api = client.get(f"/api/v1/reports/usage?by=month,category&since={SINCE}").json
    assert sorted((r["month"], r["category"], str(r["saves"])) for r in api["rows"]) == \
        sorted((row[0], row[1], row[saves]) for row in body)

    (chart,) = page.images
    assert chart["src"] is not None and chart["src"].startswith("/api/v1/reports/usage.png?")
    alt = chart["alt"] or ""
    assert alt.startswith("Bar chart: Image saves by month, category, ")
    assert "400 saves in all" in alt
    png = client.get(chart["src"])  # with the page's session cookie, as a browser fetches it
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert png.data[:8] == PNG_MAGIC
    selected = re.search(r'<option value="([^"]+)" selected>', r.text)
    assert selected is not None and selected.group(1) == "month,category"
    assert f'name="since" type="date" value="{SINCE}"' in r.text


def test_the_main_page_links_admins_to_the_usage_page(app: Flask) -> None:
    admin = logged_in(app, "dave", admin=True).get("/").text
    plain = logged_in(app, "erin").get("/").text
    assert 'href="/usage"' in admin and "/api/v1/reports/usage" not in admin
    assert 'href="/usage"' not in plain


def test_a_non_admin_gets_a_403_page(app: Flask) -> None:
    client = logged_in(app, "erin")
    r = client.get("/usage?by=user")
    assert r.status_code == 403 and r.mimetype == "text/html"
    assert "for imgsave admins" in r.text and "<table" not in r.text
    token = bearer(make_token(app, "erin"))  # the API gives her her own figures only
    own = app.test_client().get("/api/v1/reports/usage.png", headers=token)
    assert own.status_code == 200 and own.mimetype == "image/png"
    png = app.test_client().get("/api/v1/reports/usage.png?user=carol", headers=token)
    assert png.status_code == 403 and png.json["error"]["code"] == "permission_denied"


def test_the_api_report_of_a_non_admin_holds_their_own_saves(app: Flask) -> None:
    query = f"/api/v1/reports/usage?by=user,outcome&since={SINCE}"
    everyone = app.test_client().get(query, headers=bearer(make_token(app, "carol"))).json
    mine = app.test_client().get(query, headers=bearer(make_token(app, "user01"))).json
    assert {row["user"] for row in mine["rows"]} == {"user01"}
    assert mine["rows"] == [row for row in everyone["rows"] if row["user"] == "user01"]
    assert mine["total"]["saves"] == sum(row["saves"] for row in mine["rows"]) > 0
    assert mine["period"]["label"] == everyone["period"]["label"]


def test_nobody_logged_in_gets_the_login_form(app: Flask) -> None:
    r = app.test_client().get("/usage")
    assert r.status_code == 200 and 'name="token"' in r.text


def test_a_bad_grouping_is_explained_on_the_page_and_by_the_api(app: Flask) -> None:
    client = logged_in(app, "carol")
    r = client.get("/usage?by=colour")
    assert r.status_code == 400 and r.mimetype == "text/html"
    page = Page(r.text)
    assert page.alerts == ["cannot group by colour; use a comma-separated list of user, "
                           "account, day, week, month, node, format, category, outcome"]
    assert 'aria-invalid="true" aria-describedby="by-error"' in r.text
    assert page.images == [] and "<table" not in r.text
    for path in ("/api/v1/reports/usage", "/api/v1/reports/usage.png"):
        api = client.get(f"{path}?by=colour")
        assert api.status_code == 400 and api.mimetype == "application/json"
        assert api.json["error"] == {"code": "invalid_request", "retryable": False,
                                     "message": page.alerts[0]}


def test_a_bad_period_is_explained_on_the_page(app: Flask) -> None:
    client = logged_in(app, "carol")
    r = client.get("/usage?by=user&since=2026-02-01&until=2026-01-01")
    assert r.status_code == 400
    (alert,) = Page(r.text).alerts
    assert alert.startswith("since (2026-02-01 00:00) is not before until")
    assert client.get("/usage?since=yesterday").status_code == 400
    # dates a time zone cannot shift are refused (once a 500, found by the API fuzz test)
    for query in ("until=9999-12-31", "until=0001-01-01", "since=0001-01-01T00:00:00%2B05:00"):
        assert client.get(f"/usage?{query}").status_code == 400
        api = client.get(f"/api/v1/reports/usage.png?{query}")
        assert api.status_code == 400 and "out of range" in api.json["error"]["message"]


def test_an_empty_period_has_no_chart(app: Flask) -> None:
    r = logged_in(app, "carol").get("/usage?by=node&since=2020-01-01&until=2020-01-31")
    assert r.status_code == 200
    assert "No image saves were submitted in the period 2020-01-01 – 2020-01-31" in r.text
    assert Page(r.text).images == []


def test_the_png_endpoint_draws_the_report_chart(app: Flask) -> None:
    token = bearer(make_token(app, "carol"))
    r = app.test_client().get(f"/api/v1/reports/usage.png?by=day&since={SINCE}",
                              headers=token)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/png"
    assert r.data[:8] == PNG_MAGIC and len(r.data) > 10_000
    with Image.open(io.BytesIO(r.data)) as image:
        assert image.format == "PNG" and image.size in ((1999, 1125), (2000, 1125))
    bad_user = app.test_client().get("/api/v1/reports/usage.png?user=../x", headers=token)
    assert bad_user.status_code == 400 and bad_user.json["error"]["code"] == "invalid_request"


def test_a_category_with_dollar_signs_is_charted_not_a_500(tmp_path: Path) -> None:
    app = site_app(tmp_path, with_api_config(math_site(tmp_path), tmp_path))
    client = logged_in(app, "carol")
    page = client.get(f"/usage?by=category&since={SINCE}")
    assert page.status_code == 200
    _, *body, _ = Page(page.text).rows
    assert set(MATH_CATEGORIES) <= {row[0] for row in body}
    (chart,) = Page(page.text).images
    assert chart["src"] is not None
    png = client.get(chart["src"])  # was: 500 from matplotlib's mathtext parser
    assert png.status_code == 200 and png.mimetype == "image/png"
    with Image.open(io.BytesIO(png.data)) as image:
        assert image.format == "PNG" and image.size in ((1999, 1125), (2000, 1125))
