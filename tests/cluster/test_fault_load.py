"""Load as a fault (issue 11): a hundred saves queued at once, on the real local cluster.

Every one completes, no container is left paused, every image is in the registry, and
each node's disk holds what it held before: the same podman layers and images, no
record in the node's state directory, no SIF work directory. Saves are alice's own
(CLI mode), with a site config whose in-flight limit lets all hundred queue.
"""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.cluster_helpers import (
    IMGSAVE,
    REGISTRY,
    TOP,
    as_user,
    node_exec,
    require_cluster,
    unique,
)

pytestmark = pytest.mark.cluster
SAVES = 100
NODES = ("n1", "n2")
BASE_IMAGE = "localhost/imgsave-base:latest"


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


def config_allowing(saves: int) -> Path:
    text = (TOP / "site_configs" / "local.toml").read_text()
    assert "max_saves_in_flight_per_user = 8" in text
    config = Path(tempfile.mkdtemp(prefix="imgsave-config-", dir="/tmp")) / "site.toml"
    config.parent.chmod(0o755)
    config.write_text(text.replace("max_saves_in_flight_per_user = 8",
                                   f"max_saves_in_flight_per_user = {saves}"))
    config.chmod(0o644)
    return config


def node_footprint(node: str) -> dict[str, object]:
    """What a save could leave on a node: podman's layers and images, the entry's
    records and locks, temporary SIF work directories, and the layers' bytes."""
    script = (
        "cd /var/lib/containers/storage/overlay && ls | sort | tr '\\n' ' '; echo; "
        "du -sb /var/lib/containers/storage/overlay | cut -f1; "
        "ls /var/lib/imgsave-node/jobs | wc -l; "
        "ls -d /tmp/imgsave-sif-* 2>/dev/null | wc -l"
    )
    layers, size, records, sif = node_exec(node, "sh", "-c", script).stdout.splitlines()
    images = node_exec(node, "podman", "images", "-a", "--format", "{{.ID}} {{.Repository}}")
    return {"layers": layers.split(), "bytes": int(size), "records": int(records),
            "sif_dirs": int(sif), "images": sorted(images.stdout.splitlines())}


def start_containers(node: str, names: list[str]) -> None:
    """alice's session containers, each with a 1 MiB afternoon of work of its own."""
    loop = " ".join(names)
    node_exec(node, "sh", "-c",
              f"for n in {loop}; do podman run -d --name $n --label imgsave.owner=alice "
              f"--network none {BASE_IMAGE} sh -c 'dd if=/dev/urandom of=/opt/work bs=1M "
              "count=1 2>/dev/null; sleep infinity' >/dev/null || exit 1; done")


def remove_containers(node: str, names: list[str]) -> None:
    node_exec(node, "podman", "rm", "-f", "-t", "0", *names, check=False)


def test_a_hundred_saves_queued_at_once_all_complete_and_leave_the_nodes_as_they_were(
) -> None:
    marker = unique("hundred")
    names = {n: [f"{marker}-{n}-{i}" for i in range(SAVES // len(NODES))] for n in NODES}
    config = config_allowing(SAVES)
    try:
        with ThreadPoolExecutor(max_workers=len(NODES)) as pool:
            list(pool.map(lambda n: start_containers(n, names[n]), NODES))
        time.sleep(1)  # every container has written its file
        before = {n: node_footprint(n) for n in NODES}

        def submit(pair: tuple[str, str]) -> str:
            node, name = pair
            done = as_user("alice", IMGSAVE, "--config", str(config), "--json", "submit",
                           name, f"{name}:v1", "--node", node, check=False)
            assert done.returncode == 0, done.stderr
            return str(json.loads(done.stdout)["job_id"])

        pairs = [(n, name) for n in NODES for name in names[n]]
        with ThreadPoolExecutor(max_workers=8) as pool:
            jobs = list(pool.map(submit, pairs))
        assert len(set(jobs)) == SAVES
        statuses = _wait_all_final(config, jobs, timeout=900)
        after = {n: node_footprint(n) for n in NODES}
        running = {n: node_exec(n, "podman", "ps", "-q", "--filter", f"name={marker}",
                                "--filter", "status=running").stdout.split() for n in NODES}
    finally:
        for node in NODES:
            remove_containers(node, names[node])
    assert [s for s in statuses if s["state"] != "completed"] == [], [
        (s["job_id"], s["state"], s["reason"]) for s in statuses if s["state"] != "completed"]
    assert all(s["digest"].startswith("sha256:") for s in statuses)
    for node in NODES:
        assert len(running[node]) == SAVES // len(NODES), running[node]  # none paused
        assert after[node] == before[node], (node, before[node], after[node])
    for _, name in pairs[:: SAVES // 10]:  # a sample of the pushed images
        tags = requests.get(f"http://{REGISTRY}/v2/alice/{name}/tags/list", timeout=10)
        assert tags.json()["tags"] == ["v1"], tags.text


def _wait_all_final(config: Path, jobs: list[str], timeout: float) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        shown = as_user("alice", IMGSAVE, "--config", str(config), "--json", "status", *jobs)
        statuses: list[dict[str, str]] = json.loads(shown.stdout)
        if all(s["final"] for s in statuses):
            return statuses
        waiting = [s["job_id"] for s in statuses if not s["final"]]
        assert time.monotonic() < deadline, f"not final after {timeout:.0f} s: {waiting}"
        time.sleep(5)
