"""Who may call the API: tokens, the trusted proxy's Remote-User, the portal cookie;
the login form's CSRF token, users whose account is gone, and no-store on every answer."""

from __future__ import annotations

import json
import logging
import pwd
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from api.db import ApiToken, utcnow
from api.web.app import create_app
from api.web.auth import list_tokens, revoke_tokens
from api.web.state import state
from tests.support.api_support import PROXY, MemorySite, bearer, make_token, portal_login, save_body


def test_a_valid_token_is_accepted(client: FlaskClient, alice: dict[str, str]) -> None:
    r = client.get("/api/v1/saves", headers=alice)
    assert r.status_code == 200, r.json
    assert r.json == {"saves": []}


@pytest.mark.parametrize("header", [
    "Bearer isv_not-a-real-token",
    "Bearer ",
    "Basic YWxpY2U6c2VjcmV0",
    "isv_token-without-scheme",
])
def test_a_wrong_token_is_401(client: FlaskClient, header: str) -> None:
    r = client.get("/api/v1/saves", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json["error"]["code"] == "unauthorized"
    assert r.json["error"]["retryable"] is False
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_no_credentials_is_401(client: FlaskClient) -> None:
    r = client.get("/api/v1/images")
    assert r.status_code == 401
    assert set(r.json["error"]) == {"code", "message", "retryable"}


def test_an_expired_token_is_401(app: Flask, client: FlaskClient) -> None:
    token = make_token(app, "alice")
    with app.app_context():
        with state().db.session() as s:
            s.execute(update(ApiToken).values(expires=utcnow() - timedelta(seconds=1)))
    r = client.get("/api/v1/saves", headers=bearer(token))
    assert r.status_code == 401
    assert "expired" in r.json["error"]["message"]


def test_a_revoked_token_is_401(app: Flask, client: FlaskClient) -> None:
    token = make_token(app, "alice")
    assert client.get("/api/v1/saves", headers=bearer(token)).status_code == 200
    with app.app_context():
        assert revoke_tokens(state().db, user="alice") == 1
    assert client.get("/api/v1/saves", headers=bearer(token)).status_code == 401


def test_only_the_hash_of_a_token_is_stored(app: Flask) -> None:
    token = make_token(app, "alice")
    with app.app_context():
        with state().db.session() as s:
            (row,) = s.query(ApiToken).all()
    assert token not in (row.token_hash, row.label)
    assert len(row.token_hash) == 64


def test_remote_user_from_the_trusted_proxy_is_accepted(client: FlaskClient) -> None:
    r = client.get("/api/v1/saves", headers={"Remote-User": "alice"},
                   environ_base={"REMOTE_ADDR": PROXY})
    assert r.status_code == 200, r.json


def test_forged_remote_user_from_elsewhere_is_401_and_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="api.web.auth"):
        r = client.get("/api/v1/saves", headers={"Remote-User": "alice"},
                       environ_base={"REMOTE_ADDR": "192.0.2.66"})
    assert r.status_code == 401
    assert "192.0.2.66" in caplog.text and "alice" in caplog.text


def test_remote_user_with_a_bad_name_is_401(client: FlaskClient) -> None:
    r = client.get("/api/v1/saves", headers={"Remote-User": "../root"},
                   environ_base={"REMOTE_ADDR": PROXY})
    assert r.status_code == 401


def test_a_bearer_token_wins_over_remote_user(client: FlaskClient, bob: dict[str, str]) -> None:
    r = client.get("/api/v1/images", headers={**bob, "Remote-User": "alice"},
                   environ_base={"REMOTE_ADDR": PROXY})
    assert r.status_code == 200
    assert r.json["user"] == "bob"


def test_admins_come_from_the_token_or_the_config(app: Flask, client: FlaskClient) -> None:
    plain = bearer(make_token(app, "dave"))
    admin_token = bearer(make_token(app, "dave", admin=True))
    listed_admin = bearer(make_token(app, "carol"))  # [api] admins = ["carol"]
    others = "/api/v1/reports/usage?user=erin"  # only an admin sees another user's saves
    assert client.get(others, headers=plain).status_code == 403
    assert client.get(others, headers=admin_token).status_code == 200
    assert client.get(others, headers=listed_admin).status_code == 200


def test_portal_login_with_a_token_opens_a_cookie_session(app: Flask, client: FlaskClient) -> None:
    token = make_token(app, "alice")
    page = client.get("/")
    assert page.status_code == 200 and b'name="token"' in page.data
    wrong = portal_login(client, "isv_wrong")
    assert wrong.status_code == 401 and b"unknown, expired or revoked" in wrong.data
    r = portal_login(client, token)
    assert r.status_code == 303
    page = client.get("/")
    assert b"Logged in as" in page.data and b"alice" in page.data
    assert client.get("/api/v1/saves").status_code == 200


def test_cookie_session_needs_the_csrf_token_to_change_anything(
    app: Flask, client: FlaskClient
) -> None:
    portal_login(client, make_token(app, "alice"))
    with client.session_transaction() as session:
        csrf = session["csrf"]
    body = {"container": "c1", "target": "x:v1", "node": "n1"}
    assert client.post("/api/v1/saves", json=body).status_code == 401
    assert client.post("/api/v1/saves", json=body,
                       headers={"X-CSRF-Token": "nope"}).status_code == 401
    r = client.post("/api/v1/saves", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 202, r.json


def test_revoking_the_token_ends_its_portal_session(app: Flask, client: FlaskClient) -> None:
    portal_login(client, make_token(app, "alice"))
    assert client.get("/api/v1/saves").status_code == 200
    with app.app_context():
        revoke_tokens(state().db, user="alice")
    assert client.get("/api/v1/saves").status_code == 401


def test_the_portal_opens_for_the_proxy_user_and_refuses_a_forged_one(
    client: FlaskClient,
) -> None:
    page = client.get("/", headers={"Remote-User": "alice"}, environ_base={"REMOTE_ADDR": PROXY})
    assert page.status_code == 200 and b"alice" in page.data
    forged = client.get("/", headers={"Remote-User": "alice"},
                        environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert forged.status_code == 401 and b"Logged in as" not in forged.data


def test_logout_needs_the_csrf_token(app: Flask, client: FlaskClient) -> None:
    portal_login(client, make_token(app, "alice"))
    client.post("/logout", data={"csrf": "wrong"})
    assert client.get("/api/v1/saves").status_code == 200
    with client.session_transaction() as session:
        csrf = session["csrf"]
    client.post("/logout", data={"csrf": csrf})
    assert client.get("/api/v1/saves").status_code == 401


def test_healthz_needs_no_credentials(client: FlaskClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok"}


def test_token_commands_create_list_and_revoke(monkeypatch: pytest.MonkeyPatch, app: Flask,
                                               client: FlaskClient) -> None:
    from api.cli.commands import main

    db_url = app.extensions["imgsave"].db.url
    config = app.extensions["imgsave"].config
    monkeypatch.setattr("api.web.serve.get_site_config", lambda path=None: config)
    monkeypatch.setattr("api.web.serve.database_url", lambda cfg: db_url)
    runner = CliRunner()
    as_root = runner.invoke(main, ["--json", "token", "create", "alice"])
    assert as_root.exit_code == 2 and "runs as the portal's service account" in as_root.output
    # as the service account (the real account is exercised in test_api_serve.py)
    monkeypatch.setattr("api.web.serve.current_account", lambda: config.service_account)
    created = runner.invoke(main, ["--json", "token", "create", "alice", "--label", "ci"])
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)["token"]
    assert client.get("/api/v1/saves", headers=bearer(token)).status_code == 200
    listed = runner.invoke(main, ["token", "list"])
    assert "alice" in listed.output and token not in listed.output
    token_id = json.loads(created.stdout)["id"]
    revoked = runner.invoke(main, ["token", "revoke", str(token_id)])
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/api/v1/saves", headers=bearer(token)).status_code == 401
    bad = runner.invoke(main, ["token", "create", "Not A User"])
    assert bad.exit_code != 0


def _login_page_csrf(client: FlaskClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert found is not None
    return found.group(1)


def _logged_in_as(client: FlaskClient) -> object:
    with client.session_transaction() as session:
        return session.get("user"), session.get("token_id")


def test_the_login_form_is_refused_without_its_csrf_token(app: Flask, client: FlaskClient) -> None:
    token = make_token(app, "alice")
    csrf = _login_page_csrf(client)
    for form in ({"token": token}, {"token": token, "csrf": "wrong"},
                 {"token": token, "csrf": "é" * 43}, {"token": token, "csrf": ""}):
        r = client.post("/login", data=form)
        assert r.status_code == 400 and b"has expired or came from another site" in r.data
        assert _logged_in_as(client) == (None, None)
        with client.session_transaction() as session:
            assert session["csrf"] == csrf  # the page's token still works; nothing new
        assert client.get("/api/v1/saves").status_code == 401
    # Another site's form: the browser sends no session cookie (SameSite=Lax).
    other = app.test_client()
    r = other.post("/login", data={"token": token, "csrf": csrf})
    assert r.status_code == 400 and _logged_in_as(other) == (None, None)
    assert other.get("/api/v1/saves").status_code == 401
    # With the page's token it works, and the session gets a token of its own.
    assert client.post("/login", data={"token": token, "csrf": csrf}).status_code == 303
    assert _logged_in_as(client)[0] == "alice"
    with client.session_transaction() as session:
        assert session["csrf"] != csrf


def _account_app(tmp_path: Path, memory_site: MemorySite,
                 account_exists: Callable[[str], bool] | None) -> Flask:
    config: dict[str, object] = {
        "TESTING": True, "SITE_CONFIG": memory_site.config, "SECRET_KEY": "test",
        "SITE_FACTORY": lambda config: memory_site, "INSTANCE_DIR": str(tmp_path / "i")}
    if account_exists is not None:
        config["ACCOUNT_EXISTS"] = account_exists
    return create_app(config)


def test_a_token_of_a_user_without_an_account_is_401(
    tmp_path: Path, memory_site: MemorySite
) -> None:
    gone = "imgsave-no-such-user"
    with pytest.raises(KeyError):
        pwd.getpwnam(gone)
    app = _account_app(tmp_path, memory_site, None)  # the real lookup: pwd
    client = app.test_client()
    assert client.get("/api/v1/saves", headers=bearer(make_token(app, "root"))).status_code == 200
    token = make_token(app, gone)
    bad = client.get("/api/v1/saves", headers=bearer("isv_not-a-real-token"))
    for method in ("GET", "POST"):
        r = client.open("/api/v1/saves", method=method, headers=bearer(token),
                        json=save_body() if method == "POST" else None)
        assert r.status_code == 401 and r.json == bad.json
    login = portal_login(client, token)
    assert login.status_code == 401 and _logged_in_as(client) == (None, None)
    assert memory_site.scheduler.submitted == []
    with app.app_context():
        (row,) = [t for t in list_tokens(state().db) if t.user == gone]
    assert row.revoked is None  # refused while the account is missing, not revoked


def test_removing_the_account_ends_its_portal_session(
    tmp_path: Path, memory_site: MemorySite
) -> None:
    accounts = {"alice"}
    app = _account_app(tmp_path, memory_site, accounts.__contains__)
    client = app.test_client()
    token = make_token(app, "alice")
    assert portal_login(client, token).status_code == 303
    assert client.get("/api/v1/saves").status_code == 200
    with client.session_transaction() as session:
        csrf = session["csrf"]
    accounts.clear()  # userdel alice
    assert client.get("/api/v1/saves").status_code == 401
    r = client.post("/api/v1/saves", json=save_body(), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401 and memory_site.scheduler.submitted == []
    assert client.get("/api/v1/saves", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize("path", ["/", "/usage", "/api/v1/saves", "/api/v1/images",
                                  "/static/portal.js", "/healthz", "/no-such-page",
                                  "/api/v1/no-such-route"])
def test_every_response_says_no_store(
    client: FlaskClient, alice: dict[str, str], path: str
) -> None:
    for headers in ({}, alice):  # pages, JSON, errors of both kinds, static files
        r = client.get(path, headers=headers)
        assert r.headers["Cache-Control"] == "no-store", (path, headers, r.status_code)


def test_the_pages_with_a_csrf_token_are_not_stored(app: Flask, client: FlaskClient) -> None:
    assert b'name="csrf"' in client.get("/").data  # the login form's
    portal_login(client, make_token(app, "alice"))
    for page in ("/", "/usage"):  # alice's page, and the 403 page of /usage
        r = client.get(page)
        assert b'name="csrf"' in r.data and r.headers["Cache-Control"] == "no-store"
