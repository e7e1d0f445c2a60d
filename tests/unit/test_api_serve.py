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
import subprocess
from pathlib import Path

import requests

from tests.support.serve import IMGSAVE_BIN, SERVICE, serve_pid


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
