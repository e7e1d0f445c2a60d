"""Usage reports over real saves on the local cluster: Slurm accounting, podman, registry.

Four saves by a Unix user made for the run (so other tests' saves never count), each
submitted by that user themselves: one
that succeeds, one pinned to the wrong node (container missing), one of another user's
container (not owner) and one cancelled while it waits behind a job that holds the
node's save partition. The report, synced from sacct into a fresh cache, must count
exactly those four, with accounting's wait times and the node's run times. Nothing here
is faked.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli import commands as cli
from api.reports.report import UsageReport, build_report
from api.service.progress import SaveStatus
from api.service.site import Site
from builder_jobs.events import read_result
from builder_jobs.spec import RESULT_FILE
from scheduler_glue.states import JobState
from site_configs.schema import get_site_config
from tests.support.cluster_helpers import (
    TOP,
    as_user,
    centre_user,
    imgsave_as,
    require_cluster,
    session_container,
    submit_as,
    wait_final,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


def _config_file(tmp_path: Path) -> Path:
    """local.toml with the usage cache in ``tmp_path``."""
    text = (TOP / "site_configs" / "local.toml").read_text()
    lines = [f'database_url = "sqlite:///{tmp_path / "usage.db"}"'
             if line.startswith("database_url") else line for line in text.splitlines()]
    path = tmp_path / "site.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fresh_user() -> Iterator[str]:
    with centre_user("rpt") as user:
        yield user


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True, timeout=30, check=False)
    return out.stdout.strip()


def _cancelled_while_waiting(s: Site, user: str) -> str:
    """A save pinned to n2 that waits behind a job holding every CPU of n2's save
    partition, then is cancelled; returns its job id."""
    blocker = as_user(
        "alice", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "-c", str(os.cpu_count()),
        "--job-name", "report-test-blocker", "--output", "/dev/null", "--wrap", "sleep 120",
    ).stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 300
        while _squeue_state(blocker) != "RUNNING":
            assert time.monotonic() < deadline, f"blocker job {blocker} never started"
            time.sleep(1)
        waiting = submit_as(user, "never-started", "env:v4", node="n2")
        time.sleep(2)
        assert _squeue_state(waiting) == "PENDING"
        imgsave_as(user, "cancel", waiting)
        return waiting
    finally:
        subprocess.run(["scancel", blocker], capture_output=True, timeout=30, check=False)


def _settled_report(s: Site, since: str, saves: int, **kwargs: object) -> UsageReport:
    """The report once accounting has every save whole (slurmdbd lags a few seconds)."""
    deadline = time.monotonic() + 120
    while True:
        report = build_report(s, since=since, **kwargs)  # type: ignore[arg-type]
        if report.total.saves == saves and report.total.unfinished == 0:
            return report
        assert time.monotonic() < deadline, f"accounting never settled: {report.to_dict()}"
        time.sleep(2)


def test_report_counts_exactly_the_saves_made(tmp_path: Path, fresh_user: str) -> None:
    config_path = _config_file(tmp_path)
    s = Site(get_site_config(str(config_path)))
    user = fresh_user
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="seconds")
    with session_container("n1", user) as mine, session_container("n1", "bob") as bobs:
        submitted = {
            "ok": submit_as(user, mine, "env:v1", node="n1"),
            "missing": submit_as(user, mine, "env:v2", node="n2"),
            "not_owner": submit_as(user, bobs, "env:v3", node="n1"),
            "cancelled": _cancelled_while_waiting(s, user),
        }
        final: dict[str, SaveStatus] = {k: wait_final(s, j, user) for k, j in submitted.items()}
    assert [final[k].state for k in submitted] == [
        JobState.COMPLETED, JobState.FAILED, JobState.FAILED, JobState.CANCELLED]

    report = _settled_report(s, since, 4, by="user,outcome", user=user)
    rows = {(r.group["user"], r.group["outcome"]): r for r in report.rows}
    assert set(rows) == {(user, "succeeded"), (user, "failed")}
    ok, failed = rows[(user, "succeeded")], rows[(user, "failed")]
    # what the save uploaded (a streamed save's result says; else the image's size)
    result = final["ok"].result
    pushed = (result.bytes_pushed if result else 0) or final["ok"].size_bytes
    assert (ok.saves, ok.bytes_pushed) == (1, pushed) and ok.bytes_pushed > 0
    assert failed.saves == 3
    assert {k: n for k, n in failed.failed_by_reason.items() if n} == {
        "container_missing": 1, "not_owner": 1, "cancelled": 1}

    # waits are accounting's: compare with what sacct says for the same four jobs
    records = s.scheduler.status(list(submitted.values()), datetime.now(UTC) - timedelta(hours=1))
    # sacct gives the save cancelled while pending a Start (its end) but no node: no times
    assert not records[submitted["cancelled"]].node
    ran = [r for r in records.values() if r.node]
    waits = sorted(r.queue_wait_seconds for r in ran if r.queue_wait_seconds is not None)
    # runs are the node's own measure, from each result (accounting's only without one)
    results = [read_result(s.config.spool_for(user) / final[k].request_id / RESULT_FILE)
               for k in ("ok", "missing", "not_owner")]
    runs = sorted(r.job_seconds for r in results if r is not None and r.job_seconds is not None)
    (mine_total,) = build_report(s, since=since, by="user", user=user).rows
    assert len(runs) == len(waits) == 3
    assert mine_total.run_seconds == runs and mine_total.wait_seconds == waits
    assert mine_total.median_run == round(statistics.median(runs), 1)

    # the command, as staff run it: CSV and a chart; root sees every user, so filter
    out = CliRunner().invoke(cli.main, [
        "--config", str(config_path), "report", "--since", since, "--by", "user,outcome",
        "--format", "csv", "--plot", str(tmp_path / "usage.png")])
    assert out.exit_code == 0, out.output
    lines = [r for r in csv.DictReader(io.StringIO(out.output)) if r["user"] == user]
    assert {(r["outcome"], r["saves"], r["failed_cancelled"]) for r in lines} == {
        ("succeeded", "1", "0"), ("failed", "3", "1")}
    assert (tmp_path / "usage.png").read_bytes()[:4] == b"\x89PNG"

    # still in the registry, then deleted
    checked = build_report(s, since=since, by="user", user=user, check_registry=True)
    assert (checked.total.images_present, checked.total.images_deleted) == (1, 0)
    s.images.delete(user, "env:v1")
    checked = build_report(s, since=since, by="user", user=user, check_registry=True)
    assert (checked.total.images_present, checked.total.images_deleted) == (0, 1)
    # every report after the first synced only the last minutes, never the whole period
    assert checked.sync is not None and len(checked.sync.windows) == 1
    start, end = checked.sync.windows[0]
    assert end - start < timedelta(minutes=20)
