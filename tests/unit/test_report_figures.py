"""Report figures: outcome and reason rules, periods, groupings, percentiles, the registry
check and the private-cache fallback. Pure functions, plus build_report on the FAKE sacct
of bench/report_scale.py (see test_report_cache.py for why)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.reports.report import build_report
from api.reports.usage_records import Outcome, classify
from api.reports.usage_report import Period, UsageRow, _p95, aggregate, parse_groupings, parse_when
from bench.report_scale import FakeSacct, bench_site, generate, write_spool
from builder_jobs.events import FailureKind, SaveResult
from core.errors import InvalidRequest
from registry.presence import image_presence
from scheduler_glue.states import JobState

FAILED = SaveResult(ok=False, failure=FailureKind.REGISTRY)
INTERNAL = SaveResult(ok=False, failure=FailureKind.INTERNAL)
PUSHED = SaveResult(ok=True, size_bytes=7)


@pytest.mark.parametrize(
    ("state", "result", "expected"),
    [
        (JobState.COMPLETED, PUSHED, (Outcome.SUCCEEDED, "")),
        (JobState.COMPLETED, None, (Outcome.SUCCEEDED, "")),  # result file purged
        (JobState.RUNNING, PUSHED, (Outcome.SUCCEEDED, "")),  # pushed, cleaning up
        (JobState.RUNNING, None, (Outcome.UNFINISHED, "")),
        (JobState.PENDING, None, (Outcome.UNFINISHED, "")),
        (JobState.UNKNOWN, None, (Outcome.UNFINISHED, "")),
        (JobState.FAILED, FAILED, (Outcome.FAILED, "registry")),
        (JobState.FAILED, SaveResult(ok=False, failure=FailureKind.CONTAINER_NOT_FOUND),
         (Outcome.FAILED, "container_missing")),
        (JobState.FAILED, INTERNAL, (Outcome.FAILED, "other")),
        (JobState.FAILED, None, (Outcome.FAILED, "other")),
        # the scheduler's kill wins over what the node wrote while dying
        (JobState.CANCELLED, INTERNAL, (Outcome.FAILED, "cancelled")),
        (JobState.TIMEOUT, INTERNAL, (Outcome.FAILED, "timeout")),
        (JobState.NODE_FAIL, None, (Outcome.FAILED, "node_failure")),
        (JobState.OUT_OF_MEMORY, None, (Outcome.FAILED, "out_of_memory")),
        (JobState.CANCELLED, PUSHED, (Outcome.SUCCEEDED, "")),  # killed after the push
    ],
)
def test_outcome_and_reason(state: JobState, result: SaveResult | None,
                            expected: tuple[Outcome, str]) -> None:
    assert classify(state, result) == expected


def test_groupings_are_checked() -> None:
    assert parse_groupings(" month, category ") == ["month", "category"]
    for bad in ("", "colour", "user,user"):
        with pytest.raises(InvalidRequest, match="cannot group by"):
            parse_groupings(bad)


def test_period_dates_are_local_days_and_until_includes_its_day() -> None:
    period = Period.parse("2026-01-01", "2026-01-31")
    assert period.since == datetime(2026, 1, 1).astimezone()
    assert period.until == datetime(2026, 2, 1).astimezone()
    assert period.label == "2026-01-01 – 2026-01-31"
    exact = parse_when("2026-01-05T10:30:00+00:00", datetime.now(UTC))
    assert exact == datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    with pytest.raises(InvalidRequest, match="not YYYY-MM-DD"):
        Period.parse("01/02/2026", None)
    with pytest.raises(InvalidRequest, match="not before"):
        Period.parse("2026-02-01", "2026-01-01")


def test_percentiles_are_nearest_rank() -> None:
    assert _p95([float(v) for v in range(1, 21)]) == 19.0  # ceil(0.95 * 20) = 19th
    assert _p95([float(v) for v in range(1, 101)]) == 95.0
    assert _p95([3.0]) == 3.0 and _p95([]) is None
    # outcome, reason, wait, run, cpu, bytes per save: one group
    saves = [("succeeded", "", 1.0, 10.0, 2.0, 5), ("failed", "engine", 3.0, 20.0, None, 0),
             ("unfinished", "", None, None, None, 0)]
    (row,) = aggregate([("alice", *s) for s in saves], ["user"])
    assert (row.saves, row.succeeded, row.failed, row.unfinished) == (3, 1, 1, 1)
    assert (row.median_wait, row.median_run, row.p95_run) == (2.0, 15.0, 20.0)
    assert (row.cpu_seconds, row.bytes_pushed, row.failed_by_reason["engine"]) == (2.0, 5, 1)


class RecordingRegistry:
    """Tags and digests in a dict; counts the calls (a stand-in for RegistryClient)."""

    def __init__(self, images: dict[str, dict[str, str]]) -> None:
        self.images = images  # repository → tag → digest
        self.calls: list[tuple[str, str]] = []

    def list_tags(self, repository: str) -> list[str]:
        self.calls.append(("tags", repository))
        return list(self.images.get(repository, {}))

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        self.calls.append(("head", f"{repository}@{reference}"))
        return reference if reference in self.images.get(repository, {}).values() else None


def test_registry_check_batches_per_repository() -> None:
    d1, d2, d3 = ("sha256:" + c * 64 for c in "123")
    client = RecordingRegistry({"alice/env": {"v2": d2}})
    images = [("127.0.0.1:5000/alice/env:v1", d1), ("127.0.0.1:5000/alice/env:v2", d2),
              ("127.0.0.1:5000/alice/env:v2", d2),  # the same image twice: asked once
              ("127.0.0.1:5000/bob/gone:v1", d3), ("127.0.0.1:5000/bob/gone:v2", d3),
              ("127.0.0.1:5000/alice/sif:v1", ""), ("other.org/alice/env:v1", d1)]
    found = image_presence(client, "http://127.0.0.1:5000", images)
    assert found == {
        ("127.0.0.1:5000/alice/env:v1", d1): False,
        ("127.0.0.1:5000/alice/env:v2", d2): True,
        ("127.0.0.1:5000/bob/gone:v1", d3): False,
        ("127.0.0.1:5000/bob/gone:v2", d3): False,
        ("127.0.0.1:5000/alice/sif:v1", ""): False,
    }
    assert sorted(client.calls) == sorted([
        ("tags", "alice/env"), ("head", f"alice/env@{d1}"), ("head", f"alice/env@{d2}"),
        ("tags", "bob/gone"), ("tags", "alice/sif"),
    ])


def test_registry_figures_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    jobs = generate(60, now, days=2, live=0)
    write_spool(tmp_path / "spool", jobs)
    site = bench_site(tmp_path, FakeSacct(jobs))
    pushed = [j for j in jobs if j.result is not None and j.result.ok]
    kept = {(j.result.reference, j.result.digest) for j in pushed[::3] if j.result}
    monkeypatch.setattr(type(site), "registry", None, raising=False)
    asked: list[list[tuple[str, str]]] = []

    def presence(client: object, url: str, images: list[tuple[str, str]]) -> dict[
            tuple[str, str], bool]:
        asked.append(images)
        return {image: image in kept for image in images}

    monkeypatch.setattr("api.reports.report.image_presence", presence)
    report = build_report(site, since=(now - timedelta(days=3)).isoformat(), by="user",
                          check_registry=True)
    assert sorted(asked[0]) == sorted((j.result.reference, j.result.digest)
                                      for j in pushed if j.result)
    assert report.total.images_present == len(kept)
    assert report.total.images_deleted == len(pushed) - len(kept)
    assert sum(r.images_present or 0 for r in report.rows) == len(kept)
    plain = build_report(site, since=(now - timedelta(days=3)).isoformat(), by="user")
    assert plain.total.images_present is None and len(asked) == 1


def test_an_unwritable_cache_falls_back_to_a_private_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service account's shared cache read-only: a private in-memory copy."""
    import api.reports.report

    now = datetime.now(UTC)
    jobs = generate(30, now, days=1, live=0)
    write_spool(tmp_path / "spool", jobs)
    site = bench_site(tmp_path, FakeSacct(jobs))
    # as the service account (only it uses the site's database; others, root included,
    # keep a private cache in their own spool: test_a_users_report_never_opens_the_site_db)
    monkeypatch.setattr(api.reports.report, "current_account", lambda: site.config.service_account)
    shared = build_report(site, since=(now - timedelta(days=2)).isoformat(), by="outcome")
    read_only = site.config.model_copy(update={
        "database_url": f"sqlite:///file:{tmp_path / 'imgsave.db'}?mode=ro&uri=true"})
    site.config = read_only
    private = build_report(site, since=(now - timedelta(days=2)).isoformat(), by="outcome")
    assert [r.to_dict() for r in private.rows] == [r.to_dict() for r in shared.rows]
    assert sum(r.saves for r in private.rows) == 30
    assert "usage cache not writable" in caplog.text


def test_a_users_report_never_opens_the_site_db(tmp_path: Path) -> None:
    """Anyone but the service account reports from a private cache in their own spool:
    the site's database (tokens, every user's usage) is the service account's, 0600."""
    now = datetime.now(UTC)
    jobs = generate(30, now, days=1, live=0)
    write_spool(tmp_path / "spool", jobs)
    site = bench_site(tmp_path, FakeSacct(jobs))
    shared_db = tmp_path / "site.db"
    site.config = site.config.model_copy(update={"database_url": f"sqlite:///{shared_db}"})
    report = build_report(site, since=(now - timedelta(days=2)).isoformat(), by="outcome")
    assert sum(r.saves for r in report.rows) == 30
    assert not shared_db.exists()
    private = site.config.spool_for("root") / "usage-cache.db"
    assert private.exists() and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_usage_row_dict_has_every_reason() -> None:
    row = UsageRow({"user": "a"}).to_dict()
    assert [k for k in row if k.startswith("failed_")] == [
        "failed_container_missing", "failed_not_owner", "failed_registry", "failed_engine",
        "failed_size_limit", "failed_timeout", "failed_node_failure", "failed_cancelled",
        "failed_out_of_memory", "failed_other",
    ]


def test_a_report_spans_at_most_ten_years() -> None:
    """A first report syncs accounting month by month: a since in 1990 is refused."""
    from api.reports.usage_report import Period
    from core.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="at most 10 years"):
        Period.parse("1990-01-01", "2026-01-01")
    assert Period.parse("2017-01-01", "2026-01-01").since.year == 2017
