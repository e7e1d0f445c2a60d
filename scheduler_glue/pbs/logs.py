"""Pure parsers for PBS Pro's logs: the accounting log and ``tracejob`` output.

These are the fallbacks when ``qstat -x`` does not know a job (job history disabled,
or purged after ``job_history_duration``). Both give the same facts in different
dress, so both feed one :class:`JobFacts` that becomes a
:class:`~scheduler_glue.base.JobRecord`.

Accounting log (``$PBS_HOME/server_priv/accounting/YYYYMMDD``, one file per server-local
day), one record a line: ``11/23/2026 13:20:06;E;0.vm;user=pbsuser ... Exit_status=0``.
Record types used: ``Q`` queued, ``S`` started, ``E`` ended, ``D`` deleted (``qdel``),
``A`` aborted by the server, ``R`` requeued. A job deleted while queued has only Q and
D, no E. ``tracejob`` prints the same records (as ``A`` lines, without their type) among
server (``S``), MoM (``M``) and scheduler (``L``) log lines; run as an ordinary user it
may show no ``A`` lines at all, so the server lines are read too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

from scheduler_glue.base import JobRecord
from scheduler_glue.pbs.parse import finished_outcome, first_exec_host, parse_duration
from scheduler_glue.states import JobState

_LOG_TIME_FORMAT = "%m/%d/%Y %H:%M:%S"
_FIELD = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')
_TRACE_LINE = re.compile(r"^(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d)\s+([A-Z])\s+(.*)$")
_TRACE_JOB = re.compile(r"^Job: (\S+)\s*$")
_QUEUED = re.compile(
    r"^Job Queued at request of \S+, owner = (?P<owner>[^,]+), "
    r"job name = (?P<name>[^,]+), queue = (?P<queue>\S+)"
)
_RUN = re.compile(r"^Job Run at request of \S+ on exec_vnode \((?P<vnode>[^:)]+)")
_DELETED = re.compile(r"^Job to be deleted at request of (?P<who>\S+)")


@dataclass(frozen=True)
class AccountingRecord:
    """One line of the accounting log."""

    time: datetime
    kind: str  # Q, S, E, D, A, R, ...
    job_id: str
    fields: Mapping[str, str]


@dataclass
class JobFacts:
    """What the logs say about one job, gathered line by line."""

    job_id: str
    name: str = ""
    user: str = ""
    queue: str = ""
    account: str = ""
    node: str = ""
    submit: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    exit_status: int | None = None
    cpu_seconds: float | None = None
    deleted_by: str = ""
    deleted_at: datetime | None = None
    seen: list[str] = field(default_factory=list)  # record kinds in order, e.g. Q S D E

    def add(self, kind: str) -> None:
        if kind not in self.seen:
            self.seen.append(kind)


def parse_log_time(text: str, tz: tzinfo | None = None) -> datetime | None:
    """``11/23/2026 13:20:02`` (the server's local time) as an aware datetime."""
    try:
        naive = datetime.strptime(text.strip(), _LOG_TIME_FORMAT)
    except ValueError:
        return None
    return naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()


def parse_fields(message: str) -> dict[str, str]:
    """``key=value key="quoted value"`` pairs of an accounting record."""
    result: dict[str, str] = {}
    for key, value in _FIELD.findall(message):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        result[key] = value
    return result


def parse_accounting_log(text: str, tz: tzinfo | None = None) -> list[AccountingRecord]:
    """Every well-formed record of an accounting log file (others are skipped)."""
    records = []
    for line in text.splitlines():
        parts = line.split(";", 3)
        if len(parts) < 3:
            continue
        when = parse_log_time(parts[0], tz)
        if when is None or not parts[1]:
            continue
        message = parts[3] if len(parts) > 3 else ""
        records.append(AccountingRecord(when, parts[1], parts[2], parse_fields(message)))
    return records


def accounting_log_paths(directory: Path, since: datetime, until: datetime) -> list[Path]:
    """The daily files (``YYYYMMDD``) that may hold records between since and until.

    One day of margin each side covers a server whose zone differs from ours.
    """
    first: date = since.astimezone().date() - timedelta(days=1)
    last: date = until.astimezone().date() + timedelta(days=1)
    paths = []
    day = first
    while day <= last:
        paths.append(directory / day.strftime("%Y%m%d"))
        day += timedelta(days=1)
    return paths


def apply_accounting(facts: JobFacts, kind: str, when: datetime, fields: Mapping[str, str]) -> None:
    """Fold one accounting record (from the log or a tracejob ``A`` line) into facts."""
    facts.add(kind)
    facts.user = fields.get("user", facts.user)
    facts.name = fields.get("jobname", facts.name)
    facts.queue = fields.get("queue", facts.queue)
    facts.account = fields.get("account", facts.account)
    if "exec_host" in fields:
        facts.node = first_exec_host(fields["exec_host"])
    facts.submit = (
        _epoch(fields.get("qtime") or fields.get("ctime"))
        or facts.submit
        or (when if kind == "Q" else None)
    )
    facts.start = _epoch(fields.get("start")) or facts.start or (when if kind == "S" else None)
    if kind in ("E", "A"):
        facts.end = _epoch(fields.get("end")) or when
    if "Exit_status" in fields:
        facts.exit_status = _int(fields["Exit_status"])
    if "resources_used.cput" in fields:
        facts.cpu_seconds = parse_duration(fields["resources_used.cput"])
    if kind == "D":
        facts.deleted_by = fields.get("requestor", facts.deleted_by)
        facts.deleted_at = facts.deleted_at or when
    if kind == "R":  # requeued: it will start (and maybe end) again
        facts.start, facts.end, facts.exit_status = None, None, None


def _epoch(value: str | None) -> datetime | None:
    number = _int(value)
    return datetime.fromtimestamp(number, tz=UTC) if number is not None else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def facts_from_accounting(records: Iterable[AccountingRecord]) -> dict[str, JobFacts]:
    """Accounting records grouped by job id, in log order."""
    jobs: dict[str, JobFacts] = {}
    for record in records:
        facts = jobs.setdefault(record.job_id, JobFacts(record.job_id))
        apply_accounting(facts, record.kind, record.time, record.fields)
    return jobs


def parse_tracejob(text: str, job_id: str, tz: tzinfo | None = None) -> JobFacts | None:
    """``tracejob JOB`` output as facts; None when the logs know nothing of the job.

    tracejob exits 0 for an unknown job and may still print unrelated lines (a failed
    ``qdel`` of that id), so a job counts as known only once it was queued or ran.
    """
    facts = JobFacts(job_id)
    for line in text.splitlines():
        if match := _TRACE_JOB.match(line.strip()):
            facts.job_id = match.group(1)
            continue
        match = _TRACE_LINE.match(line.strip())
        when = parse_log_time(match.group(1), tz) if match else None
        if match is None or when is None:
            continue
        source, message = match.group(2), match.group(3).strip()
        if source == "A":
            fields = parse_fields(message)
            apply_accounting(facts, _accounting_kind(fields), when, fields)
        elif source == "S":
            _apply_server_line(facts, when, message)
    if not ({"Q", "S", "E"} & set(facts.seen)):
        return None
    return facts


def _accounting_kind(fields: Mapping[str, str]) -> str:
    """tracejob drops the record type of ``A`` lines; infer it from the fields."""
    if "requestor" in fields:
        return "D"
    if "end" in fields or "Exit_status" in fields:
        return "E"
    if "start" in fields:
        return "S"
    return "Q"


def _apply_server_line(facts: JobFacts, when: datetime, message: str) -> None:
    if match := _QUEUED.match(message):
        facts.add("Q")
        facts.user = facts.user or match.group("owner").split("@", 1)[0]
        facts.name = facts.name or match.group("name").strip()
        facts.queue = facts.queue or match.group("queue")
        facts.submit = facts.submit or when
    elif match := _RUN.match(message):
        facts.add("S")
        facts.node = facts.node or match.group("vnode")
        facts.start = facts.start or when
    elif message.startswith("Exit_status="):
        fields = parse_fields(message)
        facts.add("E")
        facts.exit_status = _int(fields.get("Exit_status"))
        facts.cpu_seconds = parse_duration(fields.get("resources_used.cput"))
        facts.end = facts.end or when
    elif match := _DELETED.match(message):
        facts.add("D")
        facts.deleted_by = facts.deleted_by or match.group("who")
        facts.deleted_at = facts.deleted_at or when


def record_from_facts(
    facts: JobFacts, source: str, metadata: Mapping[str, str] | None = None
) -> JobRecord:
    """The JobRecord the logs support. ``source`` names them in ``raw_state``."""
    seen = set(facts.seen)
    deleted = "D" in seen
    exit_code: int | None = None
    sig: int | None = None
    end = facts.end
    if "E" in seen or "A" in seen:
        outcome = finished_outcome(facts.exit_status, deleted=deleted)
        state, exit_code, sig, reason = (
            outcome.state,
            outcome.exit_code,
            outcome.signal,
            outcome.reason,
        )
        if "A" in seen and facts.exit_status is None and not deleted:
            reason = "aborted by the PBS server"
    elif deleted and facts.start is None:
        state, reason, end = JobState.CANCELLED, "deleted before it ran", facts.deleted_at
    elif deleted:
        state, reason = JobState.COMPLETING, "deleted; the end record is not written yet"
    elif facts.start is not None:
        state, reason = JobState.RUNNING, ""
    else:
        state, reason = JobState.PENDING, ""
    if deleted and facts.deleted_by:
        reason = f"{reason} (by {facts.deleted_by})"
    return JobRecord(
        job_id=facts.job_id,
        state=state,
        raw_state=f"{source}:{''.join(facts.seen)}",
        name=facts.name,
        user=facts.user,
        node=facts.node,
        exit_code=exit_code,
        signal=sig,
        submit_time=facts.submit,
        start_time=facts.start,
        end_time=end,
        cpu_seconds=facts.cpu_seconds,
        account=facts.account,
        partition=facts.queue,
        reason=reason,
        metadata=dict(metadata or {}),
    )
