"""The served OpenAPI description, and fuzzing every operation from it: never a 5xx.

Schemathesis generates valid and invalid requests (bodies, paths, queries, headers)
from /api/v1/openapi.json and sends them through the Flask test client as an
authenticated user; the scheduler and registry are the in-memory fakes of
tests/support/api_support.py. ``max_examples`` keeps the whole run well under a minute.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings

from api.web.app import create_app
from tests.support.api_support import MemorySite, any_account, bearer, make_token, site_config

FUZZ_EXAMPLES = 40


def test_the_spec_is_served_as_json_and_yaml(client: FlaskClient) -> None:
    as_json = client.get("/api/v1/openapi.json")
    as_yaml = client.get("/api/v1/openapi.yaml")
    assert as_json.status_code == as_yaml.status_code == 200
    assert as_json.json == yaml.safe_load(as_yaml.data)
    assert as_json.json["openapi"].startswith("3.")


def test_every_api_route_is_described(app: Flask, client: FlaskClient) -> None:
    paths = client.get("/api/v1/openapi.json").json["paths"]
    described = {(p, m.upper()) for p, ops in paths.items() for m in ops if m != "parameters"}
    routes = set()
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule == "/healthz"):
            continue
        path = rule.rule.replace("<path:name_tag>", "{name_tag}").replace("<job_id>", "{job_id}")
        path = path.replace("<warmup_id>", "{warmup_id}")
        routes |= {(path, m) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    assert routes == described


# Schemathesis's lazy fixture loader does not work with pytest 9, so the fuzzed app is
# built at import, in a directory removed when the module's tests end.
_FUZZ_DIR = tempfile.TemporaryDirectory(prefix="imgsave-fuzz-")
_FUZZ_SITE = MemorySite(site_config(Path(_FUZZ_DIR.name)))
_FUZZ_SITE.registry.add("alice/torch-env", "v1")
FUZZ_APP = create_app({"TESTING": True, "SITE_CONFIG": _FUZZ_SITE.config,
                       "SITE_FACTORY": lambda config: _FUZZ_SITE, "ACCOUNT_EXISTS": any_account,
                       "INSTANCE_DIR": str(Path(_FUZZ_DIR.name) / "instance"),
                       "SECRET_KEY": "t"})
FUZZ_TOKEN = make_token(FUZZ_APP, "alice", admin=True)
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", FUZZ_APP)


@pytest.fixture(scope="module", autouse=True)
def _remove_fuzz_dir() -> Iterator[None]:
    yield
    _FUZZ_DIR.cleanup()


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=bearer(FUZZ_TOKEN))
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400 and case.path != "/api/v1/openapi.yaml":
        error = response.json()["error"]
        assert set(error) == {"code", "message", "retryable"}
