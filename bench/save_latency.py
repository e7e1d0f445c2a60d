"""What the user waits for (issue 12): ``imgsave submit ... --wait`` until it returns,
against ``tar | zstd`` of the container's diff (the floor) and bare ``podman commit &&
podman push``, alternating in one run, on the local cluster's node n1.

Two containers, each a session container of alice's on n1: the pip case (what ``pip
install numpy scipy sympy`` leaves: real wheels installed once into a cache with this
venv's pip, then copied into the container; about 300 MB in 7,000 files) and a 20 MB
pip-install-like synthetic diff (bench/stream_commit.py's generator). Every round runs
the three in a rotating order; before each, a small file in the container changes, so
each save uploads a new layer. alice runs the CLI users run (the /opt/imgsave runtime
``scripts/cluster.sh install`` puts there) with ``runuser``.

Where the user's time goes, per save, from the clocks of one machine: the submit process
until it prints the job id (start-up, checks, sbatch); from there to the job's start on
the node (``started_at`` in the result: the job side's first line) and to the node's
first event (sudo, the node entry's start-up and checks); the node-side save (first
node event to the result); the result to ``--wait`` returning (seeing the result, then
the job's end in the scheduler).

    .venv/bin/python bench/save_latency.py [--runs 5] [--cases pip,20mb] [--update-docs]

Needs root and the local cluster up with this checkout installed (scripts/cluster.sh
install); takes about a minute per round of the pip case.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from bench.as_users import IMGSAVE  # noqa: E402
from bench.docs_table import replace_section  # noqa: E402
from bench.stream_commit import pip_tree, populate  # noqa: E402
from builder_jobs.events import ProgressEvent, Stage, read_result  # noqa: E402
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE, spool_dir_for  # noqa: E402
from site_configs.schema import get_site_config  # noqa: E402
from tests.support.cluster_helpers import (  # noqa: E402
    REGISTRY,
    node_exec,
    require_cluster,
    session_container,
    unique,
)

NODE = "n1"
USER = "alice"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"  # alice's PATH below lacks sbin
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
PIP = "numpy scipy sympy"
STAGES = ("submit", "to_job", "to_node_event", "node_save", "to_return")
STAGE_NAMES = {
    "submit": "`imgsave submit` until the job id is out (start-up, checks, sbatch; "
              "`--style status`: until the process exits)",
    "to_job": "job id printed → the job's start on the node (scheduler, job script)",
    "to_node_event": "job start → the node's first event (sudo, node entry, its checks)",
    "node_save": "node-side save (first node event → result written)",
    "to_return": "result written → `--wait` returns (the job's end seen in the scheduler)",
}


@dataclass(frozen=True)
class Case:
    label: str
    fill: Callable[[str], None]  # fill(container)


def node_pid() -> str:
    """n1's slurmd, whose mount namespace is the node's (scripts/cluster.sh node_pid)."""
    return Path(f"/run/imgsave-cluster/slurmd-{NODE}.pid").read_text().strip()


def in_node(*argv: str) -> list[str]:
    return ["nsenter", "-t", node_pid(), "-m", "--", *argv]


def copy_in(container: str, source: Path, destination: str) -> None:
    node_exec(NODE, "podman", "exec", container, "mkdir", "-p", destination)
    node_exec(NODE, "podman", "cp", f"{source}/.", f"{container}:{destination}")


def fill_pip(container: str) -> None:
    copy_in(container, pip_tree(PIP), "/usr/local/lib/python3.11/site-packages")


def fill_synthetic(mb: int) -> Callable[[str], None]:
    def fill(container: str) -> None:
        with tempfile.TemporaryDirectory(prefix="imgsave-bench-") as tmp:
            populate(Path(tmp), mb << 20)
            copy_in(container, Path(tmp), "/opt/site-packages")

    return fill


def upper_dir(container: str) -> str:
    return node_exec(NODE, "podman", "container", "inspect", "-f",
                     "{{.GraphDriver.Data.UpperDir}}", container).stdout.strip()  # fmt: skip


def floor(container: str, upper: str) -> dict[str, float]:
    """``tar -C UPPER -c . | zstd -1 -T0 > /dev/null`` (tar in n1's mount namespace)."""
    start = time.perf_counter()
    tar = subprocess.Popen(in_node("tar", "-C", upper, "-c", "."), stdout=subprocess.PIPE)
    subprocess.run(["zstd", "-q", "-1", "-T0", "-c"], stdin=tar.stdout,
                   stdout=subprocess.DEVNULL, check=True)  # fmt: skip
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError("tar failed")
    return {"wall": time.perf_counter() - start}


def bare(container: str, repo: str, tag: str) -> dict[str, float]:
    local = f"localhost/bench-latency:{tag}"
    start = time.perf_counter()
    subprocess.run(in_node(*PODMAN, "commit", "-q", container, local), check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(in_node(*PODMAN, "push", "-q", "--tls-verify=false", local,
                           f"docker://{REGISTRY}/{repo}:{tag}"), check=True, capture_output=True)
    wall = time.perf_counter() - start
    subprocess.run(in_node(*PODMAN, "rmi", "-f", local), check=False, capture_output=True)
    return {"wall": wall}


def imgsave_wait(container: str, repo: str, tag: str, style: str) -> dict[str, float]:
    """alice's ``imgsave --json submit C T --node n1 --wait`` (``style`` "wait"), or, as
    before it existed, ``imgsave --json submit`` then ``imgsave status --wait`` ("status"):
    the wall time, and the stages from the submit's output time, the spool's events and
    the result."""
    submit = [RUNUSER, "-u", USER, "--", IMGSAVE, "--json", "submit", container,
              f"{repo}:{tag}", "--node", NODE]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    t0 = time.time()
    start = time.perf_counter()
    if style == "wait":
        proc = subprocess.Popen([*submit, "--wait"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/", env=env)
        assert proc.stderr is not None
        first_line = proc.stderr.readline()  # "Submitted image save job N"
        submitted = time.time()
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"imgsave submit --wait failed: {first_line}{err}")
        answer = json.loads(out)
        final = answer["status"]
    else:
        done = subprocess.run(submit, capture_output=True, text=True, cwd="/", env=env,
                              check=True)  # fmt: skip
        submitted = time.time()
        answer = json.loads(done.stdout)
        waited = subprocess.run([RUNUSER, "-u", USER, "--", IMGSAVE, "--json", "status",
                                 answer["job_id"], "--wait"], capture_output=True, text=True,
                                cwd="/", env=env, check=True)  # fmt: skip
        (final,) = json.loads(waited.stdout)
    wall = time.perf_counter() - start
    returned = t0 + wall
    if final["state"] != "completed":
        raise RuntimeError(f"not completed: {final}")
    workdir = spool_dir_for(get_site_config().spool_for(USER), answer["request_id"])
    events = [ProgressEvent.from_json(line) for line in
              (workdir / EVENTS_FILE).read_text().splitlines() if line.strip()]  # fmt: skip
    node_events = [e for e in events if e.stage is not Stage.QUEUED]
    result = read_result(workdir / RESULT_FILE)
    assert result is not None and result.started_at is not None
    result_at = (workdir / RESULT_FILE).stat().st_mtime
    return {
        "wall": wall,
        "submit": submitted - t0,
        "to_job": result.started_at - submitted,
        "to_node_event": node_events[0].time - result.started_at,
        "node_save": result_at - node_events[0].time,
        "to_return": returned - result_at,
    }


def run_case(case: Case, runs: int, style: str) -> dict[str, list[dict[str, float]]]:
    with session_container(NODE, USER) as container:
        case.fill(container)
        upper = upper_dir(container)
        repos = {m: unique(f"{USER}/latency-{m}") for m in ("imgsave", "bare")}
        methods: dict[str, Callable[[str], dict[str, float]]] = {
            "tar|zstd": lambda tag: floor(container, upper),
            "bare": lambda tag: bare(container, repos["bare"], tag),
            "imgsave": lambda tag: imgsave_wait(container, repos["imgsave"], tag, style),
        }
        results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        order = list(methods)
        for run in range(runs + 1):  # round 0 warms the page cache and the registry
            for method in order:
                node_exec(NODE, "podman", "exec", container, "sh", "-c",
                          'echo "$1" > /opt/nonce', "sh", uuid.uuid4().hex)  # fmt: skip
                subprocess.run(["sync"], check=True)
                time.sleep(0.3)
                measured = methods[method](f"r{run}")
                if run:
                    results[method].append(measured)
                print(f"{case.label} round {run} {method}: {measured['wall']:.2f} s", flush=True)
            order = order[1:] + order[:1]
        size = node_exec(NODE, "du", "-sm", upper).stdout.split()[0]
        print(f"{case.label}: diff {size} MB", flush=True)
    return results


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def table(measured: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = ["| case | `submit --wait` | tar\\|zstd (floor) | bare commit + push "
             "| ÷ floor | ÷ bare | rounds (imgsave) |", "|---|---|---|---|---|---|---|"]
    for label, r in measured.items():
        im, fl, ba = med(r["imgsave"], "wall"), med(r["tar|zstd"], "wall"), med(r["bare"], "wall")
        rounds = ", ".join(f"{x['wall']:.2f}" for x in r["imgsave"])
        lines.append(f"| {label} | {im:.2f} s | {fl:.2f} s | {ba:.2f} s | **{im / fl:.2f}x** "
                     f"| **{im / ba:.2f}x** | {rounds} |")
    lines += ["", "Stages of the save as the user sees it (medians, seconds):", "",
              "| stage | " + " | ".join(measured) + " |",
              "|---|" + "---|" * len(measured)]
    for stage in STAGES:
        lines.append(f"| {STAGE_NAMES[stage]} | "
                     + " | ".join(f"{med(r['imgsave'], stage):.2f}" for r in measured.values())
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default="pip,20mb", help="pip and/or 20mb")
    parser.add_argument("--style", choices=("wait", "status"), default="wait",
                        help="submit --wait, or submit then status --wait (before --wait)")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    require_cluster()
    cases = {"pip": Case(f"pip {PIP}", fill_pip), "20mb": Case("20 MB", fill_synthetic(20))}
    chosen = [cases[c] for c in args.cases.split(",") if c]
    if any(c.label.startswith("pip") for c in chosen):
        pip_tree(PIP)  # installed before any timing
    measured = {case.label: run_case(case, args.runs, args.style) for case in chosen}
    result = table(measured)
    print(result)
    if args.update_docs:
        command = (f".venv/bin/python bench/save_latency.py --runs {args.runs} "
                   f"--cases {args.cases} --style {args.style} --update-docs")
        replace_section(TOP / "docs" / "benchmarks.md", "What the user waits for (latency)",
                        f"{__doc__.split(chr(10) + chr(10))[1]}\n\n    {command}\n\n{result}\n")


if __name__ == "__main__":
    main()
