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
Through Slurm (site_configs/local.toml lists containerd and docker as
``[[engine.others]]`` after podman): alice's session under containerd (``ctr``; from the
base pulled from the registry, as on a Kubernetes node) and under docker each saves as
OCI and SIF with ``imgsave submit``; the image pulled on n2 holds exactly the
container's tree; bob is refused; a failed save resumes the container; a containerd
base that is not in the registry is pushed from containerd's content store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from builder_jobs.events import FailureKind
from scheduler_glue.states import JobState
from tests.support.cluster_helpers import (
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

pytestmark = pytest.mark.cluster
ENGINES = Path(__file__).resolve().parents[2] / "scripts" / "engines.sh"
DOCKER = ["docker", "-H", "unix:///run/docker/docker.sock"]
CTR = ["ctr", "-n", "k8s.io"]


def host_links() -> list[str]:
    """The host's network links, but the veths of podman's bridge: those come and go
    with podman containers other tests start meanwhile."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines()
                  if "master cni-podman" not in line)


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



# an afternoon's changes: new files with their own owners and modes, a deleted base file
# (a whiteout), a directory replaced by a new one (opaque), a symlink
CHANGES = ("mkdir -p /opt/work && echo afternoon > /opt/work/notes && chmod 640 /opt/work/notes"
           " && chown 1000:100 /opt/work/notes && ln -s notes /opt/work/link"
           " && rm /etc/imgsave-base && rm -rf /home/jovyan && mkdir -m 750 /home/jovyan"
           " && touch /home/jovyan/fresh")
# (/etc/hosts, hostname, resolv.conf are the running container's, mounted by podman,
# which also adds the /etc/mtab link when it runs an image)
TREE = ("find /opt /home /etc -xdev ! -path /etc/hosts ! -path /etc/hostname"
        " ! -path /etc/resolv.conf ! -path /etc/mtab | sort"
        " | xargs stat -c '%n %A %u:%g %s %N'")


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


# --- saves through Slurm: alice runs `imgsave submit`, the job enters the node's one
# privileged entry, which finds her container under containerd or docker ([[engine.others]]
# in site_configs/local.toml) -------------------------------------------------------------

EXEC = {"containerd": lambda name, *argv: [*CTR, "tasks", "exec", "--exec-id", unique("x"),
                                          name, *argv],
        "docker": lambda name, *argv: [*DOCKER, "exec", name, *argv]}


@pytest.fixture(params=["containerd", "docker"])
def engine_session(request: pytest.FixtureRequest, engines: list[str]) -> Iterator[tuple[str, str]]:
    """alice's session under each engine on n1 (containerd's from the image pulled from
    the registry, as on a Kubernetes node; docker's from the loaded archive)."""
    engine, name = str(request.param), unique(f"{request.param[:4]}-alice")
    subprocess.run([str(ENGINES), "session", "n1", "alice", name, engine],
                   capture_output=True, text=True, timeout=120, check=True)
    try:
        yield engine, name
    finally:
        remove_session(engine, name)


def remove_session(engine: str, name: str) -> None:
    if engine == "docker":
        node_exec("n1", *DOCKER, "rm", "-f", name, check=False)
        return
    node_exec("n1", *CTR, "tasks", "kill", "-s", "KILL", name, check=False)
    for _ in range(20):  # the task must have exited before it can be deleted
        if node_exec("n1", *CTR, "tasks", "delete", name, check=False).returncode == 0:
            break
        time.sleep(0.25)
    node_exec("n1", *CTR, "containers", "delete", name, check=False)


def running_unpaused(engine: str, name: str) -> bool:
    if engine == "docker":
        state = json.loads(node_exec("n1", *DOCKER, "inspect", name).stdout)[0]["State"]
        return bool(state["Running"]) and not state["Paused"]
    tasks = node_exec("n1", *CTR, "tasks", "ls").stdout.splitlines()
    return any(line.split()[:1] == [name] and line.split()[2] == "RUNNING" for line in tasks)


def test_a_session_under_each_engine_saves_through_slurm(
    engine_session: tuple[str, str], tmp_path: Path,
) -> None:
    """alice saves her containerd / docker session through Slurm as OCI and SIF: the
    image, pulled on n2, holds exactly the container's tree (owners, modes, the deleted
    file's whiteout, the replaced directory's opaque marker, a symlink); the SIF holds it
    too; the container runs on; bob's save of it is refused without naming its owner."""
    engine, name = engine_session
    node_exec("n1", *EXEC[engine](name, "sh", "-c", CHANGES))
    own_tree = node_exec("n1", *EXEC[engine](name, "sh", "-c", TREE)).stdout
    s = site()
    repo = unique(f"alice/{engine}-slurm")
    status = wait_final(s, submit_as("alice", name, f"{repo}:v1", "--format", "oci,sif"),
                        "alice")
    assert status.state is JobState.COMPLETED, status.reason
    assert status.result is not None and status.result.commit_method == "streaming"
    assert running_unpaused(engine, name)
    assert tree_of(f"{REGISTRY}/{repo}:v1") == own_tree
    assert "/opt/work/notes -rw-r----- 1000:100 10" in own_tree
    assert "/etc/imgsave-base" not in own_tree and "/home/jovyan/fresh" in own_tree

    sif = Path(status.result.sif_path)
    part = tmp_path / "part.sqfs"
    with part.open("wb") as out:
        subprocess.run(["siftool", "dump", "1", str(sif)], stdout=out, check=True)
    files = subprocess.run(["unsquashfs", "-lln", str(part)], capture_output=True, text=True,
                           check=True).stdout
    assert "squashfs-root/home/jovyan/fresh" in files
    assert "squashfs-root/etc/imgsave-base" not in files
    notes = next(line for line in files.splitlines() if line.endswith("/opt/work/notes"))
    assert notes.split()[:2] == ["-rw-r-----", "1000/100"]
    sif.unlink()

    refused = wait_final(s, submit_as("bob", name, f"bob/{unique('stolen')}:v1"), "bob")
    assert refused.state is JobState.FAILED
    assert "not labelled imgsave.owner=bob" in refused.reason
    assert "owner=alice" not in refused.reason  # the owner is never named
    assert running_unpaused(engine, name)


@pytest.fixture
def engine_site(docker_site: Path) -> Path:
    """Site configs for the node-side save: containerd's own, and one with a 1-byte limit."""
    text = (docker_site / "streaming.toml").read_text()
    tiny = text.replace("max_image_bytes = 10737418240", "max_image_bytes = 1", 1)
    assert tiny != text
    (docker_site / "tiny.toml").write_text(tiny)
    return docker_site


@pytest.mark.parametrize("engine", ["containerd", "docker"])
def test_a_failed_save_leaves_the_container_running(engine: str, engine_site: Path) -> None:
    """A save that fails after the container was paused (the image would pass the site's
    size limit as soon as the read begins) resumes it; nothing is tagged."""
    name = unique(f"{engine[:4]}-alice")
    subprocess.run([str(ENGINES), "session", "n1", "alice", name, engine],
                   capture_output=True, text=True, timeout=120, check=True)
    try:
        node_exec("n1", *EXEC[engine](name, "sh", "-c", "echo x > /opt/x"))
        repo = unique(f"{engine}-big")
        failed = save_on_n1(engine_site, "tiny", "alice", name, f"{repo}:v1")
        assert not failed.ok and failed.failure is FailureKind.SIZE_LIMIT, failed
        assert running_unpaused(engine, name)
        tags = requests.get(f"http://{REGISTRY}/v2/alice/{repo}/tags/list", timeout=10)
        assert tags.status_code == 404 or not tags.json().get("tags")
    finally:
        remove_session(engine, name)


def test_a_containerd_base_not_in_the_registry_is_pushed_from_its_content_store(
    engine_site: Path,
) -> None:
    """A session from an image imported into containerd (not pulled from the registry):
    its base is sent once from containerd's content store, the helper tag removed."""
    name = unique("ctr-alice")
    subprocess.run([str(ENGINES), "session", "n1", "alice", name, "containerd",
                    "localhost/imgsave-base:latest"],
                   capture_output=True, text=True, timeout=120, check=True)
    try:
        node_exec("n1", *EXEC["containerd"](name, "sh", "-c", "echo local > /opt/local"))
        repo = unique("ctr-local")
        saved = save_on_n1(engine_site, "streaming", "alice", name, f"{repo}:v1")
        assert saved.ok and saved.commit_method == "streaming", saved
        tags = requests.get(f"http://{REGISTRY}/v2/alice/{repo}/tags/list", timeout=10).json()
        assert tags["tags"] == ["v1"]  # the base's helper tag is gone
        image = f"{REGISTRY}/alice/{repo}:v1"
        try:
            out = node_exec("n2", "podman", "run", "--rm", "--network", "none",
                            "--tls-verify=false", image, "cat", "/opt/local").stdout
        finally:
            node_exec("n2", "podman", "rmi", "-f", image, check=False)
        assert out == "local\n"
    finally:
        remove_session("containerd", name)
