"""containerd and Docker on the local cluster's nodes (issue 14's ground): each node's own
daemons, started by ``scripts/engines.sh`` inside the node's mount namespace.

What the engine work builds on, checked for real: a user's session container under
each engine lives on its node only, carries its owner label, and its writable layer
(containerd's overlayfs snapshot, Docker's overlay2 ``UpperDir``) is a directory the
node sees and the host does not; podman on the same node and the host's network are
left as they were. Saving under docker runs for real here, both ways (the streaming
commit from overlay2's upper dir, and docker's commit + push), as the node-side save
run as root inside n1 with a site config naming the docker engine (through Slurm every
node uses the one site config, which is podman's here): both give the same file tree.
imgsave's containerd engine is not built yet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from builder_jobs.events import FailureKind, SaveResult
from builder_jobs.spec import RESULT_FILE, SPEC_FILE, SaveSpec
from site_configs.schema import ImageFormat
from tests.support.cluster_helpers import REGISTRY, TOP, node_exec, require_cluster, unique

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


PODMAN_COMMAND = 'command = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]'
DOCKER_COMMAND = 'command = ["docker", "-H", "unix:///run/docker/docker.sock"]'


@pytest.fixture
def docker_site() -> Iterator[Path]:
    """Site configs naming the docker engine (the node's socket), streaming and engine
    commit, and a spool for the node-side save, all where n1 sees them."""
    work = Path(tempfile.mkdtemp(prefix="imgsave-docker-", dir="/tmp"))
    text = (TOP / "site_configs" / "local.toml").read_text()
    assert 'kind = "podman"' in text and PODMAN_COMMAND in text
    text = text.replace('kind = "podman"', 'kind = "docker"', 1).replace(PODMAN_COMMAND,
                                                                       DOCKER_COMMAND, 1)
    (work / "streaming.toml").write_text(text)
    (work / "engine.toml").write_text(text.replace("[engine]\n",
                                                   '[engine]\ncommit_method = "engine"\n', 1))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save_on_n1(work: Path, method: str, user: str, container: str, target: str) -> SaveResult:
    """``python -m builder_jobs.node_save`` as root inside n1 (what the privileged entry
    runs after its checks), for ``user``'s request, with the ``method`` config."""
    spec = SaveSpec(request_id=uuid.uuid4().hex, user=user, container=container,
                    target=f"{REGISTRY}/{user}/{target}", formats=(ImageFormat.OCI,),
                    category="cpu", node="n1", site_config=str(work / f"{method}.toml"),
                    created="2026-11-30T06:00:00+00:00")
    directory = work / spec.request_id
    directory.mkdir()
    (directory / SPEC_FILE).write_text(spec.to_json())
    node_exec("n1", "env", "IMGSAVE_NODE=n1", "IMGSAVE_JOB_ID=0",
              "/opt/imgsave/venv/bin/python", "-I", "-m", "builder_jobs.node_save",
              str(directory / SPEC_FILE), check=False)
    return SaveResult.from_json((directory / RESULT_FILE).read_text())


# an afternoon's changes: new files with their own owners and modes, a deleted base file
# (a whiteout), a directory replaced by a new one (opaque), a symlink
CHANGES = ("mkdir -p /opt/work && echo afternoon > /opt/work/notes && chmod 640 /opt/work/notes"
           " && chown 1000:100 /opt/work/notes && ln -s notes /opt/work/link"
           " && rm /etc/imgsave-base && rm -rf /home/jovyan && mkdir -m 750 /home/jovyan"
           " && touch /home/jovyan/fresh")
# (/etc/hosts, hostname, resolv.conf are the running container's, mounted by podman)
TREE = ("find /opt /home /etc -xdev ! -path /etc/hosts ! -path /etc/hostname"
        " ! -path /etc/resolv.conf | sort | xargs stat -c '%n %A %u:%g %s %N'")


def tree_of(image: str) -> str:
    """The image's tree, pulled and run on n2 with podman (then removed from n2 again)."""
    try:
        return node_exec("n2", "podman", "run", "--rm", "--network", "none",
                         "--tls-verify=false", image, "sh", "-c", TREE).stdout
    finally:
        node_exec("n2", "podman", "rmi", "-f", image, check=False)


def test_a_docker_container_is_saved_both_ways_with_the_same_tree(
    docker_session: str, docker_site: Path,
) -> None:
    """alice's container under dockerd, saved by the streaming commit (overlay2's upper
    dir) and by docker's commit + push: both images pull and run on n2 under podman and
    hold the same tree (owners, modes, the whiteout, the opaque directory); the container
    runs on, docker keeps no temporary or helper names; bob's save is refused."""
    name = docker_session
    node_exec("n1", *DOCKER, "exec", name, "sh", "-c", CHANGES)
    repo = unique("docker-env")
    streamed = save_on_n1(docker_site, "streaming", "alice", name, f"{repo}:streamed")
    committed = save_on_n1(docker_site, "engine", "alice", name, f"{repo}:committed")
    assert streamed.ok and streamed.commit_method == "streaming", streamed
    assert committed.ok and committed.commit_method == "engine-commit", committed
    state = json.loads(node_exec("n1", *DOCKER, "inspect", name).stdout)[0]["State"]
    assert state["Running"] and not state["Paused"]
    tree = tree_of(f"{REGISTRY}/alice/{repo}:streamed")
    assert tree == tree_of(f"{REGISTRY}/alice/{repo}:committed")
    assert "/opt/work/notes -rw-r----- 1000:100 10" in tree and "/etc/imgsave-base" not in tree
    assert "/home/jovyan/fresh" in tree and "drwxr-x---" in tree
    images = node_exec("n1", *DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert [i for i in images.split() if "imgsave-tmp" in i or "imgsave-base-" in i] == []

    refused = save_on_n1(docker_site, "streaming", "bob", name, f"{repo}:stolen")
    assert not refused.ok and refused.failure is FailureKind.NOT_OWNER, refused
    assert "owner=alice" not in refused.error  # the owner is never named
    tags = requests.get(f"http://{REGISTRY}/v2/bob/{repo}/tags/list", timeout=10)
    assert tags.status_code == 404 or not tags.json().get("tags")


def test_users_get_neither_docker_nor_ctr_on_a_node(engines: list[str]) -> None:
    """The daemons' sockets are root's (docker's group has no users): alice and bob
    reach their containers only through imgsave's one privileged entry."""
    for user in ("alice", "bob"):
        docker = node_exec("n1", "runuser", "-u", user, "--", *DOCKER, "ps", check=False)
        ctr = node_exec("n1", "runuser", "-u", user, "--", *CTR, "containers", "ls",
                        check=False)
        assert docker.returncode != 0 and "permission denied" in docker.stderr, docker
        assert ctr.returncode != 0 and "permission denied" in ctr.stderr, ctr
