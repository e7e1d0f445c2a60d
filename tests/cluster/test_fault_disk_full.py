"""A full disk during a save, injected for real on the local cluster (issue 11).

Each test mounts a small filesystem, filled up, over the directory the save writes to,
inside node n1's own mount namespace (``scripts/cluster.sh`` gives each slurmd one):

- ``/var/tmp``, where podman's commit writes the new layer before it stores it (the
  engine commit path);
- ``/tmp``, where the SIF step has its work directory (an overlay: the node's files in
  ``/tmp`` stay visible, new ones land on a full tmpfs);
- the user's spool, on a loop-mounted ext4 seen by the host (where ``imgsave submit``
  writes) and by n1 (where the job relays into it).

Each asserts the reason and failure kind the user sees, that nothing was tagged, the
container runs, no temporary image or work file is left, and that the same save
succeeds once the space is back. Every mount is undone in a ``finally``. While a test
runs, other saves on n1 that write into the same directory fail too: run these alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from api.service.site import Site
from builder_jobs.events import FailureKind, read_result
from builder_jobs.spec import RESULT_FILE, SPEC_FILE, SaveSpec
from registry.catalog import is_helper_tag
from scheduler_glue.states import JobState
from site_configs.schema import ImageFormat, load_site_config
from tests.support.cluster_helpers import (
    REGISTRY,
    TOP,
    as_user,
    imgsave_as,
    job_state,
    node_exec,
    registry_tags,
    require_cluster,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = pytest.mark.cluster
NODE = "n1"
RUNTIME_PYTHON = "/opt/imgsave/venv/bin/python"
SCRATCH = Path("/var/lib/imgsave-diskfull")  # the test's own files, shared by host and n1


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


# --- the injection ---------------------------------------------------------------------


def in_node(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``sh -c SCRIPT`` inside n1's mount namespace (as root)."""
    return node_exec(NODE, "sh", "-euc", script, "sh", *args, check=check)


def fill(directory: str) -> None:
    """Write zeros into ``directory`` (inside n1) until its filesystem refuses more."""
    done = in_node('dd if=/dev/zero of="$1/imgsave-filler" bs=4k 2>&1 || true', directory)
    assert "No space left on device" in done.stdout, done.stdout


@contextmanager
def full_tmpfs_over(directory: str, megabytes: int = 4) -> Iterator[None]:
    """A ``megabytes`` tmpfs, filled, mounted over ``directory`` in n1 only."""
    in_node('mount -t tmpfs -o "size=$2m,mode=1777" imgsave-diskfull "$1"',
            directory, str(megabytes))
    try:
        fill(directory)
        yield
    finally:
        in_node('findmnt -n -o SOURCE "$1" | grep -qx imgsave-diskfull && umount "$1"',
                directory, check=False)
    assert "imgsave-diskfull" not in in_node("findmnt -n -o SOURCE /var/tmp /tmp || true").stdout


@contextmanager
def full_overlay_over_tmp(megabytes: int = 4) -> Iterator[str]:
    """``/tmp`` in n1 as an overlay whose new files go to a full ``megabytes`` tmpfs;
    yields the tmpfs's upper directory (what the save wrote there)."""
    stage = f"/run/imgsave-diskfull-{uuid.uuid4().hex[:8]}"
    in_node('mkdir "$1" && mount -t tmpfs -o "size=$2m" imgsave-diskfull "$1" && '
            'mkdir "$1/up" "$1/work" && chmod 1777 "$1/up" && mount -t overlay '
            'imgsave-diskfull -o "lowerdir=/tmp,upperdir=$1/up,workdir=$1/work" /tmp',
            stage, str(megabytes))  # fmt: skip
    try:
        fill("/tmp")
        yield f"{stage}/up"
    finally:
        in_node('if findmnt -n -o SOURCE /tmp | grep -qx imgsave-diskfull; then umount /tmp; '
                'fi; umount "$1"; rmdir "$1"', stage, check=False)  # fmt: skip
    assert "imgsave-diskfull" not in in_node("findmnt -n -o SOURCE /tmp || true").stdout


@contextmanager
def small_shared_filesystem(megabytes: int = 8) -> Iterator[Path]:
    """A loop-mounted ext4 at the same path on the host and in n1 (one loop device, so
    one filesystem); yields its mount point. Removed, device and file, on the way out."""
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="spool-", dir=SCRATCH))
    base.chmod(0o755)
    image, mount = base / "fs.img", base / "mnt"
    mount.mkdir()
    with image.open("wb") as fh:
        fh.truncate(megabytes << 20)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-O", "^has_journal", str(image)], check=True)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()
    mounted: list[str] = []
    try:
        subprocess.run(["mount", device, str(mount)], check=True)
        mounted.append("host")
        in_node('mount "$1" "$2"', device, str(mount))
        mounted.append(NODE)
        yield mount
    finally:
        if NODE in mounted:
            in_node('umount "$1"', str(mount), check=False)
        if "host" in mounted:
            subprocess.run(["umount", str(mount)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(base, ignore_errors=True)


# --- what must (not) be left -----------------------------------------------------------


def container_state(name: str) -> str:
    return node_exec(NODE, "podman", "inspect", "-f", "{{.State.Status}}", name).stdout.strip()


def local_images(request_id: str) -> list[str]:
    out = node_exec(NODE, "podman", "images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    return [line for line in out.splitlines() if request_id in line]


def users_tags(repository: str) -> list[str]:
    return [t for t in registry_tags(repository) if not is_helper_tag(t)]


def write_random(name: str, megabytes: int) -> None:
    """Incompressible files in the container, more than the full filesystem holds."""
    node_exec(NODE, "podman", "exec", name, "sh", "-c",
              f"mkdir -p /opt/data && dd if=/dev/urandom of=/opt/data/blob bs=1M "
              f"count={megabytes} 2>/dev/null")  # fmt: skip


# --- the engine commit: podman's /var/tmp full -----------------------------------------


def node_save(spec: SaveSpec, spool: Path) -> subprocess.CompletedProcess[str]:
    """The node-side save run inside n1 as root (``python -m builder_jobs.node_save``):
    the node's own config streams, so the engine commit is asked for by a config here."""
    directory = spool / spec.request_id
    directory.mkdir(mode=0o755)
    (directory / SPEC_FILE).write_text(spec.to_json())
    return node_exec(NODE, "env", f"IMGSAVE_NODE={NODE}", "IMGSAVE_JOB_ID=0",
                     RUNTIME_PYTHON, "-I", "-m", "builder_jobs.node_save",
                     str(directory / SPEC_FILE), check=False)  # fmt: skip


def engine_commit_config(directory: Path) -> Path:
    text = (TOP / "site_configs" / "local.toml").read_text()
    config = directory / "site.toml"
    config.write_text(text.replace('[engine]\n', '[engine]\ncommit_method = "engine"\n', 1))
    config.chmod(0o644)
    return config


def test_the_engine_commit_with_podmans_temp_dir_full_fails_cleanly() -> None:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix="engine-", dir=SCRATCH))
    try:
        config = engine_commit_config(spool)
        repo = unique("alice/varfull")
        with session_container(NODE, "alice") as name:
            write_random(name, 8)

            def spec() -> SaveSpec:
                return SaveSpec(uuid.uuid4().hex, "alice", name, f"{REGISTRY}/{repo}:v1",
                                (ImageFormat.OCI,), "cpu", NODE, str(config), "2026-01-01")

            first = spec()
            with full_tmpfs_over("/var/tmp"):
                done = node_save(first, spool)
                left = in_node("ls -A /var/tmp").stdout.split()
            result = read_result(spool / first.request_id / RESULT_FILE)
            assert done.returncode == 1, done.stderr
            assert result is not None and result.failure is FailureKind.NO_SPACE, result
            assert f"node {NODE} has no space left on /var/tmp" in result.error, result.error
            assert container_state(name) == "running"
            assert users_tags(repo) == []
            assert local_images(first.request_id) == []
            assert left == ["imgsave-filler"]  # podman's temporary files went too

            again = spec()
            done = node_save(again, spool)
            assert done.returncode == 0, done.stderr
            saved = read_result(spool / again.request_id / RESULT_FILE)
            assert saved is not None and saved.ok and saved.commit_method == "engine-commit"
            assert users_tags(repo) == ["v1"]
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# --- the SIF step: its work directory's filesystem full --------------------------------


def test_a_sif_save_with_the_work_dir_full_fails_cleanly() -> None:
    """``--format oci,sif`` as alice: the OCI image streams to the registry, then the
    export into the SIF work directory runs out of room. FAILED, no_space, naming /tmp;
    the OCI tag rolled back, no ORAS tag, no SIF, no work files; then it saves."""
    s = site()
    repo = unique("alice/tmpfull")
    sif_dir = Path("/home/alice/sif")
    with session_container(NODE, "alice") as name:
        write_random(name, 16)
        with full_overlay_over_tmp(megabytes=8) as upper:
            job = submit_as("alice", name, f"{repo}:v1", "--format", "oci,sif", node=NODE)
            status = wait_final(s, job, "alice")
            left = in_node('ls -A "$1"', upper).stdout.split()
        assert status.state is JobState.FAILED, status
        assert status.result is not None and status.result.failure is FailureKind.NO_SPACE
        assert f"node {NODE} has no space left on /tmp" in status.reason, status.reason
        assert container_state(name) == "running"
        assert users_tags(repo) == []  # neither v1 (rolled back) nor v1-sif
        assert local_images(status.request_id) == []
        assert left == ["imgsave-filler"]  # the work directory went
        assert not (sif_dir / f"{repo.rsplit('/', 1)[1]}_v1.sif").exists()

        again = submit_as("alice", name, f"{repo}:v1", "--format", "oci,sif", node=NODE)
        assert wait_final(s, again, "alice").state is JobState.COMPLETED
        assert sorted(users_tags(repo)) == ["v1", "v1-sif"]
    (sif_dir / f"{repo.rsplit('/', 1)[1]}_v1.sif").unlink(missing_ok=True)


# --- the user's spool full --------------------------------------------------------------


def spool_config(mount: Path) -> Path:
    """The local config with each user's spool on the small filesystem."""
    alice = mount / "alice"
    alice.mkdir(mode=0o700)
    shutil.chown(alice, "alice", "alice")
    text = (TOP / "site_configs" / "local.toml").read_text()
    config = mount.parent / "site.toml"
    config.write_text(text.replace('spool_dir = "{home}/.imgsave/spool"',
                                   f'spool_dir = "{mount}/{{user}}"', 1))
    config.chmod(0o644)
    return config


def submit_with(config: Path, container: str, target: str) -> str:
    """``imgsave --config CONFIG --json submit`` as alice; returns the job id."""
    done = imgsave_as("alice", "--config", str(config), "--json", "submit", container, target,
                      "--node", NODE)
    return str(json.loads(done.stdout)["job_id"])


def hold_node() -> str:
    """A job of bob's taking every CPU of n1, running; returns its id."""
    cpus = os.cpu_count() or 1
    blocker = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", NODE, "-c",
                      str(cpus), "-o", "/dev/null", "--wrap", "sleep 300").stdout.strip()
    deadline = time.monotonic() + 120
    while job_state(blocker) != "RUNNING":
        if time.monotonic() > deadline:
            subprocess.run(["scancel", blocker], check=False)
            raise AssertionError(f"bob's job {blocker} never ran on {NODE}")
        time.sleep(0.5)
    return blocker


def test_a_full_spool_fails_the_save_with_the_schedulers_reason() -> None:
    """Alice's spool fills up between her submit and the job's start (a job of bob's
    holds n1 meanwhile): the job saves nothing and exits 75, and status says why from
    the scheduler's record alone, not "exit code 120"; with space again, it saves."""
    repo = unique("alice/spoolfull")
    with small_shared_filesystem() as mount, session_container(NODE, "alice") as name:
        config = spool_config(mount)
        s = Site(load_site_config(config))
        blocker = hold_node()
        try:
            job = submit_with(config, name, f"{repo}:v1")
            fill(str(mount))
        finally:
            subprocess.run(["scancel", blocker], check=False)
        status = wait_final(s, job, "alice")
        deadline = time.monotonic() + 60
        while status.reason.startswith("the save job failed before") and \
                time.monotonic() < deadline:
            time.sleep(1)  # the controller's record has no exit code; accounting's has
            (status,) = s.saves.status([job], "alice")
        assert status.state is JobState.FAILED, status
        assert status.result is None  # nothing could be written there
        assert status.reason.startswith("no space left in the save's spool "), status.reason
        assert str(mount / "alice") in status.reason
        accounted = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "ExitCode"],
                                   capture_output=True, text=True, check=True).stdout
        assert accounted.strip() == "75:0"
        shown = imgsave_as("alice", "--config", str(config), "--json", "status", job).stdout
        assert json.loads(shown)[0]["reason"] == status.reason
        assert container_state(name) == "running"
        assert users_tags(repo) == []

        (mount / "imgsave-filler").unlink()
        again = submit_with(config, name, f"{repo}:v1")
        assert wait_final(s, again, "alice").state is JobState.COMPLETED
        assert users_tags(repo) == ["v1"]
        assert not list((mount / "alice").rglob(".reserve"))
