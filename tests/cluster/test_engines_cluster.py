"""containerd and Docker on the local cluster's nodes (issue 14's ground): each node's own
daemons, started by ``scripts/engines.sh`` inside the node's mount namespace.

What the engine work builds on, checked for real: a user's session container under
each engine lives on its node only, carries its owner label, and its writable layer
(containerd's overlayfs snapshot, Docker's overlay2 ``UpperDir``) is a directory the
node sees and the host does not; podman on the same node and the host's network are
left as they were. Saving such containers through imgsave is not built yet.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_helpers import node_exec, require_cluster, unique

pytestmark = pytest.mark.cluster
ENGINES = Path(__file__).resolve().parents[2] / "scripts" / "engines.sh"
DOCKER = ["docker", "-H", "unix:///run/docker/docker.sock"]
CTR = ["ctr", "-n", "k8s.io"]


def host_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


@pytest.fixture(scope="module")
def engines() -> Iterator[list[str]]:
    """Both daemons up on every node; the host's network links before they started."""
    require_cluster()
    before = host_links()
    subprocess.run([str(ENGINES), "up"], capture_output=True, text=True, timeout=900,
                   check=True)
    yield before


@pytest.fixture
def containerd_session(engines: list[str]) -> Iterator[str]:
    name = unique("ctr-alice")
    subprocess.run([str(ENGINES), "session", "n1", "alice", name, "containerd"],
                   capture_output=True, text=True, timeout=120, check=True)
    try:
        yield name
    finally:
        node_exec("n1", *CTR, "tasks", "kill", "-s", "KILL", name, check=False)
        node_exec("n1", *CTR, "tasks", "delete", "-f", name, check=False)
        node_exec("n1", *CTR, "containers", "delete", name, check=False)


@pytest.fixture
def docker_session(engines: list[str]) -> Iterator[str]:
    name = unique("dock-alice")
    subprocess.run([str(ENGINES), "session", "n1", "alice", name, "docker"],
                   capture_output=True, text=True, timeout=120, check=True)
    try:
        yield name
    finally:
        node_exec("n1", *DOCKER, "rm", "-f", name, check=False)


def upper_dir_of_snapshot(name: str) -> Path:
    """containerd: the container's snapshot, as the overlay mount options name it."""
    info = json.loads(node_exec("n1", *CTR, "containers", "info", name).stdout)
    assert info["Snapshotter"] == "overlayfs"
    mount = node_exec("n1", *CTR, "snapshots", "--snapshotter", "overlayfs", "mounts", "/mnt",
                      info["SnapshotKey"]).stdout
    options = dict(o.split("=", 1) for o in mount.split(" -o ", 1)[1].split(",") if "=" in o)
    return Path(options["upperdir"].strip())


def test_a_containerd_session_is_node_local_with_its_owner_and_upper_dir(
    containerd_session: str,
) -> None:
    name = containerd_session
    info = json.loads(node_exec("n1", *CTR, "containers", "info", name).stdout)
    assert info["Labels"]["imgsave.owner"] == "alice"
    tasks = node_exec("n1", *CTR, "tasks", "ls").stdout
    assert any(line.split()[:1] == [name] and "RUNNING" in line for line in tasks.splitlines())
    assert name not in node_exec("n2", *CTR, "containers", "ls", "-q").stdout
    upper = upper_dir_of_snapshot(name)
    node_exec("n1", *CTR, "tasks", "exec", "--exec-id", unique("w"), name, "sh", "-c",
              "echo afternoon > /opt/installed")
    seen = node_exec("n1", "cat", str(upper / "opt" / "installed")).stdout
    assert seen == "afternoon\n"
    assert not (upper / "opt" / "installed").exists()  # the host does not see it
    # pause and resume, as a save's read does
    node_exec("n1", *CTR, "tasks", "pause", name)
    assert "PAUSED" in node_exec("n1", *CTR, "tasks", "ls").stdout
    node_exec("n1", *CTR, "tasks", "resume", name)


def test_a_docker_session_is_node_local_with_its_owner_and_upper_dir(
    docker_session: str,
) -> None:
    name = docker_session
    inspected = json.loads(node_exec("n1", *DOCKER, "inspect", name).stdout)[0]
    assert inspected["Config"]["Labels"]["imgsave.owner"] == "alice"
    assert inspected["State"]["Running"] and inspected["GraphDriver"]["Name"] == "overlay2"
    assert node_exec("n2", *DOCKER, "ps", "-a", "-q", "--filter", f"name={name}").stdout == ""
    upper = Path(inspected["GraphDriver"]["Data"]["UpperDir"])
    node_exec("n1", *DOCKER, "exec", name, "sh", "-c", "echo afternoon > /opt/installed")
    assert node_exec("n1", "cat", str(upper / "opt" / "installed")).stdout == "afternoon\n"
    assert not (upper / "opt" / "installed").exists()


def test_the_engines_leave_podman_and_the_hosts_network_alone(engines: list[str]) -> None:
    assert host_links() == engines  # no docker0 bridge, no veth: --bridge=none
    out = node_exec("n1", "podman", "images", "--format", "{{.Repository}}").stdout
    assert "localhost/imgsave-base" in out.split()
