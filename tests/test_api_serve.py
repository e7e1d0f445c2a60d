"""``imgsave serve`` for real: waitress in a subprocess, tokens made with ``imgsave token``.

Only endpoints that need neither Slurm nor the registry are called, so this runs
anywhere; it checks what the test client cannot: the WSGI server, the command line,
and that a proxy's ``Remote-User`` header survives waitress.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api_support import LOCAL_TOML

IMGSAVE = [sys.executable, "-m", "api.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """A running ``imgsave serve``; its URL, the imgsave argv and environment to reach it."""
    text = LOCAL_TOML.read_text()
    assert "\n[api]\n" in text and "\ndatabase_url = " in text
    text = text.replace("\n[api]\n", '\n[api]\ntrusted_proxies = ["127.0.0.1"]\n')
    text = "\n".join(f'database_url = "sqlite:///{tmp_path}/api.db"'
                     if line.startswith("database_url = ") else line
                     for line in text.splitlines())
    config = tmp_path / "site.toml"
    config.write_text(text)
    env = {**os.environ, "IMGSAVE_INSTANCE_DIR": str(tmp_path / "instance")}
    argv = [*IMGSAVE, "--config", str(config)]
    port = _free_port()
    server = subprocess.Popen([*argv, "serve", "--port", str(port), "--threads", "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/healthz", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "imgsave serve did not answer in 20 s"
                time.sleep(0.1)
        yield url, argv, env
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_answers_with_tokens_from_the_token_command(
    served: tuple[str, list[str], dict[str, str]], tmp_path: Path
) -> None:
    url, argv, env = served
    made = subprocess.run([*argv, "--json", "token", "create", "alice"], env=env,
                          capture_output=True, text=True, check=True)
    token = json.loads(made.stdout)["token"]
    ok = requests.get(url + "/api/v1/saves?job_ids=", timeout=10,
                      headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == {"saves": []}
    assert ok.headers["Server"] == "imgsave"
    wrong = requests.get(url + "/api/v1/saves", timeout=10,
                         headers={"Authorization": "Bearer isv_wrong"})
    assert wrong.status_code == 401
    assert (tmp_path / "instance" / "secret_key").stat().st_mode & 0o777 == 0o600
    spec = requests.get(url + "/api/v1/openapi.json", timeout=10).json()
    assert "/api/v1/saves" in spec["paths"]
    subprocess.run([*argv, "token", "revoke", "--user", "alice"], env=env, check=True,
                   capture_output=True)
    revoked = requests.get(url + "/api/v1/saves?job_ids=", timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 401


def test_remote_user_passes_through_waitress_from_a_trusted_proxy(
    served: tuple[str, list[str], dict[str, str]],
) -> None:
    url, _, _ = served  # trusted_proxies = ["127.0.0.1"] in this config
    r = requests.get(url + "/api/v1/saves?job_ids=", headers={"Remote-User": "alice"},
                     timeout=10)
    assert r.status_code == 200, r.text
    page = requests.get(url + "/", headers={"Remote-User": "alice"}, timeout=10)
    assert page.status_code == 200 and "Logged in as" in page.text


def test_an_oversized_body_is_413_through_waitress(
    served: tuple[str, list[str], dict[str, str]],
) -> None:
    url, _, _ = served
    r = requests.post(url + "/api/v1/saves", data=b"{" + b" " * 200_000 + b"}", timeout=10,
                      headers={"Remote-User": "alice", "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_entity_too_large"
