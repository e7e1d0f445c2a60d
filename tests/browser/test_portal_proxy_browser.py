"""The portal in Chromium as a centre serves it: through nginx over TLS (the local CA's
certificate, pinned by its key, not ignored), signed on by the proxy (no token typed),
two servers on PostgreSQL behind it (scripts/site.sh). dana saves her session and sees
it done, then deletes the image; ops, an imgsave admin by the site config, opens the
usage of every user.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Browser, expect, sync_playwright

from tests.support.cluster_helpers import (
    TOP,
    registry_tags,
    require_cluster,
    session_container,
    unique,
)

pytestmark = pytest.mark.cluster

ETC = Path("/etc/imgsave-site")
PROXY = "https://127.0.0.1:8443"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SAVE_TIMEOUT_MS = 180_000
USER = "dana"


def _spki_pin(certificate: Path) -> str:
    """Chromium's pin of a certificate's key: base64 of the SHA-256 of its SPKI."""
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_cluster()
    subprocess.run([str(TOP / "scripts" / "site.sh"), "up"], check=True, capture_output=True,
                   timeout=300)
    pin = _spki_pin(ETC / "proxy.crt")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"])
        try:
            yield chromium
        finally:
            chromium.close()


def _password(user: str) -> str:
    return (ETC / "passwords" / user).read_text().strip()


def test_a_user_signed_on_by_the_proxy_saves_her_session(browser: Browser) -> None:
    context = browser.new_context(
        viewport={"width": 1200, "height": 900},
        http_credentials={"username": USER, "password": _password(USER)})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    name = unique("proxied")
    with session_container("n1", USER) as container:
        page.goto(PROXY + "/")
        expect(page.locator("#user-name")).to_have_text(USER)  # no login form: signed on
        session = page.locator(f'li.session[data-container="{container}"]')
        expect(session).to_be_visible()
        session.get_by_label("Image name").fill(name)
        session.get_by_label("Tag").fill("v1")
        session.get_by_role("button", name="Save").click()
        item = page.locator("li.save", has_text=f"/{name}:v1")
        expect(item.locator("progress")).to_be_visible()
        expect(item).to_have_class("save state-done", timeout=SAVE_TIMEOUT_MS)
    cookies = [c for c in context.cookies() if c["name"] == "imgsave_session"]
    assert cookies and all(c["secure"] and c["httpOnly"] for c in cookies)

    page.once("dialog", lambda dialog: dialog.accept())
    row = page.locator(f'tr[data-image="{USER}/{name}:v1"]')
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert registry_tags(f"{USER}/{name}") == []
    assert errors == []
    context.close()


def test_the_sites_admin_opens_the_usage_of_every_user(browser: Browser) -> None:
    context = browser.new_context(http_credentials={"username": "ops",
                                                    "password": _password("ops")})
    page = context.new_page()
    page.goto(PROXY + "/usage")
    expect(page.get_by_role("heading", name="Usage of every user")).to_be_visible()
    expect(page.get_by_role("table").locator("tfoot th")).to_have_text("Total")
    context.close()

    other = browser.new_context(http_credentials={"username": USER,
                                                  "password": _password(USER)})
    response = other.new_page().goto(PROXY + "/usage")
    assert response is not None and response.status == 403
    other.close()
