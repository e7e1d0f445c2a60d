"""The node's warm-up (builder_jobs.warmup_gate.run_warmup) with real podman and a real
registry (tests/support/registry_server.py), into a throw-away podman storage: pulled,
then already present; a missing image fails alone; another user's image is refused
before anything is fetched."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from builder_jobs.warmup_gate import run_warmup
from builder_jobs.warmup_spec import ImageOutcome
from site_configs.schema import load_site_config
from tests.support.builder_fixtures import PODMAN, needs_podman, podman, write_site_config
from tests.support.registry_server import RunningRegistry

pytestmark = [pytest.mark.podman, needs_podman]


def test_pull_then_present_and_failures_stay_apart(
    tmp_path: Path, request: pytest.FixtureRequest, builder_registry: RunningRegistry,
    builder_base_image: str,
) -> None:
    host = builder_registry.host
    for name in ("alice/warm-base:v1", "bob/private:v1"):
        podman("push", "--tls-verify=false", builder_base_image, f"{host}/{name}")
    storage = tmp_path / "node-storage"  # the node's own storage, empty
    runroot = Path(tempfile.mkdtemp(prefix="wu", dir="/tmp"))  # podman: at most 50 chars
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    node_podman = [*PODMAN, "--root", str(storage / "root"), "--runroot", str(runroot)]
    config = load_site_config(write_site_config(tmp_path, builder_registry.url,
                                                podman_argv=node_podman))  # fmt: skip
    images = ["alice/warm-base:v1", "alice/warm-missing:v1", "bob/private:v1"]
    lines: list[str] = []
    first = run_warmup(config, "alice", images, "n1", lines.append)
    outcomes = [(r.outcome, r.error.split(":")[0]) for r in first.images]
    assert outcomes == [(ImageOutcome.PULLED, ""), (ImageOutcome.FAILED, "alice/warm-missing"),
                        (ImageOutcome.FAILED, "refused")]
    assert not first.ok and len(lines) == 3 and first.node == "n1"
    assert first.images[0].digest.startswith("sha256:") and first.images[0].bytes > 0
    held = podman("--root", str(storage / "root"), "--runroot", str(runroot),
                  "image", "inspect", "--format", "{{.Digest}}", f"{host}/alice/warm-base:v1")
    assert held.stdout.strip() == first.images[0].digest
    second = run_warmup(config, "alice", images[:1], "n1", lines.append)
    assert second.ok and second.images[0].outcome is ImageOutcome.PRESENT
    assert podman("--root", str(storage / "root"), "--runroot", str(runroot),
                  "image", "exists", f"{host}/bob/private:v1", check=False).returncode == 1


def test_a_tag_pointing_at_an_older_image_is_pulled_again(
    tmp_path: Path, request: pytest.FixtureRequest, builder_registry: RunningRegistry,
    builder_base_image: str,
) -> None:
    """The node holds alice/moving:v1 from before; v1 now names another image: pulled."""
    host = builder_registry.host
    runroot = Path(tempfile.mkdtemp(prefix="wu", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    node = ["--root", str(tmp_path / "root"), "--runroot", str(runroot)]
    config = load_site_config(write_site_config(tmp_path, builder_registry.url,
                                                podman_argv=[*PODMAN, *node]))  # fmt: skip
    podman("push", "--tls-verify=false", builder_base_image, f"{host}/alice/moving:v1")
    first = run_warmup(config, "alice", ["alice/moving:v1"], "n1", lambda line: None)
    assert first.images[0].outcome is ImageOutcome.PULLED
    podman("push", "--tls-verify=false", "--format", "v2s2", builder_base_image,
           f"{host}/alice/moving:v1")  # the same content, another manifest: a new digest
    again = run_warmup(config, "alice", ["alice/moving:v1"], "n1", lambda line: None)
    assert again.images[0].digest != first.images[0].digest
    assert again.images[0].outcome is ImageOutcome.PULLED
    held = podman(*node, "image", "inspect", f"{host}/alice/moving:v1")
    # the same image (same config) now known by both manifests' digests
    repo_digests = json.loads(held.stdout)[0]["RepoDigests"]
    assert f"{host}/alice/moving@{again.images[0].digest}" in repo_digests
    third = run_warmup(config, "alice", ["alice/moving:v1"], "n1", lambda line: None)
    assert third.images[0].outcome is ImageOutcome.PRESENT
