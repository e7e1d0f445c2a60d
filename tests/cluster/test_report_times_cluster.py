"""CPU and run time of a real save in the usage report, on the local cluster.

A Unix user made for the run saves their own container through Slurm (so no other
test's save is counted), then asks ``imgsave report`` themselves, as staff would for
their own saves. The report must show the CPU time Slurm accounted to the job's steps
(it read 0.0 s with ``sacct -X``) and the run time the job measured on its node, also
when slurmctld is restarted as the save ends (accounting then records the restart as the
job's end). Nothing here is faked.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api.db import Database
from api.reports.report import build_report
from api.reports.usage_cache import UsageJob
from builder_jobs.events import read_result
from builder_jobs.spec import RESULT_FILE
from scheduler_glue.slurm.parse import parse_duration
from scheduler_glue.states import JobState
from site_configs.schema import get_site_config
from tests.support.cluster_helpers import (
    CLUSTER,
    centre_user,
    imgsave_as,
    require_cluster,
    session_container,
    site,
    wait_final,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


@pytest.fixture
def fresh_user() -> Iterator[str]:
    with centre_user("cpu") as user:
        yield user


def _steps_cpu(job_id: str) -> float:
    """The job's steps' TotalCPU summed, straight from sacct (not through imgsave)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,TotalCPU"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    steps = [line.split("|") for line in out.splitlines() if "." in line.split("|")[0]]
    assert steps, f"sacct lists no steps for job {job_id}: {out!r}"
    return sum(parse_duration(cpu) or 0.0 for _, cpu in steps)


def _report(user: str, since: str) -> dict[str, object]:
    """``imgsave report --format json`` as ``user``, once accounting has the save whole."""
    deadline = time.monotonic() + 120
    while True:
        done = imgsave_as(user, "report", "--since", since, "--format", "json")
        doc: dict[str, object] = json.loads(done.stdout)
        total = doc["total"]
        assert isinstance(total, dict)
        if total["saves"] == 1 and total["unfinished"] == 0:
            return doc
        assert time.monotonic() < deadline, f"accounting never settled: {doc}"
        time.sleep(2)


def _cached_row(tmp_path: Path, user: str, since: str, job_id: str) -> UsageJob:
    """The save's row in a fresh usage cache synced in-process (root's direct mode)."""
    s = site()
    database = Database(f"sqlite:///{tmp_path / 'usage.db'}")
    try:
        report = build_report(s, since=since, by="user", user=user, database=database)
        assert report.total.saves == 1
        with Session(database.engine) as session:
            row = session.get(UsageJob, (s.config.name, job_id))
            assert row is not None
            session.expunge(row)
            return row
    finally:
        database.engine.dispose()


def test_report_shows_the_saves_cpu_and_the_nodes_run_time(fresh_user: str, tmp_path: Path) -> None:
    user = fresh_user
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="seconds")
    with session_container("n1", user) as container:
        submitted = json.loads(
            imgsave_as(user, "--json", "submit", container, "env:v1", "--node", "n1").stdout
        )
        status = wait_final(site(), str(submitted["job_id"]), user)
    assert status.state is JobState.COMPLETED, status
    spool = get_site_config().spool_for(user)
    result = read_result(spool / status.request_id / RESULT_FILE)
    assert result is not None and result.ok
    measured = result.job_seconds
    assert measured is not None and measured > 0, result  # the node measured its run

    doc = _report(user, since)
    total = doc["total"]
    assert isinstance(total, dict)
    assert total["succeeded"] == 1
    cpu = _steps_cpu(status.job_id)
    assert cpu > 0  # Slurm did account CPU to the save's batch step
    assert total["cpu_seconds"] == round(cpu, 1) and total["cpu_seconds"] > 0
    # RUN is the node's measure (one save: median and p95 are it, to 0.1 s) ...
    assert total["median_run_seconds"] == round(measured, 1)
    assert total["p95_run_seconds"] == round(measured, 1)
    # ... which accounting's whole-second start and end bracket within a second
    assert status.start_time is not None and status.end_time is not None
    accounted = (status.end_time - status.start_time).total_seconds()
    assert abs(accounted - measured) < 1.0 + 0.5, (accounted, measured)
    # unrounded, in the cache: the node's milliseconds, not accounting's whole seconds
    row = _cached_row(tmp_path, user, since, status.job_id)
    assert row.run_seconds == measured and row.run_seconds != accounted
    assert row.cpu_seconds == pytest.approx(cpu)


def test_slurmctld_restarted_as_a_save_ends_keeps_its_status_and_run_time(
    fresh_user: str,
) -> None:
    """slurmctld is killed while the save reads the container and started again only
    after the save has ended on the node: the save is COMPLETED with its digest, and
    the report's RUN is the node's measure, not accounting's end (the restart time)."""
    from tests.cluster.test_faults import _fill, _wait_guarded

    user = fresh_user
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="seconds")
    spool = get_site_config().spool_for(user)
    with session_container("n1", user) as container:
        _fill("n1", container, 300)
        submitted = json.loads(
            imgsave_as(user, "--json", "submit", container, "env:v1", "--node", "n1").stdout
        )
        job, request_id = str(submitted["job_id"]), str(submitted["request_id"])
        try:
            assert _wait_guarded(job), "the save never began its read"
            subprocess.run(["pkill", "-x", "slurmctld"], check=True)
            result_file = spool / request_id / RESULT_FILE
            deadline = time.monotonic() + 120
            while (result := read_result(result_file)) is None or result.ended_at is None:
                assert time.monotonic() < deadline, "the save never ended on the node"
                time.sleep(0.5)
            time.sleep(8)  # the controller stays down a while after the save ended
        finally:
            subprocess.run([str(CLUSTER), "up"], capture_output=True, timeout=300, check=True)
        status = wait_final(site(), job, user)
    assert status.state is JobState.COMPLETED and status.digest.startswith("sha256:"), status
    measured = result.job_seconds
    assert measured is not None and measured > 0
    assert status.start_time is not None and status.end_time is not None
    accounted = (status.end_time - status.start_time).total_seconds()
    assert accounted > measured + 5, (accounted, measured)  # the restart, in accounting
    total = _report(user, since)["total"]
    assert isinstance(total, dict)
    assert total["median_run_seconds"] == round(measured, 1), (total, measured)
