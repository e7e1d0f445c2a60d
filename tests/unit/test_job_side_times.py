"""The save job's own measure of its run: ``started_at``/``ended_at`` in its result.

The job's unprivileged half (builder_jobs.job_side) relays a real child process standing
in for the node's privileged entry (which needs sudo and a batch job: the real one runs
in test_report_cluster.py): it prints its result, then keeps working (its cleanup)
before it exits. The result in the spool must span the whole of that.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder_jobs.events import EventStream, SaveResult, read_result
from builder_jobs.job_side import relay_save
from builder_jobs.spec import RESULT_FILE

CLEANUP_SECONDS = 0.6


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    """relay_save installs its cancel handlers; pytest's own come back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _entry(tmp_path: Path, result: SaveResult) -> list[str]:
    """A child that reports ``result`` as the privileged entry does, then cleans up."""
    line = tmp_path / "result.line"
    with line.open("w") as stream:
        EventStream(stream).finish(result)
    code = (
        f"import sys, time; sys.stdout.write(open({str(line)!r}).read()); "
        f"sys.stdout.flush(); time.sleep({CLEANUP_SECONDS})"
    )
    return [sys.executable, "-c", code]


def test_the_result_spans_the_job_up_to_the_entrys_exit(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    started = time.time()
    code = relay_save(spool, _entry(tmp_path, SaveResult(ok=True, reference="r")), started)
    finished = time.time()
    assert code == 0
    result = read_result(spool / RESULT_FILE)
    assert result is not None and result.ok and result.reference == "r"
    assert result.started_at == started
    assert result.ended_at is not None and result.ended_at <= finished
    # the end is taken after the entry's cleanup, not when its result came
    assert result.job_seconds is not None and result.job_seconds >= CLEANUP_SECONDS


def test_an_entry_without_result_leaves_no_measure(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    code = relay_save(spool, [sys.executable, "-c", "raise SystemExit(3)"], time.time())
    assert code == 1
    result = read_result(spool / RESULT_FILE)
    assert result is not None and not result.ok  # job_side's own failure record
    assert result.job_seconds is None  # reports use accounting's times for it


def test_a_result_from_a_newer_node_is_read_for_what_this_version_knows() -> None:
    """Mixed versions during an upgrade: a field this version lacks is skipped, the
    rest read; the result is not thrown away for it."""
    import json

    from builder_jobs.events import FailureKind, SaveResult

    data = json.loads(SaveResult(ok=False, failure=FailureKind.NO_SPACE, error="full").to_json())
    data["a_field_from_the_future"] = 1
    result = SaveResult.from_json(json.dumps(data))
    assert (result.ok, result.failure, result.error) == (False, FailureKind.NO_SPACE, "full")
