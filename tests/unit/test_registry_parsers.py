"""Pure parsers of registry answers: challenges, error bodies, manifests, token cache."""

from __future__ import annotations

import json

import pytest
import requests

from core.errors import RegistryError
from registry.manifests import (
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    created_from_config,
    parse_manifest,
    sha256_digest,
    verify_digest,
)
from registry.tokens import Challenge, TokenCache, parse_challenge, repository_scope
from registry.transport import error_message

D = sha256_digest(b"x")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", None),
        (
            # what distribution 2.8 sends (captured from the token-auth test registry)
            'Bearer realm="http://127.0.0.1:1/token",service="svc",'
            'scope="repository:alice/x:pull,push"',
            Challenge("bearer", "http://127.0.0.1:1/token", "svc", "repository:alice/x:pull,push"),
        ),
        (
            'Bearer realm="https://h/service/token",service="harbor-registry",'
            'scope="repository:p/x:pull",error="insufficient_scope"',
            Challenge(
                "bearer",
                "https://h/service/token",
                "harbor-registry",
                "repository:p/x:pull",
                "insufficient_scope",
            ),
        ),
        ('Basic realm="imgsave-test"', Challenge("basic", "imgsave-test")),
        ("bearer realm=https://h/t,service=s", Challenge("bearer", "https://h/t", "s")),
        (
            'Bearer realm="r",scope="repository:a:pull",scope="repository:b:pull"',
            Challenge("bearer", "r", "", "repository:a:pull repository:b:pull"),
        ),
        ('Bearer realm="with \\"quote\\""', Challenge("bearer", 'with "quote"')),
    ],
)
def test_parse_challenge(header: str, expected: Challenge | None) -> None:
    assert parse_challenge(header) == expected


def test_repository_scope() -> None:
    assert repository_scope("alice/x", "pull", "push") == "repository:alice/x:pull,push"


def test_token_cache_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("registry.tokens.time.monotonic", lambda: now[0])
    cache = TokenCache()
    cache.put(["a", "b"], "tok", 60)
    assert cache.get("a") == "tok" and cache.get("b") == "tok"
    now[0] += 49  # expires 10 s early
    assert cache.get("a") == "tok"
    now[0] += 2
    assert cache.get("a") is None
    cache.put(["c"], "t2", None)  # the spec's default lifetime: 60 s, dropped 10 s early
    assert cache.get("c") == "t2"
    now[0] += 49
    assert cache.get("c") == "t2"
    now[0] += 2
    assert cache.get("c") is None


def _response(status: int, body: bytes, reason: str = "") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.reason = reason
    return response


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            404,
            b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to '
            b'registry","detail":{"name":"x"}}]}',
            "HTTP 404 NAME_UNKNOWN: repository name not known to registry",
        ),
        (
            400,
            b'{"errors":[{"code":"A","message":"one"},{"code":"B","message":"two"}]}',
            "HTTP 400 A: one; B: two",
        ),
        (500, b"", "HTTP 500 Internal Server Error"),
        (502, b"<html>bad gateway</html>", "HTTP 502 Bad Gateway"),
        (418, b"plain words", "HTTP 418 I'm a teapot: plain words"),
    ],
)
def test_error_message(status: int, body: bytes, expected: str) -> None:
    reasons = {500: "Internal Server Error", 502: "Bad Gateway", 418: "I'm a teapot"}
    assert error_message(_response(status, body, reasons.get(status, ""))) == expected


def test_parse_manifest_index_by_content_type() -> None:
    raw = json.dumps({"schemaVersion": 2, "manifests": [{"digest": D, "size": 3}]}).encode()
    info = parse_manifest(raw, D, DOCKER_MANIFEST_LIST)
    assert info.is_index and info.manifests[0] == (D, 3, "")
    assert info.manifest_size == len(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"layers": []}', "config is missing"),
        (b'{"config": {"digest": "d"}}', "needs a digest and a numeric size"),
        (b'{"config": {"digest": "d", "size": 1}, "layers": {}}', "list of descriptors"),
    ],
)
def test_parse_manifest_errors(raw: bytes, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_manifest(raw, D, OCI_MANIFEST)


def test_created_from_config() -> None:
    assert created_from_config(b'{"created": "2026-01-01T00:00:00Z"}') == "2026-01-01T00:00:00Z"
    assert created_from_config(b"{}") == ""  # a SIF artifact's config
    assert created_from_config(b"junk") == ""


def test_verify_digest() -> None:
    verify_digest(b"x", D, "blob")
    with pytest.raises(RegistryError, match="does not match its digest"):
        verify_digest(b"y", D, "blob")
