"""The usage cache: incremental sync windows, purged jobs, rebuild, rechecks by id.

Slurm side: the real SlurmScheduler and sacct parser on ``bench.report_scale.FakeSacct``,
a FAKE runner (10^5-job histories cannot be made on the local cluster) answering the
real sacct argv with lines in the real ``--parsable2`` format; the tests assert on the
argv it received. PBS side: real captures through tests/support/replay.py. The same sync runs
against the real cluster in test_report_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from api.reports.usage_cache import UsageCache, UsageJob
from api.reports.usage_records import SpoolReader
from api.service.spool import BY_JOB_DIR
from bench.report_scale import FakeSacct, generate, slurm_clock, write_spool
from builder_jobs.events import SaveResult, write_result
from builder_jobs.spec import RESULT_FILE, SPEC_FILE, SaveSpec
from scheduler_glue.pbs.backend import PbsScheduler
from scheduler_glue.slurm.backend import SlurmScheduler
from site_configs.schema import ImageFormat
from tests.support.replay import ReplayRunner, Step, pbs_capture

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
QSTAT_ALL = ("qstat", "-fx", "-F", "json")


class Clock:
    """A settable clock for the cache."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    yield engine
    engine.dispose()


def _slurm_cache(engine: Engine, spool: Path, runner: FakeSacct, clock: Clock) -> UsageCache:
    return UsageCache(engine, SlurmScheduler(runner), SpoolReader(spool), "test",
                      chunk=timedelta(days=31), clock=clock)


def test_first_sync_lists_the_period_then_only_the_window_since_the_last(
    engine: Engine, tmp_path: Path
) -> None:
    jobs = generate(300, NOW, days=20)
    write_spool(tmp_path / "spool", jobs)
    runner, clock = FakeSacct(jobs), Clock(NOW)
    cache = _slurm_cache(engine, tmp_path / "spool", runner, clock)
    since = NOW - timedelta(days=20)
    first = cache.sync(since)
    assert runner.windows() == [(slurm_clock(since), slurm_clock(NOW))]
    assert (first.inserted, cache.count()) == (300, 300)

    later = generate(40, NOW + timedelta(hours=1), days=1 / 24, first=300, live=2)
    write_spool(tmp_path / "spool", later)
    runner.jobs = jobs + later
    clock.now = NOW + timedelta(hours=1)
    runner.calls.clear()
    second = cache.sync(since)
    # only the window since the last sync, 10 minutes of overlap
    assert runner.windows() == [(slurm_clock(NOW - timedelta(minutes=10)), slurm_clock(clock.now))]
    assert second.inserted == 40
    assert second.updated == 5  # the saves still live at the last sync; final rows untouched
    assert cache.count() == 340


def test_a_report_reaching_further_back_backfills_in_bounded_windows(
    engine: Engine, tmp_path: Path
) -> None:
    jobs = generate(200, NOW, days=90)
    write_spool(tmp_path / "spool", jobs)
    runner, clock = FakeSacct(jobs), Clock(NOW)
    cache = _slurm_cache(engine, tmp_path / "spool", runner, clock)
    cache.sync(NOW - timedelta(days=10))
    runner.calls.clear()
    cache.sync(NOW - timedelta(days=80))
    start = NOW - timedelta(days=80)
    edges = [start, start + timedelta(days=31), start + timedelta(days=62),
             NOW - timedelta(days=10) + timedelta(minutes=10)]
    backfill = [(slurm_clock(a), slurm_clock(b)) for a, b in zip(edges, edges[1:], strict=False)]
    incremental = (slurm_clock(NOW - timedelta(minutes=10)), slurm_clock(NOW))
    assert runner.windows() == [*backfill, incremental]
    in_period = [j for j in jobs if j.end >= start.timestamp()]
    assert cache.count() == len(in_period)


def test_purged_jobs_stay_in_the_cache_until_a_rebuild(engine: Engine, tmp_path: Path) -> None:
    jobs = generate(100, NOW, days=5)
    write_spool(tmp_path / "spool", jobs)
    runner, clock = FakeSacct(jobs), Clock(NOW)
    cache = _slurm_cache(engine, tmp_path / "spool", runner, clock)
    cache.sync(NOW - timedelta(days=5))
    runner.jobs = jobs[60:]  # slurmdbd purged the oldest 60 (PurgeJobAfter)
    clock.now = NOW + timedelta(minutes=30)
    cache.sync(NOW - timedelta(days=5))
    assert cache.count() == 100
    runner.calls.clear()
    stats = cache.rebuild(NOW - timedelta(days=1))
    # the rebuild reaches back as far as the cache did, in one window (5 days < 31)
    assert runner.windows() == [(slurm_clock(NOW - timedelta(days=5)), slurm_clock(clock.now))]
    assert stats.inserted == cache.count() == 40


def test_a_job_named_like_a_save_without_request_is_skipped(
    engine: Engine, tmp_path: Path
) -> None:
    (job,) = generate(1, NOW, days=1, live=0)
    foreign = job.line.rsplit("|", 1)[0] + "|"  # no comment, and no spec in the spool
    runner = FakeSacct([job])
    runner.jobs = [type(job)(**{**job.__dict__, "line": foreign})]
    cache = _slurm_cache(engine, tmp_path / "spool", runner, Clock(NOW))
    stats = cache.sync(NOW - timedelta(days=1))
    assert (stats.listed, stats.inserted) == (1, 0)


def _write_save(spool: Path, job_id: str, request_id: str, user: str, node: str,
                result: SaveResult | None) -> None:
    """The spool files the service and the node write for one save."""
    workdir = spool / request_id
    workdir.mkdir(parents=True)
    spec = SaveSpec(request_id=request_id, user=user, container="jupyter", target=f"r/{user}/x:1",
                    formats=(ImageFormat.OCI,), category="cpu", node=node, site_config="",
                    created="2026-11-23T13:20:00+00:00")
    (workdir / SPEC_FILE).write_text(spec.to_json())
    (spool / BY_JOB_DIR).mkdir(exist_ok=True)
    (spool / BY_JOB_DIR / job_id).symlink_to(Path("..") / request_id)
    if result is not None:
        write_result(workdir / RESULT_FILE, result)


def test_pbs_job_left_running_is_rechecked_by_id_once_out_of_the_window(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # qstat's relative script path must not find a file
    spool = tmp_path / "spool"
    _write_save(spool, "0.vm", "a" * 32, "alice", "vm",
                SaveResult(ok=True, reference="r/alice/x:1", digest="sha256:" + "1" * 64,
                           size_bytes=4321))
    clock = Clock(datetime(2026, 11, 23, 13, 20, 5, tzinfo=UTC))
    runner = ReplayRunner([
        # 02 was captured with `qstat -f -F json 0.vm`: the same JSON a full listing
        # prints while 0.vm is the only job (composed: argv of the listing, 02's output)
        Step.replay(QSTAT_ALL, pbs_capture("02_qstat_f_F_json_running")),
        # later the server's history no longer has 0.vm (09c: purged with qdel -x)
        Step.replay(QSTAT_ALL, pbs_capture("09c_qstat_fx_F_json_all_final")),
        Step.replay([*QSTAT_ALL, "0.vm"], pbs_capture("03_qstat_fx_F_json_finished")),
    ])
    # the captures' jobs are pbsuser's: portal mode, pbsuser the service account
    spool_reader = SpoolReader(spool, service_account="pbsuser")
    cache = UsageCache(engine, PbsScheduler(runner, clock=clock), spool_reader, "pbs",
                       clock=clock)
    cache.sync(datetime(2026, 11, 23, 13, 0, tzinfo=UTC))
    assert _states(engine) == {"0.vm": ("RUNNING", "succeeded")}  # pushed, cleaning up
    clock.now = datetime(2026, 11, 23, 13, 45, tzinfo=UTC)
    stats = cache.sync(datetime(2026, 11, 23, 13, 0, tzinfo=UTC))
    runner.assert_done()
    assert stats.rechecked == 1
    assert _states(engine) == {"0.vm": ("COMPLETED", "succeeded")}


def _states(engine: Engine) -> dict[str, tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(select(UsageJob.job_id, UsageJob.state, UsageJob.outcome))
        return {job_id: (state, outcome) for job_id, state, outcome in rows}
