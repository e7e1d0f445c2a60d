"""Warm-ups on the local cluster: two different images to two nodes in parallel, vs one
after the other, vs one node pulling both, vs a bare ``podman pull`` of both on one
node; alternating, in one run (issue 13; a benchmark, not a timed test).

Each image is the site's busybox base plus one layer of incompressible data (``--mb``
MB), pushed once into alice's namespace. Before every measured run the images are
removed from both nodes, so every run really pulls. Each mode is timed from the user's
command to its end (``imgsave --json warmup ... --wait`` as alice: submit, the
scheduler's hop, the node's entry, the pulls, the CLI's 1 s status polls):

- parallel:   ``--plan`` (n1: image 1, n2: image 2), one warm-up, two jobs at once
- sequential: image 1 on n1 ``--wait``, then image 2 on n2 ``--wait``
- one node:   both images on n1 in one warm-up
- bare pull:  ``podman pull`` of both on n1 as root, no scheduler (the floor)

    .venv/bin/python bench/warmup.py [--runs 3] [--mb 100]

Needs root and the local cluster (scripts/cluster.sh up; the runtime installed). The
local cluster has two nodes sharing the machine's cores and disk: the 4-node figures
and the model of time for N nodes and registry bandwidth B (issue 13) are not done.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
REGISTRY = "127.0.0.1:5000"
CLUSTER = TOP / "scripts" / "cluster.sh"
IMGSAVE = "/opt/imgsave/venv/bin/imgsave"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
BASE = f"{REGISTRY}/library/imgsave-base:latest"


def run(*argv: str, timeout: float = 900) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def make_images(count: int, mb: int) -> list[str]:
    """``count`` images: the base plus ``mb`` MB of random data each, pushed as alice's."""
    tag = uuid.uuid4().hex[:8]
    run(*PODMAN, "pull", "--tls-verify=false", "--quiet", BASE)
    images = []
    for i in range(1, count + 1):
        name = f"alice/bench-warm{i}-{tag}:v1"
        container = f"bench-warm-{tag}-{i}"
        run(*PODMAN, "run", "--name", container, BASE, "sh", "-c",
            f"head -c {mb * 1024 * 1024} /dev/urandom > /data.bin")
        run(*PODMAN, "commit", "--quiet", container, f"{REGISTRY}/{name}")
        run(*PODMAN, "push", "--tls-verify=false", "--quiet", f"{REGISTRY}/{name}")
        run(*PODMAN, "rm", container)
        run(*PODMAN, "rmi", f"{REGISTRY}/{name}")
        images.append(name)
    return images


def forget(images: list[str]) -> None:
    for node in ("n1", "n2"):
        subprocess.run([str(CLUSTER), "node-exec", node, "podman", "rmi", "-f",
                        *(f"{REGISTRY}/{i}" for i in images)],
                       capture_output=True, timeout=300, check=False)  # fmt: skip


def warmup_as_alice(*args: str) -> None:
    run("runuser", "-u", "alice", "--", IMGSAVE, "--json", "warmup", *args, "--wait")


def modes(images: list[str], plan: Path) -> dict[str, Callable[[], None]]:
    first, second = images

    def parallel() -> None:
        warmup_as_alice("--plan", str(plan))

    def sequential() -> None:
        warmup_as_alice(first, "--nodes", "n1")
        warmup_as_alice(second, "--nodes", "n2")

    def one_node() -> None:
        warmup_as_alice(first, second, "--nodes", "n1")

    def bare_pull() -> None:
        for image in images:
            run(str(CLUSTER), "node-exec", "n1", "podman", "pull", "--quiet",
                "--tls-verify=false", f"{REGISTRY}/{image}")

    return {"parallel (2 nodes, 1 warm-up)": parallel, "sequential (n1, then n2)": sequential,
            "one node (both on n1)": one_node, "bare podman pull (both on n1)": bare_pull}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    images = make_images(2, args.mb)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(f'[[warmup]]\nnodes = "n1"\nimages = ["{images[0]}"]\n'
                 f'[[warmup]]\nnodes = "n2"\nimages = ["{images[1]}"]\n')
    plan = Path(fh.name)
    plan.chmod(0o644)
    timed: dict[str, list[float]] = {}
    all_modes = list(modes(images, plan).items())
    try:
        for round_number in range(args.runs):
            shift = round_number % len(all_modes)  # alternate the order round by round
            for name, action in all_modes[shift:] + all_modes[:shift]:
                forget(images)
                started = time.perf_counter()
                action()
                timed.setdefault(name, []).append(time.perf_counter() - started)
    finally:
        forget(images)
        plan.unlink()
    sequential = statistics.median(timed["sequential (n1, then n2)"])
    print(f"two images of base + {args.mb} MB random, {args.runs} runs, alternating\n")
    print("| mode | median (s) | min (s) | max (s) | ÷ sequential |")
    print("|---|---|---|---|---|")
    for name, values in timed.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"**{median / sequential:.2f}x** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
