"""A job's start (issue 12): ``sbatch --export NONE`` (what imgsave used: on Slurm 22.05
slurmd then loads the user's login environment, ``su - USER ... slurmstepd getenv``)
against ``env -i VAR=... sbatch --export ALL`` (what it uses now: the environment
``scheduler_glue.slurm.commands.job_environment`` builds), alternating, on node n1.

Each job, submitted by alice, writes the time it started; the figure is from just before
``sbatch`` to that moment (one machine, one clock).

    .venv/bin/python bench/job_start.py [--jobs 12] [--update-docs]
"""

from __future__ import annotations

import argparse
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from bench.docs_table import replace_section  # noqa: E402
from scheduler_glue.slurm.commands import job_environment  # noqa: E402
from tests.support.cluster_helpers import require_cluster  # noqa: E402

USER = "alice"
NODE = "n1"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
SBATCH = shutil.which("sbatch") or "sbatch"


def one_job(style: str, stamp: Path) -> float:
    account = pwd.getpwnam(USER)
    sbatch = [SBATCH, "--parsable", "-p", "imgsave", "-w", NODE, "-o", "/dev/null", "-t", "5",
              "--wrap", f"date +%s.%N > {stamp}"]  # fmt: skip
    if style == "none":
        argv = [RUNUSER, "-u", USER, "--", *sbatch[:1], "--export", "NONE", *sbatch[1:]]
    else:
        env = job_environment(account.pw_name, account.pw_dir, {})
        argv = [RUNUSER, "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                *sbatch[:1], "--export", "ALL", *sbatch[1:]]  # fmt: skip
    start = time.time()
    subprocess.run(argv, check=True, capture_output=True, cwd="/",
                   env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not stamp.exists() or not stamp.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"job ({style}) did not start in 120 s")
        time.sleep(0.02)
    return float(stamp.read_text()) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    require_cluster()
    styles = {"none": "`sbatch --export NONE` (before)",
              "all": "`env -i ... sbatch --export ALL` (now)"}
    times: dict[str, list[float]] = {s: [] for s in styles}
    with tempfile.TemporaryDirectory(prefix="imgsave-jobstart-", dir="/tmp") as tmp:
        directory = Path(tmp)
        directory.chmod(0o777)
        for i in range(args.jobs):
            order = list(styles) if i % 2 else list(reversed(styles))
            for style in order:
                seconds = one_job(style, directory / f"{style}-{i}")
                times[style].append(seconds)
                print(f"job {i} {style}: {seconds:.2f} s", flush=True)
                time.sleep(0.5)  # the node's previous job ends (epilog) first
    lines = ["| submitted with | median | min | max | over 1 s | every job (s) |",
             "|---|---|---|---|---|---|"]
    for style, label in styles.items():
        t = times[style]
        lines.append(f"| {label} | {statistics.median(t):.2f} s | {min(t):.2f} s "
                     f"| {max(t):.2f} s | {sum(x > 1 for x in t)} of {len(t)} "
                     f"| {', '.join(f'{x:.2f}' for x in t)} |")
    result = "\n".join(lines)
    print(result)
    if args.update_docs:
        command = f".venv/bin/python bench/job_start.py --jobs {args.jobs} --update-docs"
        replace_section(TOP / "docs" / "benchmarks.md", "Job start: the job's environment",
                        "sbatch → the job's first line on n1, alice's trivial jobs, the two "
                        f"ways alternating.\n\n    {command}\n\n{result}\n")


if __name__ == "__main__":
    main()
