"""One meaning of "saved" (issue 18): the same container saved by the streaming commit
and by the engine's commit gets the same image config, per the rule in
builder_jobs/image_config.py (docs/saved-image.md).

For real on the local cluster: alice's podman session on n1, started with a command,
env (one of them ``FOO_TOKEN``), labels, a working dir, a user and a stop signal, is
saved by alice through Slurm (the site's ``auto``: the streaming commit) and by the
node-side save with ``commit_method = "engine"`` (podman's commit + push, then the
config rewrite in the registry). The two pushed configs match but for created,
history and rootfs, hold the container's settings as ``podman commit`` keeps them, and
hold neither the token's name nor its value nor the owner label; the engine's own
config blob (which held the token) is no longer served by the registry. The same for
a docker container on n1, saved both ways by the node-side save.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.cluster_helpers import (
    CLUSTER,
    REGISTRY,
    TOP,
    node_exec,
    require_cluster,
    save_on_n1,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = [pytest.mark.cluster, pytest.mark.podman]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
DOCKER = ["docker", "-H", "unix:///run/docker/docker.sock"]
PODMAN_COMMAND = 'command = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]'
DOCKER_COMMAND = 'command = ["docker", "-H", "unix:///run/docker/docker.sock"]'
REGISTRY_BLOBS = Path("/var/lib/imgsave-cluster/registry/docker/registry/v2/blobs")
VOLATILE = ("created", "history", "rootfs")


def settings(secret: str) -> list[str]:
    """``run`` options a researcher might have used for their session."""
    return ["-e", f"FOO_TOKEN={secret}", "-e", "MYVAR=hello", "-w", "/opt", "--user", "0:0",
            "--label", "team=bio", "--stop-signal", "SIGINT"]


@pytest.fixture
def work() -> Iterator[Path]:
    """Site configs (podman and docker, streaming and engine commit) and spools for the
    node-side save, where n1 sees them."""
    directory = Path(tempfile.mkdtemp(prefix="imgsave-config-", dir="/tmp"))
    text = (TOP / "site_configs" / "local.toml").read_text()
    assert 'kind = "podman"' in text and PODMAN_COMMAND in text
    docker = text.replace('kind = "podman"', 'kind = "docker"', 1).replace(
        PODMAN_COMMAND, DOCKER_COMMAND, 1)
    engine = '[engine]\ncommit_method = "engine"\n'
    (directory / "podman-engine.toml").write_text(text.replace("[engine]\n", engine, 1))
    (directory / "docker-streaming.toml").write_text(docker)
    (directory / "docker-engine.toml").write_text(docker.replace("[engine]\n", engine, 1))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)



def pushed_config(repository: str, tag: str) -> tuple[dict[str, Any], bytes]:
    """The image config the registry serves for ``repository:tag``, parsed and raw."""
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest = requests.get(f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
                            headers=accept, timeout=10)
    manifest.raise_for_status()
    digest = manifest.json()["config"]["digest"]
    blob = requests.get(f"http://{REGISTRY}/v2/{repository}/blobs/{digest}", timeout=10)
    blob.raise_for_status()
    return blob.json(), blob.content


def stable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in VOLATILE}


def blobs_holding(secret: str) -> list[str]:
    """Digests of the registry's stored blobs (small ones: configs) holding ``secret``."""
    found = subprocess.run(["grep", "-rlF", "--include=data", secret, str(REGISTRY_BLOBS)],
                           capture_output=True, text=True, timeout=120, check=False).stdout
    return ["sha256:" + Path(p).parent.name for p in found.split()]


def assert_not_served(repository: str, secret: str) -> None:
    """No blob the registry serves in ``repository`` holds ``secret`` (a blob left on
    disk until garbage collection is unreachable through the API)."""
    for digest in blobs_holding(secret):
        r = requests.head(f"http://{REGISTRY}/v2/{repository}/blobs/{digest}", timeout=10)
        assert r.status_code == 404, f"{repository}@{digest} still serves the secret"


def test_a_podman_container_saved_both_ways_gets_one_config(work: Path) -> None:
    require_cluster()
    secret = uuid.uuid4().hex
    name = unique("jupyter-alice-cfg")
    subprocess.run([str(CLUSTER), "session", "n1", "alice", name, *settings(secret)],
                   capture_output=True, text=True, timeout=120, check=True)
    repo = unique("config")
    try:
        job = submit_as("alice", name, f"{repo}:streamed")
        status = wait_final(site(), job, "alice")
        committed = save_on_n1(work, "podman-engine", "alice", name, f"{repo}:committed")
        podman = node_exec("n1", *PODMAN, "commit", "--format", "oci", name,
                           f"localhost/{repo}:podman").stdout
        kept = json.loads(node_exec("n1", *PODMAN, "image", "inspect", podman.strip()).stdout
                          )[0]["Config"]
    finally:
        node_exec("n1", *PODMAN, "rm", "-f", "-t", "0", name, check=False)
        node_exec("n1", *PODMAN, "rmi", "-f", f"localhost/{repo}:podman", check=False)
    assert status.result is not None and status.result.ok, status
    assert status.result.commit_method == "streaming"
    assert status.result.dropped_env == ["FOO_TOKEN"]
    assert status.to_dict()["dropped_env"] == ["FOO_TOKEN"]
    assert committed.ok and committed.commit_method == "engine-commit", committed
    assert committed.dropped_env == ["FOO_TOKEN"]

    streamed, streamed_raw = pushed_config(f"alice/{repo}", "streamed")
    engine, engine_raw = pushed_config(f"alice/{repo}", "committed")
    assert stable(streamed) == stable(engine)
    settings_kept = streamed["config"]
    # what podman's own commit keeps, minus the token and imgsave's owner label
    assert f"FOO_TOKEN={secret}" in kept["Env"]
    assert settings_kept["Env"] == [e for e in kept["Env"] if not e.startswith("FOO_TOKEN=")]
    assert settings_kept["Labels"] == {"team": "bio"} == {
        k: v for k, v in kept["Labels"].items() if k != "imgsave.owner"}
    for key in ("Cmd", "WorkingDir", "User"):
        assert settings_kept[key] == kept[key], key
    assert settings_kept["Cmd"] == ["sleep", "infinity"] and settings_kept["StopSignal"] == "SIGINT"
    for raw in (streamed_raw, engine_raw):
        assert secret.encode() not in raw and b"FOO_TOKEN" not in raw
        assert b"imgsave.owner" not in raw
    assert_not_served(f"alice/{repo}", secret)
    assert blobs_holding(secret), "the engine's config did reach the registry's disk"


@pytest.fixture
def docker_up() -> None:
    require_cluster()
    subprocess.run([str(TOP / "scripts" / "engines.sh"), "up"], capture_output=True,
                   text=True, timeout=900, check=True)


def test_a_docker_container_saved_both_ways_gets_one_config(work: Path, docker_up: None
                                                            ) -> None:
    secret = uuid.uuid4().hex
    name = unique("dock-alice-cfg")
    node_exec("n1", *DOCKER, "run", "-d", "--name", name, "--label", "imgsave.owner=alice",
              "--network", "none", *settings(secret), "--expose", "8888",
              "localhost/imgsave-base:latest", "sleep", "infinity")
    repo = unique("docker-config")
    try:
        streamed = save_on_n1(work, "docker-streaming", "alice", name, f"{repo}:streamed")
        committed = save_on_n1(work, "docker-engine", "alice", name, f"{repo}:committed")
    finally:
        node_exec("n1", *DOCKER, "rm", "-f", name, check=False)
    assert streamed.ok and streamed.commit_method == "streaming", streamed
    assert committed.ok and committed.commit_method == "engine-commit", committed
    assert streamed.dropped_env == committed.dropped_env == ["FOO_TOKEN"]
    one, one_raw = pushed_config(f"alice/{repo}", "streamed")
    other, other_raw = pushed_config(f"alice/{repo}", "committed")
    assert stable(one) == stable(other)
    assert one["config"] == {
        "User": "0:0", "ExposedPorts": {"8888/tcp": {}}, "Env": ["MYVAR=hello", "PATH=/bin"],
        "Cmd": ["sleep", "infinity"], "WorkingDir": "/opt", "Labels": {"team": "bio"},
        "StopSignal": "SIGINT",
    }  # fmt: skip
    assert "container_config" not in other  # docker's copy of the container's env
    for raw in (one_raw, other_raw):
        assert secret.encode() not in raw and b"FOO_TOKEN" not in raw
    assert_not_served(f"alice/{repo}", secret)
