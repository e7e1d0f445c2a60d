"""Who may call the API: tokens, the trusted proxy's Remote-User, the portal cookie."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from api.auth import revoke_tokens
from api.db import ApiToken, utcnow
from api.state import state
from tests.api_support import PROXY, bearer, make_token

pytest_plugins = ["tests.api_fixtures"]


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
    with caplog.at_level(logging.WARNING, logger="api.auth"):
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
    wrong = client.post("/login", data={"token": "isv_wrong"})
    assert wrong.status_code == 401 and b"unknown, expired or revoked" in wrong.data
    r = client.post("/login", data={"token": token})
    assert r.status_code == 303
    page = client.get("/")
    assert b"Logged in as" in page.data and b"alice" in page.data
    assert client.get("/api/v1/saves").status_code == 200


def test_cookie_session_needs_the_csrf_token_to_change_anything(
    app: Flask, client: FlaskClient
) -> None:
    client.post("/login", data={"token": make_token(app, "alice")})
    with client.session_transaction() as session:
        csrf = session["csrf"]
    body = {"container": "c1", "target": "x:v1", "node": "n1"}
    assert client.post("/api/v1/saves", json=body).status_code == 401
    assert client.post("/api/v1/saves", json=body,
                       headers={"X-CSRF-Token": "nope"}).status_code == 401
    r = client.post("/api/v1/saves", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 202, r.json


def test_revoking_the_token_ends_its_portal_session(app: Flask, client: FlaskClient) -> None:
    client.post("/login", data={"token": make_token(app, "alice")})
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
    client.post("/login", data={"token": make_token(app, "alice")})
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
    from api.cli import main

    db_url = app.extensions["imgsave"].db.url
    config = app.extensions["imgsave"].config
    monkeypatch.setattr("api.serve.get_site_config", lambda path=None: config)
    monkeypatch.setattr("api.serve.database_url", lambda cfg: db_url)
    runner = CliRunner()
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
