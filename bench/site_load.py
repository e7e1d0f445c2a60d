"""Many users polling: one plain server vs the site (proxy, two servers, PostgreSQL).

Against the real local cluster and the site scripts/site.sh runs. A few saves are
submitted and kept waiting in Slurm's queue (a job holds every CPU of the save
partition on their node), so every poll is about a live job: the case where polls
cost the scheduler most. Then N simulated users poll them, each its own client and
connection, once per ``--poll`` seconds for ``--seconds``. Two set-ups, alternating
rounds in one run:

- ``plain``: one ``imgsave serve`` on TCP, SQLite, every poll asks the scheduler
  (``status_interval_seconds = 0``: what main did before).
- ``site``: nginx with TLS in front of the two servers of scripts/site.sh on
  PostgreSQL, polls coalesced (``status_interval_seconds = 1``).

Measured: SAVE (POST) and CHK (GET /saves/{id}) p50/p95, polls answered per second,
and the scheduler queries the cluster served in the window, from slurmdbd's own RPC
counts (``sacctmgr show stats``: DBD_GET_JOBS_COND is one sacct) and slurmctld's
(``sdiag``: REQUEST_JOB_INFO* is one squeue).

    .venv/bin/python bench/site_load.py --users 50 500 [--rounds 2] [--write-docs]

A benchmark, not a test: it takes minutes and loads the machine. The clients run on the
same 2 cores as the servers, nginx, PostgreSQL and Slurm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

TOP = Path(__file__).resolve().parents[1]
DOCS = TOP / "docs" / "benchmarks.md"
HEADING = "## Many users polling: plain server vs the site"
IMGSAVE = "/opt/imgsave/venv/bin/imgsave"
SERVICE_ACCOUNT = "imgsave"
SITE_CONFIG = "/etc/imgsave-site/portal.toml"
PROXY = "https://127.0.0.1:8443"
CA = "/etc/imgsave-site/ca.crt"
USERS = ("alice", "bob", "dana")
NODE = "n2"


@dataclass
class Setup:
    name: str
    base: str
    config: str
    verify: str | bool = True
    server: subprocess.Popen[str] | None = None
    tokens: dict[str, str] = field(default_factory=dict)


@dataclass
class Round:
    setup: str
    users: int
    save: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    queries: dict[str, int] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_service(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["runuser", "-u", SERVICE_ACCOUNT, "--", IMGSAVE, *argv], env=env,
                          capture_output=True, text=True, check=True, timeout=60,
                          cwd="/").stdout


def token(config: str, user: str, env: dict[str, str] | None = None) -> str:
    made = as_service("--config", config, "--json", "token", "create", user, "--days", "1",
                      "--label", "bench/site_load.py", env=env)
    return str(json.loads(made)["token"])


def plain_setup(workdir: Path) -> Setup:
    """One imgsave serve on TCP: local.toml, SQLite, no coalescing."""
    text = (TOP / "site_configs" / "local.toml").read_text()
    lines = [f'database_url = "sqlite:///{workdir}/api.db"' if ln.startswith("database_url")
             else ln for ln in text.splitlines()]
    lines = [*lines[:lines.index("[api]") + 1], "status_interval_seconds = 0",
             *lines[lines.index("[api]") + 1:]]
    config = workdir / "site.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o644)
    workdir.chmod(0o755)
    shutil.chown(workdir, SERVICE_ACCOUNT)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/var/lib/imgsave", "LANG": "C.UTF-8",
           "IMGSAVE_INSTANCE_DIR": str(workdir / "instance")}
    port = free_port()
    setup = Setup("plain", f"http://127.0.0.1:{port}", str(config))
    setup.server = subprocess.Popen(
        ["runuser", "-u", SERVICE_ACCOUNT, "--", IMGSAVE, "--config", str(config), "serve",
         "--port", str(port), "--threads", "16"], env=env, cwd="/",
        stdout=(workdir / "server.log").open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(setup.base + "/healthz", timeout=1).raise_for_status()
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise SystemExit(f"the plain server did not start; see {workdir}") from None
            time.sleep(0.2)
    setup.tokens = {u: token(str(config), u, env) for u in USERS}
    return setup


def site_setup() -> Setup:
    subprocess.run([str(TOP / "scripts" / "site.sh"), "up"], check=True, capture_output=True,
                   timeout=300)
    setup = Setup("site", PROXY, SITE_CONFIG, verify=CA)
    setup.tokens = {u: token(SITE_CONFIG, u) for u in USERS}
    return setup


def scheduler_queries() -> dict[str, int]:
    """slurmdbd's job queries (sacct) and slurmctld's job-info requests (squeue) so far."""
    dbd = subprocess.run(["sacctmgr", "show", "stats"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    ctld = subprocess.run(["sdiag"], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    sacct = re.search(r"DBD_GET_JOBS_COND\s+\(\s*\d+\)\s+count:(\d+)", dbd)
    squeue = sum(int(n) for n in re.findall(r"REQUEST_JOB_INFO\w*\s+\(\s*\d+\)\s+count:(\d+)",
                                             ctld))
    return {"sacct": int(sacct.group(1)) if sacct else 0, "squeue": squeue}


def hold_node() -> str:
    """A job holding every CPU of the save partition on NODE: saves there wait."""
    out = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "-p", "imgsave", "-w", NODE,
         "-c", str(os.cpu_count()), "--job-name", "site-load-blocker", "--output", "/dev/null",
         "--wrap", "sleep 3600"], capture_output=True, text=True, check=True, timeout=60)
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                         text=True, timeout=30).stdout.strip() != "RUNNING":
        if time.monotonic() > deadline:
            raise SystemExit(f"blocker job {job} never started")
        time.sleep(1)
    return job


def one_round(setup: Setup, users: int, saves: int, seconds: float, poll: float) -> Round:
    result = Round(setup.name, users)
    jobs: list[tuple[str, str]] = []  # (user, job id)
    tag = uuid.uuid4().hex[:6]
    for i in range(saves):
        user = USERS[i % len(USERS)]
        t0 = time.monotonic()
        r = requests.post(setup.base + "/api/v1/saves", verify=setup.verify, timeout=120,
                          headers={"Authorization": f"Bearer {setup.tokens[user]}"},
                          json={"container": f"load-{tag}-{i}", "target": f"load-{tag}:v{i}",
                                "node": NODE, "formats": ["oci"]})
        result.save.append(time.monotonic() - t0)
        if r.status_code != 202:
            result.errors.append(f"POST {r.status_code} {r.text[:120]}")
            continue
        jobs.append((user, r.json()["job_id"]))
    if not jobs:
        return result
    before = scheduler_queries()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def poller(n: int) -> None:
        user, job = jobs[n % len(jobs)]
        client = requests.Session()
        client.trust_env = False
        client.verify = setup.verify
        client.headers["Authorization"] = f"Bearer {setup.tokens[user]}"
        time.sleep(poll * n / users)  # spread over one interval, as real users are
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                r = client.get(f"{setup.base}/api/v1/saves/{job}", timeout=60)
                ok = r.status_code == 200
                why = f"GET {r.status_code}"
            except requests.RequestException as e:
                ok, why = False, type(e).__name__
            took = time.monotonic() - t0
            with lock:
                result.check.append(took)
                if not ok:
                    result.errors.append(why)
            time.sleep(max(0.0, poll - took))

    started = time.monotonic()
    threads = [threading.Thread(target=poller, args=(n,)) for n in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - started
    after = scheduler_queries()
    result.queries = {k: after[k] - before[k] for k in after}
    for user, job in jobs:
        requests.delete(f"{setup.base}/api/v1/saves/{job}", verify=setup.verify, timeout=60,
                        headers={"Authorization": f"Bearer {setup.tokens[user]}"})
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def row(r: Round) -> str:
    per_second = (r.queries["sacct"] + r.queries["squeue"]) / r.seconds if r.seconds else 0
    return (f"| {r.setup} | {r.users} | {statistics.median(r.save) * 1000:.0f} / "
            f"{pct(r.save, 0.95) * 1000:.0f} | {statistics.median(r.check) * 1000:.0f} / "
            f"{pct(r.check, 0.95) * 1000:.0f} | {len(r.check) / r.seconds:.0f} | "
            f"{r.queries['sacct']} + {r.queries['squeue']} | {per_second:.1f} | "
            f"{len(r.errors)} |")


def report(rounds: list[Round], args: argparse.Namespace) -> str:
    lines = [
        HEADING, "",
        f"`.venv/bin/python bench/site_load.py --users {' '.join(map(str, args.users))} "
        f"--rounds {args.rounds} --saves {args.saves} --seconds {args.seconds:g}` "
        f"({time.strftime('%Y-%m-%d')}, the local cluster, 2 cores shared by the clients, "
        "the servers, nginx, PostgreSQL and Slurm). Each row is one round; the set-ups "
        "alternate. Polls are about saves waiting in the queue (every poll is about a "
        "live job).", "",
        "| set-up | users | SAVE ms p50 / p95 | CHK ms p50 / p95 | polls/s | scheduler "
        "queries (sacct + squeue) | queries/s | errors |",
        "|---|---|---|---|---|---|---|---|",
        *[row(r) for r in rounds], "",
    ]
    errors = sorted({e for r in rounds for e in r.errors})
    if errors:
        lines += ["Errors seen: " + "; ".join(errors[:10]), ""]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOCS.read_text()
    if HEADING in doc:
        start = doc.index(HEADING)
        end = doc.find("\n## ", start + len(HEADING))
        doc = doc[:start] + text + (doc[end + 1:] if end != -1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOCS.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--rounds", type=int, default=1, help="rounds per set-up and size")
    parser.add_argument("--saves", type=int, default=6, help="saves the users poll")
    parser.add_argument("--seconds", type=float, default=30.0, help="polling per round")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imgsave-site-load-"))
    setups = [plain_setup(workdir), site_setup()]
    blocker = hold_node()
    rounds: list[Round] = []
    try:
        for users in args.users:
            for _ in range(args.rounds):
                for setup in setups:
                    r = one_round(setup, users, args.saves, args.seconds, args.poll)
                    print(row(r), file=sys.stderr)
                    rounds.append(r)
    finally:
        subprocess.run(["scancel", blocker], check=False, timeout=30)
        for setup in setups:
            if setup.server is not None:
                setup.server.terminate()
                setup.server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(rounds, args)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
