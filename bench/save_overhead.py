"""Save overhead: an imgsave save through Slurm vs bare ``podman commit && podman push``.

Both save the same container (a ~200 MB pip-install-like diff) on node n1 of the local
cluster, alternating, so machine noise hits both alike. Before every run a small file
in the container changes, so each run commits and pushes a new layer.

    .venv/bin/python bench/save_overhead.py [--runs 5] [--mb 200] [--update-docs]

Prints a table; with --update-docs rewrites the "Save overhead" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from api.service import SaveRequest  # noqa: E402
from bench.docs_table import replace_section  # noqa: E402
from tests.cluster_helpers import (  # noqa: E402
    REGISTRY,
    node_exec,
    require_cluster,
    session_container,
    site,
    unique,
)

NODE = "n1"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]

# A pip-install-like diff: many small files, some large ones, half compressible.
FILL_SCRIPT = r"""
set -e
root=/opt/conda/lib/python3.11/site-packages
mb=$1
i=0
while [ $i -lt $mb ]; do
    d=$root/pkg$i; mkdir -p $d
    j=0
    while [ $j -lt 20 ]; do
        head -c 25000 /dev/urandom > $d/mod$j.so
        yes "def f$j(x): return x * $i  # generated module" | head -c 25000 > $d/mod$j.py
        j=$((j + 1))
    done
    i=$((i + 1))
done
"""


def imgsave_save(container: str, repo: str, tag: str) -> float:
    s = site()
    start = time.perf_counter()
    submitted = s.saves.submit(SaveRequest("alice", container, f"{repo}:{tag}", node=NODE))
    while True:
        (status,) = s.saves.status([submitted.job_id], "alice")
        if status.finished:
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    if status.reason:
        raise RuntimeError(f"imgsave save failed: {status.reason}")
    return elapsed


def bare_save(container: str, repo: str, tag: str) -> float:
    local = f"localhost/bench-bare:{tag}"
    start = time.perf_counter()
    node_exec(NODE, *PODMAN, "commit", "-q", container, local)
    node_exec(NODE, *PODMAN, "push", "-q", "--tls-verify=false", local,
              f"docker://{REGISTRY}/{repo}:{tag}")
    elapsed = time.perf_counter() - start
    node_exec(NODE, *PODMAN, "rmi", "-f", local, check=False)
    return elapsed


def touch(container: str, run: int) -> None:
    node_exec(NODE, "podman", "exec", container, "sh", "-c",
              'echo "$1" > /opt/conda/run-marker', "sh", str(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    require_cluster()
    ours: list[float] = []
    bare: list[float] = []
    repo_ours, repo_bare = unique("alice/bench-imgsave"), unique("alice/bench-bare")
    with session_container(NODE, "alice") as container:
        node_exec(NODE, "podman", "exec", container, "sh", "-c", FILL_SCRIPT, "sh",
                  str(args.mb))
        size = node_exec(NODE, "podman", "exec", container, "du", "-sm", "/opt/conda").stdout
        print(f"diff in the container: {size.split()[0]} MB", flush=True)
        # one untimed warm-up of each: the base layer reaches the registry once
        touch(container, 0)
        imgsave_save(container, repo_ours, "warm")
        bare_save(container, repo_bare, "warm")
        for run in range(1, args.runs + 1):
            order = [("imgsave", imgsave_save, repo_ours, ours), ("bare", bare_save,
                                                                  repo_bare, bare)]
            if run % 2 == 0:
                order.reverse()
            for name, func, repo, times in order:
                touch(container, run)
                seconds = func(container, repo, f"r{run}")
                times.append(seconds)
                print(f"run {run} {name}: {seconds:.2f} s", flush=True)
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    table = "\n".join([
        "| what | median s | runs |",
        "|---|---|---|",
        f"| imgsave save through Slurm (submit → status done) | {m_ours:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in ours)} |",
        f"| bare `podman commit && podman push` | {m_bare:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in bare)} |",
        "",
        f"**Ratio imgsave / bare: {m_ours / m_bare:.2f}x; added time "
        f"{m_ours - m_bare:+.2f} s** (target: under 1.3x and under 1.5 s).",
    ])
    print(table)
    if args.update_docs:
        command = (f".venv/bin/python bench/save_overhead.py --runs {args.runs} --mb {args.mb}"
                   " --update-docs")
        replace_section(TOP / "docs" / "benchmarks.md", "Save overhead",
                        f"A ~{args.mb} MB diff on n1, {args.runs} alternating runs each.\n\n"
                        f"    {command}\n\n{table}\n")


if __name__ == "__main__":
    main()
