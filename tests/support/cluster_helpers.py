"""Helpers for tests that drive the real local cluster (scripts/cluster.sh up)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from api.service.progress import SaveStatus
from api.service.site import Site
from builder_jobs.events import SaveResult
from builder_jobs.spec import RESULT_FILE, SPEC_FILE, SaveSpec
from core.errors import NotFound
from site_configs.schema import ImageFormat, get_site_config

TOP = Path(__file__).resolve().parents[2]
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
        try:
            (status,) = s.saves.status([job_id], user)
        except NotFound:
            # root's view here: a job the scheduler does not list yet (its owner's own
            # spool index covers that moment for them) is asked again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
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


# --- acting as the real users --------------------------------------------------------------
# The CLI as every user runs it: the root-owned runtime scripts/cluster.sh installs.
IMGSAVE = "/opt/imgsave/venv/bin/imgsave"
SERVICE_ACCOUNT = "imgsave"


def as_user(user: str, *argv: str, check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``runuser -u USER -- ARGV`` from / (never root's cwd), with a login-like env."""
    full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
                "HOME": f"/home/{user}" if user not in ("root", SERVICE_ACCOUNT) else "/"}
    full_env.update(env or {})
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv],
        capture_output=True, text=True, timeout=timeout, check=check, env=full_env, cwd="/",
    )


def imgsave_as(user: str, *args: str, check: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``imgsave ARGS`` run by ``user`` themselves."""
    return as_user(user, IMGSAVE, *args, check=check, timeout=timeout)


def submit_as(user: str, container: str, target: str, *options: str,
              node: str = "n1") -> str:
    """``imgsave --json submit`` as ``user`` (CLI mode); returns the job id."""
    done = imgsave_as(user, "--json", "submit", container, target, "--node", node, *options,
                      check=False)
    if done.returncode != 0:
        raise AssertionError(f"submit as {user} failed: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["job_id"])


def sacct_owner(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "User"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def job_state(job_id: str) -> str:
    """The job's state as squeue (live) or sacct says."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                         capture_output=True, text=True, timeout=30, check=False)
    if out.stdout.strip():
        return out.stdout.strip()
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip().split(" ", 1)[0]


@contextmanager
def centre_user(prefix: str) -> Iterator[str]:
    """A real Unix user made for one test (its saves are its own), with a Slurm
    association as every user of a centre has (without one, accounting records the job
    with no user name and nobody can claim it), removed after."""
    user = unique(prefix)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", user], check=True,
                   timeout=30)
    try:
        subprocess.run(["sacctmgr", "-i", "add", "user", user, "Account=imgsave"], check=True,
                       timeout=60, capture_output=True)
        yield user
    finally:
        subprocess.run(["sacctmgr", "-i", "delete", "user", user], check=False, timeout=60,
                       capture_output=True)
        subprocess.run(["userdel", "--remove", user], check=False, timeout=30,
                       capture_output=True)


def save_on_n1(work: Path, config: str, user: str, container: str, target: str) -> SaveResult:
    """``python -m builder_jobs.node_save`` as root inside n1 (what the privileged entry
    runs after its checks), for ``user``'s request, with the site config
    ``work/CONFIG.toml``; the result it wrote."""
    spec = SaveSpec(request_id=uuid.uuid4().hex, user=user, container=container,
                    target=f"{REGISTRY}/{user}/{target}", formats=(ImageFormat.OCI,),
                    category="cpu", node="n1", site_config=str(work / f"{config}.toml"),
                    created="2026-11-30T06:00:00+00:00")
    directory = work / spec.request_id
    directory.mkdir()
    (directory / SPEC_FILE).write_text(spec.to_json())
    node_exec("n1", "env", "IMGSAVE_NODE=n1", "IMGSAVE_JOB_ID=0",
              "/opt/imgsave/venv/bin/python", "-I", "-m", "builder_jobs.node_save",
              str(directory / SPEC_FILE), check=False)
    return SaveResult.from_json((directory / RESULT_FILE).read_text())
