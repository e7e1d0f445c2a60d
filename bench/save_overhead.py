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
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from api.service.site import Site  # noqa: E402
from bench.as_users import site_config, submit_as  # noqa: E402
from bench.docs_table import replace_section  # noqa: E402
from builder_jobs.spec import RESULT_FILE, spool_dir_for  # noqa: E402
from site_configs.schema import load_site_config  # noqa: E402
from tests.support.cluster_helpers import (  # noqa: E402
    REGISTRY,
    node_exec,
    require_cluster,
    session_container,
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


LOCAL_TEXT = (TOP / "site_configs" / "local.toml").read_text()


def engine_config_text() -> str:
    """The local site with the engine's commit forced (no streaming)."""
    return LOCAL_TEXT.replace("[engine]\n", '[engine]\ncommit_method = "engine"\n', 1)


def imgsave_save(container: str, repo: str, tag: str, text: str = LOCAL_TEXT) -> float:
    """alice submits (the CLI, as users do) with ``text`` as the site config of the CLI
    and of the node, then wait for the node's result file (a cheap stat every 50 ms:
    polling sacct/squeue that often would load the 2 cores the save runs on) and ask the
    status until it says the save is over."""
    with site_config(text) as config:
        return _timed_save(container, repo, tag, config)


def _timed_save(container: str, repo: str, tag: str, config: Path) -> float:
    s = Site(load_site_config(config))
    start = time.perf_counter()
    job_id, request_id = submit_as("alice", config, container, f"{repo}:{tag}", NODE)
    result = spool_dir_for(s.config.spool_for("alice"), request_id) / RESULT_FILE
    while not result.exists() and time.perf_counter() - start < 600:
        time.sleep(0.05)
    while True:
        (status,) = s.saves.status([job_id], "alice")
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
    engine = engine_config_text()
    cases: list[tuple[str, Callable[[str, str, str], float]]] = [
        ("imgsave (auto: streaming commit)", lambda c, r, t: imgsave_save(c, r, t)),
        ("imgsave (engine commit + push)",
         lambda c, r, t: imgsave_save(c, r, t, engine)),
        ("bare `podman commit && podman push`", bare_save),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    repos = {name: unique(f"alice/bench-{i}") for i, (name, _) in enumerate(cases)}
    with session_container(NODE, "alice") as container:
        node_exec(NODE, "podman", "exec", container, "sh", "-c", FILL_SCRIPT, "sh",
                  str(args.mb))
        size = node_exec(NODE, "podman", "exec", container, "du", "-sm", "/opt/conda").stdout
        print(f"diff in the container: {size.split()[0]} MB", flush=True)
        # one untimed warm-up of each: the base layer reaches each repository once
        touch(container, 0)
        for name, func in cases:
            func(container, repos[name], "warm")
        for run in range(1, args.runs + 1):
            order = cases if run % 2 else list(reversed(cases))
            for name, func in order:
                touch(container, run)
                seconds = func(container, repos[name], f"r{run}")
                times[name].append(seconds)
                print(f"run {run} {name}: {seconds:.2f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    bare = medians[cases[2][0]]
    lines = ["| what | median s | ÷ bare | added s | runs |", "|---|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {medians[name]:.2f} | {medians[name] / bare:.2f}x | "
                     f"{medians[name] - bare:+.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    engine_ratio = medians[cases[1][0]] / bare
    lines += ["", f"**imgsave with the engine's commit: {engine_ratio:.2f}x bare, "
                  f"{medians[cases[1][0]] - bare:+.2f} s (target: under 1.3x and 1.5 s). "
                  f"With the streaming commit: {medians[cases[0][0]] / bare:.2f}x.**",
              "", "Each imgsave row is submit → Slurm job on n1 → status says done (the "
                  "node's result file is watched, then the status asked), so it includes "
                  "alice's `imgsave submit` process (start-up, validation, the registry "
                  "check, sbatch), the job's start, sudo into the node's entry, Python "
                  "start-up on the node and the OCI annotations."]
    table = "\n".join(lines)
    print(table)
    if args.update_docs:
        command = (f".venv/bin/python bench/save_overhead.py --runs {args.runs} --mb {args.mb}"
                   " --update-docs")
        replace_section(TOP / "docs" / "benchmarks.md", "Save overhead",
                        f"A ~{args.mb} MB pip-install-like diff on n1, {args.runs} alternating "
                        f"runs each.\n\n    {command}\n\n{table}\n")


if __name__ == "__main__":
    main()
