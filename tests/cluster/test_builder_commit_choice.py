"""The node picks its commit: streaming where podman's storage is root overlay, the
engine's commit (reported, with the reason) where it is not. Real podman, real registry.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder_jobs import annotations as ann
from builder_jobs.events import EventLog, FailureKind, Stage, read_result
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE
from registry.oci import RegistryClient
from tests.support.builder_fixtures import (
    PODMAN,
    ULIMITS,
    podman,
    registry_tags,
    run_node_save,
    write_site_config,
    write_spec,
)
from tests.support.registry_server import RunningRegistry

pytestmark = pytest.mark.podman
NODE_ENV = {"IMGSAVE_NODE": "n7", "IMGSAVE_JOB_ID": "77"}


def _stages(spec_path: Path) -> list[Stage]:
    return [e.stage for e in EventLog(spec_path.parent / EVENTS_FILE).read()]


def test_auto_streams_on_overlay_and_the_image_runs(
    builder_registry: RunningRegistry, make_session_container: object, tmp_path: Path
) -> None:
    container = make_session_container("alice")  # type: ignore[operator]
    podman("exec", container, "sh", "-c", "echo streamed > /root/added.txt; rm /bin/true")
    repo = f"alice/auto-{uuid.uuid4().hex[:8]}"
    target = f"{builder_registry.host}/{repo}:v1"
    site = write_site_config(tmp_path, builder_registry.url, commit_method="auto")
    spec = write_spec(tmp_path, user="alice", container=container, target=target,
                      site_config=site)
    done = run_node_save(spec, NODE_ENV)
    assert done.returncode == 0, done.stderr
    result = read_result(spec.parent / RESULT_FILE)
    assert result is not None and result.ok
    assert (result.commit_method, result.commit_note) == ("streaming", "")
    stages = _stages(spec)
    assert stages[-1] is Stage.DONE
    assert stages == sorted(stages, key=list(Stage).index)  # the bar only moves forward
    assert "stream_pause" in result.seconds
    with RegistryClient(builder_registry.url) as client:
        manifest = client.manifest(repo, "v1")
    assert manifest is not None and manifest.digest == result.digest
    assert manifest.annotations[ann.OWNER] == "alice"
    assert manifest.annotations[ann.JOB_ID] == "77"
    try:
        podman("pull", "--tls-verify=false", target)
        shown = podman("run", "--rm", "--network", "none", target, "sh", "-c",
                       "cat /root/added.txt; ls /bin/true 2>&1 || echo deleted")
        assert shown.stdout.splitlines() == ["streamed", "ls: /bin/true: No such file or "
                                             "directory", "deleted"]
    finally:
        podman("rmi", "-f", target, check=False)


@pytest.fixture
def vfs_podman(tmp_path: Path, builder_base_image: str) -> Iterator[list[str]]:
    """podman on a private vfs store (no overlay upper dir), with the base image in it."""
    short = Path(tempfile.mkdtemp(prefix="vfs-", dir="/tmp"))  # podman: runroot <= 50 chars
    # A store of its own in every respect: never `system reset` or the default tmpdir,
    # which podman shares with the cluster's node stores (it would stop their containers).
    store = [*PODMAN, "--storage-driver", "vfs", "--root", str(short / "root"),
             "--runroot", str(short / "run"), "--tmpdir", str(short / "tmp")]
    saved = tmp_path / "base.tar"
    podman("save", "-o", str(saved), builder_base_image)
    loaded = subprocess.run([*store, "load", "-i", str(saved)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    yield store
    subprocess.run([*store, "rm", "-af", "-t", "0"], capture_output=True, check=False)
    subprocess.run([*store, "rmi", "-af"], capture_output=True, check=False)
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("method", ["auto", "streaming"])
def test_without_an_upper_dir_auto_falls_back_and_streaming_refuses(
    builder_registry: RunningRegistry, vfs_podman: list[str], tmp_path: Path, method: str
) -> None:
    name = f"imgsave-vfs-{uuid.uuid4().hex[:8]}"
    subprocess.run([*vfs_podman, "run", "-d", *ULIMITS, "--name", name, "--label",
                    "imgsave.owner=alice", "localhost/imgsave-base:latest", "sleep", "infinity"],
                   capture_output=True, check=True)
    repo = f"alice/vfs-{uuid.uuid4().hex[:8]}"
    site = write_site_config(tmp_path, builder_registry.url, commit_method=method,
                             podman_argv=vfs_podman)
    spec = write_spec(tmp_path, user="alice", container=name,
                      target=f"{builder_registry.host}/{repo}:v1", site_config=site)
    done = run_node_save(spec, NODE_ENV)
    result = read_result(spec.parent / RESULT_FILE)
    assert result is not None
    state = subprocess.run([*vfs_podman, "inspect", "-f", "{{.State.Status}}", name],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert state == "running"  # paused while inspected, running again after the refusal
    if method == "auto":
        assert done.returncode == 0, done.stderr
        assert result.commit_method == "engine-commit"
        assert "vfs" in result.commit_note
        assert registry_tags(builder_registry, repo) == ["v1"]
    else:
        assert done.returncode == 1
        assert result.failure is FailureKind.ENGINE and "vfs" in result.error
        assert registry_tags(builder_registry, repo) == []
