"""``imgsave serve`` for real, as the portal's service account (never root): starting it,
finding its process, and the shared directories its config and state live in. The
``served`` fixture (tests/conftest.py) is built on these. Needs the service account and
the runtime in /opt that ``scripts/cluster.sh install`` makes.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from pathlib import Path

import requests

SERVICE = "imgsave"
IMGSAVE_BIN = "/opt/imgsave/venv/bin/imgsave"


def shared_dir(owner: str, mode: int) -> Path:
    """A fresh directory under /tmp owned by ``owner`` (pytest's tmp_path is root's)."""
    directory = Path(tempfile.mkdtemp(prefix=f"imgsave-{owner}-", dir="/tmp"))
    entry = pwd.getpwnam(owner)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    directory.chmod(mode)
    return directory


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
