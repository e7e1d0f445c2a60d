"""Helpers for tests that drive the real local cluster (scripts/cluster.sh up)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from api.context import Site
from api.progress import SaveStatus
from site_configs.schema import get_site_config

TOP = Path(__file__).resolve().parents[1]
CLUSTER = TOP / "scripts" / "cluster.sh"
REGISTRY = "127.0.0.1:5000"
REGISTRY_LOG = Path("/var/log/imgsave-cluster/registry.log")


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=2).raise_for_status()
        out = subprocess.run(
            ["sinfo", "-h", "-p", "imgsave", "-o", "%D"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (requests.RequestException, subprocess.SubprocessError):
        return False
    return out.stdout.strip() != ""


def require_cluster() -> None:
    if not cluster_is_up():
        pytest.fail(
            "the local cluster is not running: run scripts/cluster.sh up (scripts/test.sh does)"
        )


def node_exec(node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER), "node-exec", node, *argv],
        capture_output=True, text=True, timeout=300, check=check,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def session_container(node: str, user: str, name: str | None = None) -> Iterator[str]:
    """A user's session container on ``node`` (from the offline busybox base image)."""
    name = name or unique(f"jupyter-{user}")
    subprocess.run(
        [str(CLUSTER), "session", node, user, name],
        capture_output=True, text=True, timeout=120, check=True,
    )
    try:
        yield name
    finally:
        node_exec(node, "podman", "rm", "-f", "-t", "0", name, check=False)


def site() -> Site:
    return Site(get_site_config())


def wait_final(s: Site, job_id: str, user: str, timeout: float = 180) -> SaveStatus:
    deadline = time.monotonic() + timeout
    while True:
        (status,) = s.saves.status([job_id], user)
        if status.state.final:  # the job ended (a save is "finished" a moment earlier)
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not finished after {timeout}s: {status}")
        time.sleep(0.5)


def registry_tags(repository: str) -> list[str]:
    r = requests.get(f"http://{REGISTRY}/v2/{repository}/tags/list", timeout=10)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return list(r.json().get("tags") or [])
