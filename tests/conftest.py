"""Fixtures shared across the test depths (unit, cluster, browser).

The API tests' fixtures (tests/support/api_fixtures.py) and the builder tests' real
podman and registry (tests/support/builder_fixtures.py) are loaded here for every test;
``served`` is a running ``imgsave serve``, used by tests/unit/test_api_serve.py and by the
cluster and browser tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api_support import LOCAL_TOML
from tests.support.registry_server import free_port
from tests.support.serve import IMGSAVE_BIN, SERVICE, shared_dir, start_serve

pytest_plugins = ["tests.support.api_fixtures", "tests.support.builder_fixtures"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """A running ``imgsave serve`` as the service account; its URL, the argv of
    ``imgsave`` as the service account with this config, and the environment."""
    text = LOCAL_TOML.read_text()
    assert "\n[api]\n" in text and "\ndatabase_url = " in text
    state = shared_dir(SERVICE, 0o700)  # the service's database and instance dir
    text = text.replace("\n[api]\n", '\n[api]\ntrusted_proxies = ["127.0.0.1"]\n')
    text = "\n".join(f'database_url = "sqlite:///{state}/api.db"'
                     if line.startswith("database_url = ") else line
                     for line in text.splitlines())
    config = shared_dir("root", 0o755) / "site.toml"  # every user reads the site config
    config.write_text(text)
    config.chmod(0o644)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
           "HOME": "/var/lib/imgsave", "IMGSAVE_INSTANCE_DIR": str(state / "instance")}
    argv = ["runuser", "-u", SERVICE, "--", IMGSAVE_BIN, "--config", str(config)]
    url = f"http://127.0.0.1:{free_port()}"
    server = start_serve(url, argv, env)
    try:
        yield url, argv, env
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(config.parent, ignore_errors=True)
