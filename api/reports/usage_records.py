"""One save job as the usage cache stores it: accounting record + request + result.

The scheduler's record says when the job was submitted, started and ended, where it ran
and in which state it ended. The request (user, formats, category) travels in the job's
metadata, or, when accounting kept none (Slurm stores the comment only once a job ends;
PBS log-only records have none), comes from the spec the service wrote to the spool.
The result file says whether the image was pushed, how many bytes and, for a failure,
the :class:`~builder_jobs.events.FailureKind`, and how long the job ran on its node (the
run time reports use, accounting's start → end only when the result has none).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.service.spool import BY_JOB_DIR
from builder_jobs.events import FailureKind, SaveResult, read_result, read_spool_text
from builder_jobs.spec import RESULT_FILE, SPEC_FILE, SaveSpec
from core.errors import ImgsaveError, InvalidRequest
from scheduler_glue.base import JobRecord
from scheduler_glue.metadata import requester_of
from scheduler_glue.states import JobState

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """How a save ended, as reports count it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNFINISHED = "unfinished"  # pending or running when the cache last looked


# Why a save failed, in the order reports list them.
FAILURE_REASONS = (
    "container_missing", "not_owner", "registry", "engine", "size_limit",
    "timeout", "node_failure", "cancelled", "out_of_memory", "other",
)  # fmt: skip

# The scheduler ended the job: its state is the reason, whatever the node wrote while it
# was being killed (node_save's SIGTERM handler records INTERNAL "cancelled").
_KILLED: Mapping[JobState, str] = {
    JobState.CANCELLED: "cancelled",
    JobState.TIMEOUT: "timeout",
    JobState.NODE_FAIL: "node_failure",
    JobState.OUT_OF_MEMORY: "out_of_memory",
}
_FROM_FAILURE: Mapping[FailureKind, str] = {
    FailureKind.CONTAINER_NOT_FOUND: "container_missing",
    FailureKind.NOT_OWNER: "not_owner",
    FailureKind.REGISTRY: "registry",
    FailureKind.ENGINE: "engine",
    FailureKind.SIZE_LIMIT: "size_limit",
    FailureKind.INVALID: "other",
    FailureKind.BUSY: "other",
    FailureKind.NO_SPACE: "other",  # a reason of its own needs a report column (issue 11)
    FailureKind.INTERNAL: "other",
}


def classify(state: JobState, result: SaveResult | None) -> tuple[Outcome, str]:
    """(outcome, failure reason or "") of a save.

    A result saying the image was pushed is a success even if the job was then killed
    while removing its local copy; without a result file (purged spool) a COMPLETED job
    counts as a success. A failure's reason is the scheduler's (cancelled, timeout, node
    failure, out of memory) when it ended the job, else the result's FailureKind, else
    ``other``.
    """
    if result is not None and result.ok:
        return Outcome.SUCCEEDED, ""
    if not state.final:
        return Outcome.UNFINISHED, ""
    if state in _KILLED:
        return Outcome.FAILED, _KILLED[state]
    if result is not None and result.failure is not None:
        return Outcome.FAILED, _FROM_FAILURE[result.failure]
    if state.succeeded:
        return Outcome.SUCCEEDED, ""
    return Outcome.FAILED, "other"


@dataclass(frozen=True)
class SpoolReader:
    """Reads the spools saves are submitted from: ``{spool}/{request_id}/`` and
    ``{spool}/by-job/{id}``, where each job's spool is its owner's (``root`` is one
    spool for every owner, or the site's rule ``owner -> spool``). Whose a job is comes
    from the scheduler; a job of ``service_account`` is the requester's in its metadata.
    """

    root: Path | Callable[[str], Path]
    service_account: str = "imgsave"

    def spool_of(self, owner: str) -> Path | None:
        if isinstance(self.root, Path):
            return self.root
        try:
            return self.root(owner)
        except ImgsaveError:
            return None  # an owner unknown here: no spool to read

    def spec_for_job(self, job_id: str, owner: str = "") -> SaveSpec | None:
        """The spec of the save job ``job_id`` from its owner's index, or None."""
        spool = self.spool_of(owner)
        if spool is None or not job_id or "/" in job_id or job_id.startswith("."):
            return None
        text = read_spool_text(spool / BY_JOB_DIR / job_id / SPEC_FILE)
        try:
            return SaveSpec.from_json(text) if text is not None else None
        except InvalidRequest:
            return None

    def result_for(self, request_id: str, owner: str = "") -> SaveResult | None:
        """The request's ``result.json``, or None when absent or unreadable."""
        spool = self.spool_of(owner)
        if spool is None or not request_id.isalnum():
            return None
        return read_result(spool / request_id / RESULT_FILE)


def request_of(record: JobRecord, spool: SpoolReader) -> tuple[dict[str, str], str]:
    """(request metadata, requested node) of a save job; ({}, "") if it is no save.

    A job named like a save but with neither metadata nor a spec in the spool is
    someone else's job (or a save whose spool and metadata are both gone): skipped.
    """
    meta = dict(record.metadata)
    spec = None
    # a step of the user's job (--in-job) names only its request: the rest is the spec's
    if not meta.get("request_id", "").isalnum() or "target" not in meta:
        spec = spool.spec_for_job(record.job_id, record.user)
        if spec is None:
            return {}, ""
        meta = {
            "request_id": spec.request_id,
            "user": spec.user,
            "formats": ",".join(f.value for f in spec.formats),
            "category": spec.category,
            "target": spec.target,
        }
    node = record.node or meta.get("node", "")
    if not node:  # never ran (cancelled while pending): the node it was pinned to
        spec = spec or spool.spec_for_job(record.job_id, record.user)
        node = spec.node if spec is not None else ""
    return meta, node


def cache_row(
    cluster: str, record: JobRecord, spool: SpoolReader, now: datetime
) -> dict[str, Any] | None:
    """The ``usage_jobs`` row for a save job, or None if ``record`` is not a save."""
    meta, node = request_of(record, spool)
    if not meta:
        return None
    # The scheduler's owner decides whose save it is; a forged comment counts for nobody.
    user = (requester_of(record.user, meta, spool.service_account) if record.user
            else meta.get("user", ""))  # fmt: skip
    if not user:
        return None
    result = spool.result_for(meta["request_id"], record.user)
    outcome, reason = classify(record.state, result)
    submitted = record.submit_time or record.start_time or record.end_time or now
    ok = result is not None and result.ok
    # sacct prints a Start (the cancel time) for a job cancelled before it got a node:
    # only a job that was given a node waited and ran.
    started = bool(record.node)
    run = run_seconds_of(record, result) if record.state.final and started else None
    return {
        "cluster": cluster,
        "job_id": record.job_id,
        "request_id": meta["request_id"],
        "user": user,
        "account": record.account,
        "node": node,
        "formats": meta.get("formats", ""),
        "category": meta.get("category", ""),
        "state": record.state.name,
        "final": record.state.final,
        "outcome": outcome.value,
        "reason": reason,
        "submit_time": utc_naive(submitted),
        "submit_epoch": int(submitted.timestamp()),
        "start_time": utc_naive(record.start_time),
        "end_time": utc_naive(record.end_time),
        "wait_seconds": record.queue_wait_seconds if started else None,
        "run_seconds": run,
        "cpu_seconds": record.cpu_seconds,
        "bytes_pushed": (result.bytes_pushed or result.size_bytes) if ok and result else 0,
        "image_ref": (result.reference if ok and result is not None else "")[:512],
        "image_digest": (result.digest if ok and result is not None else "")[:100],
        "synced_at": utc_naive(now),
    }


def run_seconds_of(record: JobRecord, result: SaveResult | None) -> float | None:
    """How long a finished save ran: the node's own measure when its result carries one,
    else accounting's start → end. Accounting's end is late when slurmctld restarts as
    the job ends (it records the restart's time: 72 s late seen); the node's is not."""
    measured = result.job_seconds if result is not None else None
    return measured if measured is not None else record.run_seconds


def utc_naive(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC without a zone, as every table of imgsave stores times."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None)

