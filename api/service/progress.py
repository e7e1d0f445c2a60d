"""One save's status: the scheduler's record joined with the spool's events and result."""

from __future__ import annotations

import pwd
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from builder_jobs.events import (
    SPOOL_FULL_EXIT,
    EventLog,
    ProgressEvent,
    SaveResult,
    Stage,
    read_result,
)
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE, SaveSpec
from scheduler_glue.base import JobRecord
from scheduler_glue.states import JobState

# Where each stage starts and ends on the progress bar, in percent.
_STAGE_SPAN: dict[Stage, tuple[int, int]] = {
    Stage.QUEUED: (0, 0),
    Stage.LOCATING: (2, 5),
    Stage.COMMITTING: (5, 50),
    Stage.EXPORTING: (5, 35),
    Stage.SQUASHING: (35, 60),
    Stage.PUSHING: (60, 95),
    Stage.CLEANING: (95, 99),
    Stage.DONE: (100, 100),
    Stage.FAILED: (100, 100),
}

_FINAL_REASONS: dict[JobState, str] = {
    JobState.CANCELLED: "the save job was cancelled",
    JobState.TIMEOUT: "the save job reached its time limit",
    JobState.NODE_FAIL: "the node failed while the save job ran",
    JobState.OUT_OF_MEMORY: "the save job ran out of memory",
}


@dataclass(frozen=True)
class SaveStatus:
    job_id: str
    request_id: str
    user: str
    container: str
    target: str
    formats: tuple[str, ...]
    category: str
    node: str
    state: JobState
    stage: Stage
    percent: int
    bytes_done: int | None
    bytes_total: int | None
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    digest: str
    size_bytes: int
    reason: str
    result: SaveResult | None

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> SaveStatus:
        return status_from_dict(data)

    @property
    def finished(self) -> bool:
        """The save is over: the job ended, or the image is pushed (the job may still be
        removing its temporary local copy)."""
        return self.state.final or self.stage is Stage.DONE

    def to_dict(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "request_id": self.request_id,
            "user": self.user,
            "container": self.container,
            "target": self.target,
            "formats": list(self.formats),
            "category": self.category,
            "node": self.node,
            "state": self.state.label,
            "final": self.state.final,
            "finished": self.finished,
            "stage": self.stage.value,
            "percent": self.percent,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "submit_time": _iso(self.submit_time),
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "sif_path": self.result.sif_path if self.result else "",
            "commit_method": self.result.commit_method if self.result else "",
            "commit_note": self.result.commit_note if self.result else "",
            "dropped_env": list(self.result.dropped_env) if self.result else [],
            "save_kind": self.result.save_kind if self.result else "",
            "incremental": self.result.incremental if self.result else False,
            "chain_layers": self.result.chain_layers if self.result else 0,
            "full_reason": self.result.full_reason if self.result else "",
            "bytes_pushed": self.result.bytes_pushed if self.result else 0,
            "seconds": dict(self.result.seconds) if self.result else {},
            "reason": self.reason,
        }


def status_from_dict(data: dict[str, object]) -> SaveStatus:
    """A :class:`SaveStatus` from its ``to_dict`` form (the API's CHK answer)."""
    state = next((s for s in JobState if s.label == data["state"]), JobState.UNKNOWN)
    stage = Stage(str(data["stage"]))
    seconds = data.get("seconds") or {}
    result = SaveResult(
        ok=stage is Stage.DONE,
        reference=str(data.get("target", "")),
        digest=str(data.get("digest", "")),
        size_bytes=int(str(data.get("size_bytes") or 0)),
        sif_path=str(data.get("sif_path", "")),
        commit_method=str(data.get("commit_method", "")),
        dropped_env=[str(n) for n in _list(data.get("dropped_env"))],
        incremental=data.get("incremental") is True,
        chain_layers=int(str(data.get("chain_layers") or 0)),
        full_reason=str(data.get("full_reason", "")),
        bytes_pushed=int(str(data.get("bytes_pushed") or 0)),
        seconds=dict(seconds) if isinstance(seconds, dict) else {},
        error=str(data.get("reason", "")),
    ) if stage.final else None
    return SaveStatus(
        job_id=str(data["job_id"]),
        request_id=str(data.get("request_id", "")),
        user=str(data.get("user", "")),
        container=str(data.get("container", "")),
        target=str(data.get("target", "")),
        formats=tuple(str(f) for f in _list(data.get("formats"))),
        category=str(data.get("category", "")),
        node=str(data.get("node", "")),
        state=state,
        stage=stage,
        percent=int(str(data.get("percent") or 0)),
        bytes_done=_int_or_none(data.get("bytes_done")),
        bytes_total=_int_or_none(data.get("bytes_total")),
        submit_time=_time(data.get("submit_time")),
        start_time=_time(data.get("start_time")),
        end_time=_time(data.get("end_time")),
        digest=str(data.get("digest", "")),
        size_bytes=int(str(data.get("size_bytes") or 0)),
        reason=str(data.get("reason", "")),
        result=result,
    )


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def build_status(
    job_id: str, spec: SaveSpec, record: JobRecord | None, workdir: Path
) -> SaveStatus:
    """Join what the scheduler says with what the node wrote."""
    events = EventLog(workdir / EVENTS_FILE).read()
    last = events[-1] if events else ProgressEvent(Stage.QUEUED)
    result = read_result(workdir / RESULT_FILE)
    state = record.state if record else JobState.UNKNOWN
    if state is JobState.UNKNOWN and result is not None:
        state = JobState.COMPLETED if result.ok else JobState.FAILED
    stage, reason = _stage_and_reason(state, last, result, record, workdir)
    return SaveStatus(
        job_id=job_id,
        request_id=spec.request_id,
        user=spec.user,
        container=spec.container,
        target=spec.target,
        formats=tuple(f.value for f in spec.formats),
        category=spec.category,
        node=(record.node if record and record.node else spec.node),
        state=state,
        stage=stage,
        percent=_percent(stage, last),
        bytes_done=last.bytes_done,
        bytes_total=last.bytes_total,
        submit_time=record.submit_time if record else None,
        start_time=record.start_time if record else None,
        end_time=record.end_time if record else None,
        digest=result.digest if result else "",
        size_bytes=result.size_bytes if result else 0,
        reason=reason,
        result=result,
    )


def _stage_and_reason(
    state: JobState, last: ProgressEvent, result: SaveResult | None, record: JobRecord | None,
    workdir: Path,
) -> tuple[Stage, str]:
    if result is not None and result.ok and state not in _FINAL_REASONS:
        return Stage.DONE, ""  # pushed; the job may still be cleaning up locally
    if not state.final:
        if state is JobState.PENDING:
            return Stage.QUEUED, (record.reason if record else "")
        if state is JobState.UNKNOWN:  # why the scheduler cannot tell (slurmdbd down...)
            return last.stage, (record.reason if record else "")
        return last.stage, ""
    if state is JobState.COMPLETED and result is not None and result.ok:
        return Stage.DONE, ""
    if result is not None and not result.ok:
        return Stage.FAILED, result.error
    if state in _FINAL_REASONS:
        return Stage.FAILED, _FINAL_REASONS[state] + _by_whom(record)
    if state is JobState.COMPLETED:
        return Stage.FAILED, "the save job ended without writing a result"
    return Stage.FAILED, _died(record, workdir)


def _died(record: JobRecord | None, workdir: Path) -> str:
    """Why a job that wrote no result ended, in the scheduler's own words where it has
    them (a signal, who cancelled, a full spool), for CLI, API, portal and reports alike."""
    if record is None:
        return "the save job ended without writing a result"
    if record.exit_code == SPOOL_FULL_EXIT and not record.signal:
        return (f"no space left in the save's spool {workdir} (in your home directory?): "
                "the save job could not write its progress or result there; free some "
                "space and save again")  # fmt: skip
    if record.signal:
        name = _signal_name(record.signal)
        return (f"the save job was killed by signal {record.signal} ({name}) before "
                "writing a result; see job.out in the spool")  # fmt: skip
    detail = f" ({record.raw_state})" if record.raw_state and " by " in record.raw_state else ""
    code = "" if record.exit_code is None else f" (exit code {record.exit_code})"
    return (f"the save job failed{code}{detail} before writing a result; see job.out in "
            "the spool")  # fmt: skip


def _by_whom(record: JobRecord | None) -> str:
    """`` by alice`` from Slurm's ``CANCELLED by 1001`` (a uid), else ""."""
    raw = record.raw_state if record else ""
    _, by, who = raw.partition(" by ")
    if not by or not who.strip().isdigit():
        return ""
    try:
        return f" by {pwd.getpwuid(int(who)).pw_name}"
    except KeyError:
        return f" by uid {who.strip()}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _percent(stage: Stage, last: ProgressEvent) -> int:
    start, end = _STAGE_SPAN[stage]
    if stage is not last.stage or not last.bytes_total:
        return start
    fraction = min(1.0, max(0.0, (last.bytes_done or 0) / last.bytes_total))
    return int(start + (end - start) * fraction)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
