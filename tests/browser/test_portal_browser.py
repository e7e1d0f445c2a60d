"""The portal in a real browser against the real cluster.

Debian's chromium, driven by Playwright, talks to the app served by waitress on
127.0.0.1; the app submits to Slurm, the save runs with podman on node n1 and pushes to
the local registry. The test logs in with a token, saves a running session from the
page, watches the progress bar reach done, sees the image, copies its pull command and
deletes it through the confirmation dialog; an admin opens the usage page, groups it by
node and outcome, and sees the table and the chart. Screenshots of each state go to
docs/img/ with IMGSAVE_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.support.cluster_helpers import (
    TOP,
    registry_tags,
    require_cluster,
    session_container,
    unique,
)

pytestmark = pytest.mark.cluster

# docs/img is rewritten only on request, so a test run leaves the work tree clean.
SCREENSHOTS_ENV = "IMGSAVE_UPDATE_SCREENSHOTS"
DOCS_IMG = TOP / "docs" / "img"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SAVE_TIMEOUT_MS = 180_000
# A user of its own (scripts/cluster.sh makes it), so the screenshots show this test's
# session and image only.
USER = "dana"
ADMIN = "root"  # the usage page: an imgsave admin by token (`imgsave token create --admin`)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def portal(served: tuple[str, list[str], dict[str, str]]  # noqa: F811
           ) -> Iterator[tuple[str, Callable[..., str]]]:
    """``imgsave serve`` as the portal's service account (site_configs/local.toml); its
    base URL and a maker of tokens (``imgsave token create`` as that account)."""
    require_cluster()
    url, argv, env = served

    def make_token(user: str, *, admin: bool = False) -> str:
        made = subprocess.run([*argv, "--json", "token", "create", user,
                               *(["--admin"] if admin else [])], env=env,
                              capture_output=True, text=True, check=True, timeout=60)
        return str(json.loads(made.stdout)["token"])

    yield url, make_token


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """docs/img with IMGSAVE_UPDATE_SCREENSHOTS=1, else a temporary directory."""
    return DOCS_IMG if os.environ.get(SCREENSHOTS_ENV) == "1" else tmp_path


def shot(page: Page, folder: Path, name: str, part: Locator | None = None) -> None:
    """A screenshot of the viewport, or of one part of the page, for docs/portal.md."""
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / f"{name}.png")
    if part is None:
        page.screenshot(path=path)
    else:
        part.screenshot(path=path)


def test_save_a_session_from_the_portal(
    portal: tuple[str, Callable[..., str]], browser: Browser, screenshots: Path
) -> None:
    base, make_token = portal
    token = make_token(USER)
    name = unique("portal")
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    with session_container("n1", USER) as container:
        page.goto(base + "/")
        expect(page.get_by_label("API token")).to_be_visible()
        shot(page, screenshots, "portal-login")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#user-name")).to_have_text(USER)

        session = page.locator(f'li.session[data-container="{container}"]')
        expect(session).to_be_visible()
        expect(session).to_contain_text("on node n1")
        shot(page, screenshots, "portal-sessions")
        image_name = session.get_by_label("Image name")
        image_name.fill("Bad Name")
        expect(session.locator('[data-error="target"]')).to_contain_text("must not contain spaces")
        expect(image_name).to_have_attribute("aria-invalid", "true")
        shot(page, screenshots, "portal-validation", session)
        image_name.fill(name)
        expect(session.locator('[data-error="target"]')).to_be_empty()
        session.get_by_label("Tag").fill("v1")
        session.get_by_label("Category").select_option("gpu")
        session.get_by_role("button", name="Save").click()

        item = page.locator("li.save", has_text=f"/{name}:v1")
        expect(item).to_be_visible()
        expect(item.locator("progress")).to_be_visible()
        shot(page, screenshots, "portal-progress", item)
        expect(item).to_have_class("save state-done", timeout=SAVE_TIMEOUT_MS)
        expect(item.locator("progress")).to_have_attribute("value", "100")
        # the session's first save: full (incremental-save.md), with what it pushed
        expect(item.locator(".save-kind")).to_contain_text("full · ")
        expect(item.locator(".save-kind")).to_contain_text("pushed (no record of an earlier save")

    expect(session.locator(".field-error")).to_have_text(["", ""])  # the form was reset
    row = page.locator(f'tr[data-image="{USER}/{name}:v1"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("gpu")
    shot(page, screenshots, "portal-done", page.locator("main"))
    row.get_by_role("button", name="Copy").click()
    expect(row.get_by_role("button", name="Copy")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"podman pull 127.0.0.1:5000/{USER}/{name}:v1"

    page.reload()  # the save and its full bar come back from GET /saves
    item = page.locator("li.save", has_text=f"/{name}:v1")
    expect(item.locator("progress")).to_have_attribute("value", "100")
    expect(page.locator('[data-usage="succeeded"]')).not_to_have_text("0")

    dialogs: list[str] = []

    def accept(dialog: object) -> None:
        dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.once("dialog", accept)
    row = page.locator(f'tr[data-image="{USER}/{name}:v1"]')
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert dialogs and f"{USER}/{name}:v1" in dialogs[0]
    assert registry_tags(f"{USER}/{name}") == []
    assert errors == []
    context.close()


def test_the_admin_opens_the_usage_page(
    portal: tuple[str, Callable[..., str]], browser: Browser, screenshots: Path
) -> None:
    """From the main page's Usage card to the report of every user, grouped by node and
    outcome from the form: the table of the cluster's real saves, and the chart loaded."""
    base, make_token = portal
    token = make_token(ADMIN, admin=True)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#user-name")).to_have_text(ADMIN)
    page.get_by_role("link", name="Usage of every user").click()
    expect(page.get_by_role("heading", name="Usage of every user")).to_be_visible()

    page.get_by_label("Group by").select_option("node,outcome")
    page.get_by_role("button", name="Show").click()
    table = page.get_by_role("table")
    expect(table.locator("caption")).to_contain_text("by node, outcome")
    expect(table.locator("thead th").first).to_have_text("Node")
    expect(table.locator("tfoot th")).to_have_text("Total")
    nodes = table.locator("tbody th[scope=row]").all_inner_texts()
    assert nodes and set(nodes) <= {"n1", "n2"}
    chart = page.get_by_role("img", name="Bar chart: Image saves by node, outcome")
    expect(chart).to_be_visible()
    chart.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=chart.element_handle())
    assert chart.evaluate("img => [img.naturalWidth, img.naturalHeight]") in (
        [2000, 1125], [1999, 1125])
    shot(page, screenshots, "portal-usage", page.locator("main"))

    denied = browser.new_context().new_page()  # someone who is not an admin
    denied.goto(base + "/")
    denied.get_by_label("API token").fill(make_token(USER))
    denied.get_by_role("button", name="Log in").click()
    expect(denied.get_by_role("link", name="Usage of every user")).to_have_count(0)
    response = denied.goto(base + "/usage")
    assert response is not None and response.status == 403
    expect(denied.get_by_role("heading", name="Not allowed")).to_be_visible()
    assert errors == []
    context.close()
