"""Usage reports at scale: 10^5 save jobs through the real sacct parser, cache and report.

    .venv/bin/python bench/report_scale.py [--rows 100000] [--repeat 7] [--update-docs]

FAKE scheduler output, on purpose: the local cluster holds hundreds of jobs, not 10^5.
:class:`FakeSacct` is a runner that answers the exact ``sacct`` argv SlurmScheduler
builds with generated lines in the real ``--parsable2`` format: every line is a copy of
a real line (job 4 of ``tests/captures/slurm/43_sacct_list_window.txt``, a save with
imgsave metadata) with its id, name, state, times, node, CPU time and comment replaced,
the comment made by the real metadata encoder. It filters by the ``-S/-E`` window as
``sacct -s <states>`` does (jobs active in the window), so the parser, the cache and the
report run exactly as against slurmdbd. Prints a table; with --update-docs writes it and
this command into the "Usage reports" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from api.reports.report import build_report  # noqa: E402
from api.reports.usage_cache import OVERLAP  # noqa: E402
from api.service.spool import BY_JOB_DIR  # noqa: E402
from bench.docs_table import replace_section  # noqa: E402
from builder_jobs.events import FailureKind, SaveResult, write_result  # noqa: E402
from builder_jobs.spec import RESULT_FILE, SPEC_FILE, SaveSpec  # noqa: E402
from core.runner import CommandResult  # noqa: E402
from scheduler_glue.metadata import encode_metadata  # noqa: E402
from scheduler_glue.slurm.backend import SlurmScheduler  # noqa: E402
from site_configs.schema import ImageFormat, SiteConfig, load_site_config  # noqa: E402
from tests.support.replay import CAPTURES, load_capture  # noqa: E402

FIXTURE = CAPTURES / "slurm" / "43_sacct_list_window.txt"
LOCAL_TOML = TOP / "site_configs" / "local.toml"
COMMAND = ".venv/bin/python bench/report_scale.py --rows 100000 --update-docs"

# (Slurm state, exit code, failure kind the node wrote, share of jobs)
OUTCOMES = (
    ("COMPLETED", "0:0", None, 0.85),
    ("FAILED", "1:0", FailureKind.CONTAINER_NOT_FOUND, 0.03),
    ("FAILED", "1:0", FailureKind.NOT_OWNER, 0.01),
    ("FAILED", "1:0", FailureKind.REGISTRY, 0.02),
    ("FAILED", "1:0", FailureKind.ENGINE, 0.01),
    ("CANCELLED by 0", "0:0", None, 0.04),
    ("TIMEOUT", "0:0", None, 0.02),
    ("NODE_FAIL", "0:0", None, 0.01),
    ("OUT_OF_MEMORY", "0:125", None, 0.01),
)


def template_line() -> list[str]:
    """The real sacct line of a save the generated lines are copies of."""
    for line in load_capture(FIXTURE).stdout.splitlines():
        cols = line.split("|", 13)
        if cols[1].startswith("imgsave-") and "request_id=" in cols[13]:
            return cols
    raise SystemExit(f"no save line in {FIXTURE}")


def slurm_clock(moment: datetime) -> str:
    """A time as sacct prints it: local, no zone."""
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class SacctJob:
    """One generated job: its sacct line, its activity span and its result (if any)."""

    job_id: str
    line: str
    submit: float
    end: float  # inf while pending or running
    request_id: str
    result: SaveResult | None
    meta: dict[str, str]  # the request, as the comment carries it once the job ends
    node: str


def generate(
    rows: int, end: datetime, days: float = 365, *, seed: int = 5, first: int = 0, live: int = 5
) -> list[SacctJob]:
    """``rows`` save jobs submitted over ``days`` days before ``end``, oldest first; the
    last ``live`` are still pending or running. Job ``first + i`` has id ``1000 + first + i``."""
    rng = random.Random(seed + first)
    base = template_line()
    weights = [o[3] for o in OUTCOMES]
    start = end - timedelta(days=days)
    step = (end - start).total_seconds() / rows
    jobs = []
    for n in range(rows):
        i = first + n
        submit = start + timedelta(seconds=n * step + rng.random() * step)
        wait = rng.expovariate(1 / 20)
        run = 5 + rng.expovariate(1 / 40)
        state, exit_code, kind, _ = rng.choices(OUTCOMES, weights)[0]
        running = n >= rows - live
        if running:
            state, exit_code, kind = ("RUNNING", "0:0", None) if i % 2 else ("PENDING", "0:0", None)
        user = f"user{rng.randrange(50):02d}"
        request_id = f"{i:032x}"
        meta = {"request_id": request_id, "user": user, "container": f"jupyter-{user}",
                "target": f"127.0.0.1:5000/{user}/env{i % 7}:v{i}",
                "formats": rng.choice(("oci", "oci", "oci", "sif", "oci,sif")),
                "category": rng.choice(("cpu", "cpu", "gpu"))}
        started = submit + timedelta(seconds=wait)
        ended = started + timedelta(seconds=run)
        cols = list(base)
        cols[0] = str(1000 + i)
        cols[1] = f"imgsave-{user}"
        cols[2] = user  # CLI mode: the job is its user's own in accounting
        cols[5], cols[6] = state, exit_code
        cols[7] = slurm_clock(submit)
        cols[8] = "Unknown" if state == "PENDING" else slurm_clock(started)
        cols[9] = "Unknown" if running else slurm_clock(ended)
        node = f"n{rng.randrange(1, 21):03d}"  # the node the save is pinned to
        cols[10] = "None assigned" if state == "PENDING" else node
        cols[11] = f"00:00:{min(59, int(run * 0.6)):02d}.{rng.randrange(1000):03d}"
        cols[13] = "" if running else encode_metadata(meta)  # sacct: no comment until the end
        result = None
        if not running and state == "COMPLETED":
            result = SaveResult(ok=True, reference=meta["target"],
                                digest=f"sha256:{i:064x}", size_bytes=rng.randrange(1, 10**9))
        elif kind is not None:
            result = SaveResult(ok=False, failure=kind, error=kind.value)
        jobs.append(SacctJob(cols[0], "|".join(cols), submit.timestamp(),
                             float("inf") if running else ended.timestamp(), request_id, result,
                             meta, node))
    return jobs


class FakeSacct:
    """A runner answering SlurmScheduler's sacct/squeue argv from generated jobs (FAKE:
    see the module docstring). ``calls`` records every argv; ``jobs`` may be replaced
    (new jobs, purged ones) between calls."""

    def __init__(self, jobs: Sequence[SacctJob]) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.jobs = list(jobs)

    @property
    def jobs(self) -> list[SacctJob]:
        return self._jobs

    @jobs.setter
    def jobs(self, jobs: list[SacctJob]) -> None:
        self._jobs = sorted(jobs, key=lambda j: j.submit)
        self._submits = [j.submit for j in self._jobs]
        finished = [j.end - j.submit for j in self._jobs if j.end != float("inf")]
        self._longest = max(finished, default=0.0)
        self._live = [j for j in self._jobs if j.end == float("inf")]

    def __call__(self, argv: Sequence[str], *, timeout: float = 30, check: bool = True,
                 input_text: str | None = None) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        if args[0] == "squeue":
            return CommandResult(args, 0, "", "")
        if args[0] != "sacct":
            raise AssertionError(f"FakeSacct cannot answer {list(args)}")
        low = _when(args[args.index("-S") + 1])
        high = _when(args[args.index("-E") + 1])
        ids = set(args[args.index("-j") + 1].split(",")) if "-j" in args else None
        lines = [j.line for j in self.active(low, high) if ids is None or j.job_id in ids]
        return CommandResult(args, 0, "\n".join(lines) + "\n" if lines else "", "")

    def active(self, low: float, high: float) -> list[SacctJob]:
        """Jobs submitted by ``high`` and not ended before ``low``, in submit order."""
        begin = bisect.bisect_left(self._submits, low - self._longest)
        end = bisect.bisect_right(self._submits, high)
        found = {j.job_id: j for j in self._jobs[begin:end] if j.end >= low}
        found.update((j.job_id, j) for j in self._live if j.submit <= high)
        return sorted(found.values(), key=lambda j: j.submit)

    def windows(self) -> list[tuple[str, str]]:
        """(-S, -E) of every sacct listing so far."""
        return [(c[c.index("-S") + 1], c[c.index("-E") + 1]) for c in self.calls
                if c[0] == "sacct" and "-j" not in c]


def _when(text: str) -> float:
    return time.time() if text == "now" else datetime.fromisoformat(text).astimezone().timestamp()


def write_spool(spool: Path, jobs: Sequence[SacctJob]) -> None:
    """A result.json per finished save, as the node writes it; the spec and the by-job
    index entry the service writes for the saves still live (sacct has no comment yet)."""
    for job in jobs:
        workdir = spool / job.request_id
        if job.result is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            write_result(workdir / RESULT_FILE, job.result)
        if job.end == float("inf"):
            workdir.mkdir(parents=True, exist_ok=True)
            meta = job.meta
            spec = SaveSpec(
                request_id=job.request_id, user=meta["user"], container=meta["container"],
                target=meta["target"],
                formats=tuple(ImageFormat(f) for f in meta["formats"].split(",")),
                category=meta["category"], node=job.node, site_config=str(LOCAL_TOML),
                created=datetime.fromtimestamp(job.submit, UTC).isoformat(),
            )
            (workdir / SPEC_FILE).write_text(spec.to_json())
            (spool / BY_JOB_DIR).mkdir(exist_ok=True)
            (spool / BY_JOB_DIR / job.job_id).symlink_to(Path("..") / job.request_id)


@dataclass
class BenchSite:
    """The two parts of :class:`api.service.site.Site` a report uses."""

    config: SiteConfig
    scheduler: SlurmScheduler


def bench_site(workdir: Path, runner: FakeSacct) -> BenchSite:
    """local.toml with its spool and database in ``workdir``, Slurm on ``runner``."""
    data = load_site_config(LOCAL_TOML).model_dump(mode="json")
    data.update(spool_dir=str(workdir / "spool"),
                database_url=f"sqlite:///{workdir / 'imgsave.db'}")
    return BenchSite(SiteConfig.model_validate(data), SlurmScheduler(runner))


def timed(func: object, *args: object, **kwargs: object) -> tuple[float, object]:
    started = time.perf_counter()
    value = func(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started, value


def real_sacct_window(repeat: int) -> float | None:
    """Median seconds of one real ``sacct`` for the last 10 minutes on this machine's
    cluster (what a real incremental sync adds), or None without Slurm."""
    if shutil.which("sacct") is None:
        return None
    slurm = SlurmScheduler()
    since = datetime.now(UTC) - OVERLAP
    times = [timed(slurm.list_jobs, since, None, name_prefix="imgsave")[0] for _ in range(repeat)]
    return statistics.median(times)


def command_seconds(workdir: Path, config: SiteConfig, since: str, repeat: int) -> list[float]:
    """Wall time of the real ``imgsave report`` command on the bench's cache (no sync:
    the command's own scheduler is the real one, which knows none of these jobs)."""
    text = LOCAL_TOML.read_text().splitlines()
    path = workdir / "site.toml"
    path.write_text("\n".join(
        f'database_url = "{config.database_url}"' if line.startswith("database_url") else
        f'spool_dir = "{config.spool_dir}"' if line.startswith("spool_dir") else line
        for line in text) + "\n")
    argv = [sys.executable, "-m", "api.cli.commands", "--config", str(path), "report",
            "--since", since, "--by", "user", "--no-sync"]
    return [_wall(argv) for _ in range(repeat)]


def startup_seconds(repeat: int) -> list[float]:
    """Wall time of a Python process that only imports the CLI (every command pays it)."""
    return [_wall([sys.executable, "-c", "import api.cli.commands"]) for _ in range(repeat)]


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=TOP, timeout=120)
    return time.perf_counter() - started


def run(rows: int, repeat: int) -> tuple[str, dict[str, object]]:
    """Generate, sync once, report repeatedly; return (markdown table, figures)."""
    now = datetime.now(UTC)
    jobs = generate(rows, now)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_spool(workdir / "spool", jobs)
        runner = FakeSacct(jobs)
        site = bench_site(workdir, runner)
        since = (now - timedelta(days=366)).astimezone().strftime("%Y-%m-%d")
        first, report = timed(build_report, site, since=since, by="month,category")
        first_calls = len(runner.calls)
        figures: dict[str, object] = {"rows": rows, "first_sync_s": round(first, 2),
                                      "sacct_calls_first": first_calls,
                                      "saves_reported": report.total.saves}  # type: ignore[attr-defined]
        lines = [f"| report | median of {repeat} (s) | max (s) |", "|---|---|---|"]
        cases = [("user", True), ("month,category", True), ("node,outcome", True),
                 ("day", True), ("user", False)]
        for by, sync in cases:
            times = [timed(build_report, site, since=since, by=by, sync=sync)[0]
                     for _ in range(repeat)]
            label = f"`--by {by}`" + ("" if sync else " `--no-sync`")
            lines.append(f"| {label} | {statistics.median(times):.3f} | {max(times):.3f} |")
            figures[f"{by}{'' if sync else ' no-sync'}"] = round(statistics.median(times), 3)
        incremental = runner.windows()[-1]
        command = command_seconds(workdir, site.config, since, repeat)
        lines.append(f"| the whole `imgsave report --by user --no-sync` command (a new "
                     f"Python process) | {statistics.median(command):.3f} | {max(command):.3f} |")
        figures["command no-sync"] = round(statistics.median(command), 3)
        startup = startup_seconds(repeat)
        lines.append(f"| of which Python start-up and `import api.cli.commands` (every imgsave "
                     f"command) | {statistics.median(startup):.3f} | {max(startup):.3f} |")
        figures["startup"] = round(statistics.median(startup), 3)
    sacct = real_sacct_window(repeat)
    figures["real_sacct_10min_s"] = sacct
    slowest = max(v for k, v in figures.items()
                  if k in ("user", "month,category", "node,outcome", "day"))
    real = ("" if sacct is None else
            f"\n\nThe sacct answers above come from the fake runner. A real `sacct` for a "
            f"10-minute window on the local cluster takes {sacct:.3f} s (median of {repeat}); "
            f"a real incremental sync adds that to each synced figure.")
    real += (f"\n\nTarget, a repeated report under 1 s at 10^5 rows: the slowest synced "
             f"report takes {slowest:.2f} s in-process"
             + ("" if sacct is None else f", {slowest + sacct:.2f} s with a real sacct")
             + f"; the `imgsave report` command as a whole takes {figures['command no-sync']:.2f}"
             f" s, {figures['startup']:.2f} s of it Python start-up and imports.")
    head = (f"{rows:,} save jobs over 365 days (generated sacct lines, see "
            f"`bench/report_scale.py`), SQLite cache in a temporary directory, "
            f"result files in a temporary spool.\n\n"
            f"First report (empty cache: {first_calls} bounded sacct calls of at most 31 "
            f"days, parse, read {sum(j.result is not None for j in jobs):,} result files, "
            f"insert): **{first:.1f} s**.\n\n"
            f"Repeated reports over the same year (each syncs incrementally: one sacct for "
            f"the window since the last sync minus 10 minutes, here `-S {incremental[0]} "
            f"-E {incremental[1]}`, then one query):\n\n")
    return head + "\n".join(lines) + real + "\n", figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    table, figures = run(args.rows, args.repeat)
    print(table)
    print(json.dumps(figures, indent=2))
    if args.update_docs:
        body = f"Command:\n\n    {COMMAND}\n\n{table}"
        replace_section(TOP / "docs" / "benchmarks.md", "Usage reports", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
