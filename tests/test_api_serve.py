"""``imgsave serve`` for real: waitress in a subprocess run by the portal's service
account (never root), tokens made with ``imgsave token`` as that account.

Only endpoints that need neither Slurm nor the registry are called here; it checks what
the test client cannot: the WSGI server, the command line, the account it runs as, and
that a proxy's ``Remote-User`` header survives waitress. Needs the service account and
the runtime in /opt that ``scripts/cluster.sh install`` makes.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api_support import LOCAL_TOML

SERVICE = "imgsave"
IMGSAVE_BIN = "/opt/imgsave/venv/bin/imgsave"


def shared_dir(owner: str, mode: int) -> Path:
    """A fresh directory under /tmp owned by ``owner`` (pytest's tmp_path is root's)."""
    directory = Path(tempfile.mkdtemp(prefix=f"imgsave-{owner}-", dir="/tmp"))
    entry = pwd.getpwnam(owner)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    directory.chmod(mode)
    return directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    url = f"http://127.0.0.1:{_free_port()}"
    server = start_serve(url, argv, env)
    try:
        yield url, argv, env
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(config.parent, ignore_errors=True)


def start_serve(url: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``imgsave serve`` on ``url``'s port, once it answers ``/healthz``."""
    port = url.rsplit(":", 1)[1]
    # its log goes to a file: a pipe nobody reads would block the server once full
    log = tempfile.NamedTemporaryFile(prefix="imgsave-serve-", suffix=".log", delete=False)
    server = subprocess.Popen([*argv, "serve", "--port", port, "--threads", "2"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, text=True, cwd="/")
    log.close()
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(url + "/healthz", timeout=1).raise_for_status()
            return server
        except requests.RequestException:
            assert server.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, "imgsave serve did not answer in 20 s"
            time.sleep(0.1)


def serve_pid(url: str) -> int:
    """The process listening on ``url``'s port (waitress, as the service account)."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split("pid=", 1)[1].split(",", 1)[0])


def _serve_owner(port_url: str) -> str:
    return pwd.getpwuid(os.stat(f"/proc/{serve_pid(port_url)}").st_uid).pw_name


def test_serve_answers_with_tokens_from_the_token_command(
    served: tuple[str, list[str], dict[str, str]], tmp_path: Path
) -> None:
    url, argv, env = served
    assert _serve_owner(url) == SERVICE  # never root
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
    instance = Path(env["IMGSAVE_INSTANCE_DIR"])
    assert (instance / "secret_key").stat().st_mode & 0o777 == 0o600
    database = instance.parent / "api.db"
    assert database.stat().st_mode & 0o777 == 0o600
    assert pwd.getpwuid(database.stat().st_uid).pw_name == SERVICE
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


def test_serve_and_token_refuse_root(served: tuple[str, list[str], dict[str, str]]) -> None:
    _, argv, env = served
    as_root = argv[argv.index(IMGSAVE_BIN):]  # the same command, not through runuser
    for command in (["serve", "--port", "1"], ["token", "list"]):
        refused = subprocess.run([*as_root, *command], env=env, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert refused.returncode == 2 and "service account imgsave" in refused.stderr


def test_an_oversized_body_is_413_through_waitress(
    served: tuple[str, list[str], dict[str, str]],
) -> None:
    url, _, _ = served
    r = requests.post(url + "/api/v1/saves", data=b"{" + b" " * 200_000 + b"}", timeout=10,
                      headers={"Remote-User": "alice", "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_entity_too_large"
