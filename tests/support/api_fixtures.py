"""Fixtures of the API tests (loaded for every test by tests/conftest.py).

The scheduler, registry and account lookup are the fakes of tests/support/api_support.py; why
they are fakes is explained there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.web.app import create_app
from tests.support.api_support import MemorySite, any_account, bearer, make_token, site_config


@pytest.fixture
def memory_site(tmp_path: Path) -> MemorySite:
    return MemorySite(site_config(tmp_path))


@pytest.fixture
def app(tmp_path: Path, memory_site: MemorySite) -> Flask:
    return create_app({
        "TESTING": True,
        "SITE_CONFIG": memory_site.config,
        "SITE_FACTORY": lambda config: memory_site,
        "ACCOUNT_EXISTS": any_account,
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "SECRET_KEY": "test",
    })


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def alice(app: Flask) -> dict[str, str]:
    return bearer(make_token(app, "alice"))


@pytest.fixture
def bob(app: Flask) -> dict[str, str]:
    return bearer(make_token(app, "bob"))
