"""The portal as a centre runs it (scripts/site.sh): Debian's nginx terminating TLS with a
locally made CA and signing users on (auth_basic, standing in for the site's SSO), two
``imgsave serve`` processes behind it on unix sockets, sharing Debian's PostgreSQL.

Users are the sign-on's (alice, bob, dana; ``ops`` is an imgsave admin); the servers
submit to the real Slurm as the service account; saves run on the real nodes.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from api.service.spool import SUBMIT_LOCKS_DIR
from tests.support.cluster_helpers import TOP, require_cluster, session_container

pytestmark = pytest.mark.cluster

SITE = TOP / "scripts" / "site.sh"
ETC = Path("/etc/imgsave-site")
CA = str(ETC / "ca.crt")
PROXY = "https://127.0.0.1:8443"
SOCKETS = Path("/run/imgsave-portal")
SERVICE_SPOOL = Path("/var/lib/imgsave/.imgsave/spool")


@pytest.fixture(scope="module", autouse=True)
def _site() -> None:
    require_cluster()
    if not (ETC / "portal.toml").exists():
        pytest.fail("the site is not set up: run scripts/site.sh up (scripts/test.sh does)")
    # idempotent: starts whatever is not running (a server an earlier test killed)
    subprocess.run([str(SITE), "up"], check=True, capture_output=True, timeout=300)


def password(user: str) -> str:
    return (ETC / "passwords" / user).read_text().strip()


def signed_on(user: str) -> requests.Session:
    """A client of the proxy that has signed on as ``user``."""
    client = requests.Session()
    client.trust_env = False  # else a CA bundle named in the environment wins over ours
    client.verify = CA
    client.auth = (user, password(user))
    return client


class UnixConnection(http.client.HTTPConnection):
    """HTTP over one server's unix socket: what the proxy does."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=120)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(self.path)


def via_socket(server: int, method: str, path: str, headers: dict[str, str],
               body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """A request straight to server ``server`` as the proxy sends it (the test is root)."""
    connection = UnixConnection(SOCKETS / f"api-{server}.sock")
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {**headers, **({"Content-Type": "application/json"} if data else {})}
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def server_pid(server: int) -> int:
    return int((SOCKETS / f"api-{server}.pid").read_text())


def new_saves(since: set[str]) -> set[str]:
    """Job ids in the service account's spool index that were not in ``since``."""
    return index_now() - since


def index_now() -> set[str]:
    try:
        return {n for n in os.listdir(SERVICE_SPOOL / "by-job") if not n.startswith(".")}
    except FileNotFoundError:
        return set()


@pytest.fixture
def alice_session() -> Iterator[str]:
    with session_container("n1", "alice") as name:
        yield name


def test_the_proxy_signs_users_on_and_its_remote_user_is_the_only_one_believed() -> None:
    nobody = requests.get(PROXY + "/api/v1/saves", verify=CA, timeout=30)
    assert nobody.status_code == 401 and "imgsave" in nobody.headers["WWW-Authenticate"]
    wrong = requests.get(PROXY + "/", verify=CA, auth=("alice", "not-her-password"), timeout=30)
    assert wrong.status_code == 401

    alice = signed_on("alice")
    # a forged identity in every spelling is dropped or replaced by the proxy's own
    for header in ("Remote-User", "Remote_User", "remote-user"):
        page = alice.get(PROXY + "/", headers={header: "bob"}, timeout=30)
        assert page.status_code == 200
        assert '<strong id="user-name">alice</strong>' in page.text, header
        assert "bob" not in page.text
    # the portal's session cookie only ever travels over HTTPS
    cookie = alice.get(PROXY + "/", timeout=30).headers.get("Set-Cookie", "")
    assert "imgsave_session=" in cookie or alice.cookies.get("imgsave_session")
    assert all(c.secure for c in alice.cookies if c.name == "imgsave_session")
    # a token client skips the sign-on, and a Remote-User it adds is not passed on
    forged = requests.get(PROXY + "/api/v1/saves", verify=CA, timeout=30,
                          headers={"Authorization": "Bearer isv_not-a-token", "Remote-User": "bob"})
    assert forged.status_code == 401
    assert forged.json()["error"]["message"] == "the token is unknown, expired or revoked"


def test_nothing_but_the_proxy_reaches_the_servers() -> None:
    # a user on the portal host cannot reach a server's socket to send Remote-User itself
    for user in ("alice", "bob"):
        tried = subprocess.run(
            ["runuser", "-u", user, "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "--unix-socket", str(SOCKETS / "api-1.sock"), "-H", "Remote-User: ops",
             "http://localhost/api/v1/saves"],
            capture_output=True, text=True, timeout=30, check=False)
        assert tried.returncode == 7 and tried.stdout == "000", (user, tried)
    assert (SOCKETS.stat().st_mode & 0o777) == 0o750
    # and the servers listen on no TCP port at all
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True,
                               timeout=30).stdout
    for server in (1, 2):
        assert f"pid={server_pid(server)}," not in listening


def _post_save(server: int, key: str, container: str, user: str = "alice"
               ) -> tuple[int, dict[str, Any]]:
    return via_socket(server, "POST", "/api/v1/saves",
                      {"Remote-User": user, "Idempotency-Key": key},
                      {"container": container, "target": f"site-{key[:8]}:v1", "node": "n1"})


def _until_accepted(server: int, key: str, container: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        status, body = _post_save(server, key, container)
        if status == 202:
            return body
        assert status == 409 and body["error"]["code"] == "idempotency_in_progress", body
        assert time.monotonic() < deadline, "the key stayed in progress"
        time.sleep(0.5)


def test_one_idempotency_key_sent_to_both_servers_at_once_makes_one_job(
        alice_session: str) -> None:
    key = uuid.uuid4().hex
    before = index_now()
    answers: dict[int, dict[str, Any]] = {}
    threads = [threading.Thread(target=lambda s=s: answers.__setitem__(
        s, _until_accepted(s, key, alice_session))) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert answers[1]["job_id"] == answers[2]["job_id"]
    assert new_saves(before) == {answers[1]["job_id"]}


def test_a_server_killed_mid_request_loses_nothing_and_makes_nothing_twice(
        alice_session: str) -> None:
    key = uuid.uuid4().hex
    before = index_now()
    # hold alice's submit lock (the service's spool), so server 1 stops inside its submit
    # with the key claimed; then kill it there
    path = SERVICE_SPOOL / SUBMIT_LOCKS_DIR / hashlib.sha256(b"alice").hexdigest()[:32]
    lock = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    os.fchown(lock, *_ids("imgsave"))  # the service's, as if it had made it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        caught: list[BaseException] = []

        def doomed() -> None:
            try:
                _post_save(1, key, alice_session)
            except BaseException as e:  # the connection dies with the server
                caught.append(e)

        request = threading.Thread(target=doomed)
        request.start()
        deadline = time.monotonic() + 30
        while _claimed_by(key) is None:
            assert time.monotonic() < deadline, "server 1 never claimed the key"
            time.sleep(0.1)
        os.kill(server_pid(1), signal.SIGKILL)
        request.join(timeout=30)
        assert caught, "the request should have died with its server"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    # the client's retry reaches the other server: the dead claim is taken over, the
    # save is made once
    retried = _until_accepted(2, key, alice_session)
    assert new_saves(before) == {retried["job_id"]}
    # and once more through the proxy, with server 1 back: the same save, replayed
    subprocess.run([str(SITE), "restart-server", "1"], check=True, capture_output=True,
                   timeout=120)
    again = signed_on("alice").post(PROXY + "/api/v1/saves", headers={"Idempotency-Key": key},
                                    json={"container": alice_session,
                                          "target": f"site-{key[:8]}:v1", "node": "n1"},
                                    timeout=120)
    assert again.status_code == 202, again.text
    assert again.json()["job_id"] == retried["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert new_saves(before) == {retried["job_id"]}


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _claimed_by(key: str) -> str | None:
    # psql interpolates :'k' (quoted) in what it reads, not in -c
    out = subprocess.run(
        ["runuser", "-u", "imgsave", "--", "psql", "-d", "imgsave", "-qAt", "-v", f"k={key}"],
        input="SELECT claimant FROM api_idempotency_keys WHERE key = :'k' AND job_id = '';\n",
        capture_output=True, text=True, timeout=30, check=True, cwd="/")
    return out.stdout.strip() or None
