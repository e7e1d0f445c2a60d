"""Pure parsers for PBS Pro output: qsub, ``qstat -f -F json``, ``pbsnodes -F json``.

Nothing here runs a command or touches a file; :mod:`scheduler_glue.pbs.backend` hands
these to the base class's runner. The log-based fallbacks (``tracejob``, the accounting
log) are in :mod:`scheduler_glue.pbs.logs`. Every parser is tested on real OpenPBS 23.06
output (``tests/captures/pbs/``).

Job states: ``job_state`` letters and the finished-job outcome rules below follow the
PBS Professional Reference Guide ("Job States", "Job Substates", "Job Exit Status";
https://help.altair.com/) and OpenPBS ``src/include/job.h``
(https://github.com/openpbs/openpbs/blob/master/src/include/job.h), checked against the
captures: success is F/92/0, a failing script F/93/N, ``qdel`` of a running job
F/91/271 (256 + SIGTERM), walltime exceeded F/93/-29, ``qdel`` of a queued job F/91
with no ``Exit_status``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import PurePosixPath
from typing import Any

from core.errors import SchedulerError
from scheduler_glue.base import JobRecord
from scheduler_glue.states import JobState

log = logging.getLogger(__name__)

# Live job_state letters. F (finished) and X (finished subjob) are not here: their
# state comes from Exit_status and substate, see finished_outcome().
_STATE_MAP: Mapping[str, JobState] = {
    "Q": JobState.PENDING,  # queued, eligible to run or be routed
    "H": JobState.PENDING,  # held by user, operator or a failed dependency
    "W": JobState.PENDING,  # waiting for its execution time (or a failed stage-in)
    "T": JobState.PENDING,  # in transit to another queue or server
    "R": JobState.RUNNING,
    "B": JobState.RUNNING,  # job array has begun
    "S": JobState.RUNNING,  # suspended by the server (still holds its node)
    "U": JobState.RUNNING,  # suspended because the workstation is busy
    "E": JobState.COMPLETING,  # exiting after having run (kill_delay, stage-out)
    "M": JobState.UNKNOWN,  # moved to another server: this server cannot tell more
}
FINISHED_LETTERS = frozenset({"F", "X"})

SUBSTATE_TERMINATED = 91  # finished because it was deleted (qdel)
SUBSTATE_FINISHED = 92
SUBSTATE_FAILED = 93

# Negative Exit_status values are set by PBS, not by the job (JOB_EXEC_* in job.h).
_EXEC_CODES: Mapping[int, tuple[JobState, str]] = {
    -1: (JobState.FAILED, "JOB_EXEC_FAIL1: job could not start (before files were staged)"),
    -2: (JobState.FAILED, "JOB_EXEC_FAIL2: job could not start (after files were staged)"),
    -3: (JobState.NODE_FAIL, "JOB_EXEC_RETRY: execution failed, PBS would retry"),
    -4: (JobState.NODE_FAIL, "JOB_EXEC_INITABT: aborted when the MoM restarted"),
    -5: (JobState.NODE_FAIL, "JOB_EXEC_INITRST: aborted when the MoM restarted"),
    -6: (JobState.NODE_FAIL, "JOB_EXEC_INITRMG: aborted when the MoM restarted"),
    -7: (JobState.FAILED, "JOB_EXEC_BADRESRT: restart from checkpoint failed"),
    -10: (JobState.FAILED, "JOB_EXEC_FAILUID: invalid user or group on the node"),
    -11: (JobState.FAILED, "JOB_EXEC_RERUN: job was requeued"),
    -12: (JobState.FAILED, "JOB_EXEC_CHKP: job was checkpointed and killed"),
    -13: (JobState.FAILED, "JOB_EXEC_FAIL_PASSWORD: bad password"),
    -14: (JobState.NODE_FAIL, "JOB_EXEC_RERUN_SIS_FAIL: a sister node failed"),
    -15: (JobState.FAILED, "JOB_EXEC_QUERST: requeued for restart from checkpoint"),
    -16: (JobState.FAILED, "JOB_EXEC_FAILHOOK_RERUN: an execution hook rejected the job"),
    -17: (JobState.FAILED, "JOB_EXEC_FAILHOOK_DELETE: an execution hook rejected the job"),
    -18: (JobState.FAILED, "JOB_EXEC_HOOK_RERUN: a hook requeued the job"),
    -19: (JobState.FAILED, "JOB_EXEC_HOOK_DELETE: a hook deleted the job"),
    -20: (JobState.NODE_FAIL, "JOB_EXEC_RERUN_MS_FAIL: lost contact with the node"),
    -21: (JobState.FAILED, "JOB_EXEC_FAIL_SECURITY: insecure PBS directory on the node"),
    -22: (JobState.FAILED, "JOB_EXEC_HOOKERROR: a hook failed or timed out"),
    -23: (JobState.FAILED, "JOB_EXEC_FAIL_KRB5: no Kerberos credentials"),
    -24: (JobState.FAILED, "JOB_EXEC_KILL_NCPUS_BURST: used more CPUs than requested"),
    -25: (JobState.FAILED, "JOB_EXEC_KILL_NCPUS_SUM: used more CPUs than requested"),
    -26: (JobState.OUT_OF_MEMORY, "JOB_EXEC_KILL_VMEM: exceeded its vmem limit"),
    -27: (JobState.OUT_OF_MEMORY, "JOB_EXEC_KILL_MEM: exceeded its mem limit"),
    -28: (JobState.TIMEOUT, "JOB_EXEC_KILL_CPUT: exceeded its cput limit"),
    -29: (JobState.TIMEOUT, "JOB_EXEC_KILL_WALLTIME: exceeded its walltime"),
    -30: (JobState.NODE_FAIL, "JOB_EXEC_JOINJOB: a sister node could not join the job"),
}
SIGNAL_OFFSET = 256  # Exit_status = 256 + signal when the job was killed by a signal

# The PBS job-id grammar: "12.vm", "12.server.example.org", array jobs "27[].vm", and
# the bare sequence number users type ("12"). qsub prints one per line on stdout.
JOB_ID = re.compile(r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9_.-]+)?")
_UNKNOWN_JOB = re.compile(r"^qstat: Unknown Job Id (\S+)$")
_FINISHED_JOB = re.compile(r"^qstat: (\S+) Job has finished, use -x or -H")
_CTIME_FORMAT = "%a %b %d %H:%M:%S %Y"  # qstat prints ctime(3) in the client's zone


@dataclass(frozen=True)
class Outcome:
    """How a finished job ended, decided from Exit_status and whether it was deleted."""

    state: JobState
    exit_code: int | None
    signal: int | None
    reason: str


@dataclass(frozen=True)
class QstatAnswer:
    """``qstat -f -F json`` for some ids: the jobs it printed and the ids it refused."""

    jobs: Mapping[str, Mapping[str, Any]]
    unknown: frozenset[str]  # "Unknown Job Id" (never existed, or history purged)
    finished: frozenset[str]  # "Job has finished" (asked without -x)


def finished_outcome(exit_status: int | None, *, deleted: bool) -> Outcome:
    """The final state of a job that PBS reports as finished.

    ``deleted`` is true when someone ran ``qdel`` (substate 91, or a ``D`` accounting
    record): such a job is CANCELLED whatever its exit status, since a save that was
    asked to stop must not count as done even if its script exited 0 on SIGTERM.
    """
    if exit_status is None:
        if deleted:
            return Outcome(JobState.CANCELLED, None, None, "deleted before it ran")
        return Outcome(JobState.FAILED, None, None, "finished without an exit status")
    if exit_status > SIGNAL_OFFSET:
        sig = exit_status - SIGNAL_OFFSET
        what = f"killed by signal {sig} ({_signal_name(sig)})"
        if deleted:
            return Outcome(JobState.CANCELLED, None, sig, f"deleted: {what}")
        return Outcome(JobState.FAILED, None, sig, what)
    if exit_status < 0:
        state, why = _EXEC_CODES.get(
            exit_status, (JobState.FAILED, f"PBS exit status {exit_status}")
        )
        if deleted:
            return Outcome(JobState.CANCELLED, exit_status, None, f"deleted: {why}")
        return Outcome(state, exit_status, None, why)
    if deleted:
        return Outcome(JobState.CANCELLED, exit_status, None, f"deleted: exit {exit_status}")
    if exit_status == 0:
        return Outcome(JobState.COMPLETED, 0, None, "")
    return Outcome(JobState.FAILED, exit_status, None, f"exit code {exit_status}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def parse_qsub_job_id(stdout: str) -> str:
    """The job id qsub printed (``12.vm``); SchedulerError if there is none."""
    for line in reversed(stdout.strip().splitlines()):
        match = JOB_ID.fullmatch(line.strip())
        if match:
            return match.group(0)
    raise SchedulerError(
        f"qsub printed no job id (expected a line matching {JOB_ID.pattern!r}): {stdout.strip()!r}"
    )


# qstat -x on a server with job_history_enable = False (exit 0, header-only JSON)
HISTORY_OFF = "is not configured to maintain job history"


def parse_qstat_json(stdout: str, stderr: str, returncode: int) -> QstatAnswer:
    """Parse ``qstat -f[x] -F json [ids]``, keeping the jobs of a partial answer.

    qstat loops over its ids, prints one error line per bad id and exits with the last
    error, yet still prints valid JSON with the good ones (unknown job: 153, finished
    job without ``-x``: 35). A non-zero exit with any other stderr line or with no
    per-job error, or stdout that is not JSON, means qstat itself failed: SchedulerError.
    """
    unknown: set[str] = set()
    finished: set[str] = set()
    other: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        if HISTORY_OFF in line:
            continue  # the caller asks again without -x (PbsScheduler._qstat)
        if match := _UNKNOWN_JOB.match(line):
            unknown.add(match.group(1))
        elif match := _FINISHED_JOB.match(line):
            finished.add(match.group(1))
        else:
            other.append(line)
    if returncode != 0 and (other or not (unknown or finished)):
        detail = other[-1] if other else f"exit {returncode} without a message"
        raise SchedulerError(f"qstat failed: {detail}", retryable=True)
    for line in other:
        log.warning("qstat said (exit 0): %s", line)
    try:
        # strict=False: a job's Variable_List may hold control characters (a tab)
        document = json.loads(stdout, strict=False)
    except ValueError as e:
        raise SchedulerError(f"qstat printed no JSON: {stdout[:200]!r}", retryable=True) from e
    if not isinstance(document, dict):
        raise SchedulerError(f"qstat JSON is not an object: {stdout[:200]!r}")
    jobs = document.get("Jobs") or {}
    if not isinstance(jobs, dict):
        raise SchedulerError("qstat JSON has a 'Jobs' entry that is not an object")
    return QstatAnswer(
        {job_id: attrs for job_id, attrs in jobs.items() if isinstance(attrs, dict)},
        frozenset(unknown),
        frozenset(finished),
    )


def record_from_qstat(
    job_id: str,
    attrs: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
    tz: tzinfo | None = None,
) -> JobRecord:
    """One job of ``qstat -f -F json`` as a JobRecord (times in ``tz``, default local)."""
    letter = str(attrs.get("job_state", ""))
    substate = _as_int(attrs.get("substate"))
    exit_status = _as_int(attrs.get("Exit_status"))
    comment = str(attrs.get("comment", ""))
    raw_state = letter + (f"/{substate}" if substate is not None else "")
    if exit_status is not None:
        raw_state += f" Exit_status={exit_status}"
    exit_code: int | None = None
    sig: int | None = None
    if letter in FINISHED_LETTERS:
        outcome = finished_outcome(exit_status, deleted=substate == SUBSTATE_TERMINATED)
        state, exit_code, sig = outcome.state, outcome.exit_code, outcome.signal
        reason = _join(outcome.reason, comment if not state.succeeded else "")
    elif letter in _STATE_MAP:
        state = _STATE_MAP[letter]
        reason = "moved to another server" if letter == "M" else ""
        if state is JobState.PENDING:
            reason = comment  # e.g. "Can Never Run: Insufficient amount of resource: host"
    else:
        log.warning("PBS job %s has an unknown job_state %r", job_id, letter)
        state, reason = JobState.UNKNOWN, f"unknown PBS job_state {letter!r}"
    end = parse_ctime(attrs.get("obittime"), tz)
    if end is None and letter in FINISHED_LETTERS:
        end = parse_ctime(attrs.get("mtime"), tz)  # deleted while queued: no obittime
    used = attrs.get("resources_used")
    cput = used.get("cput") if isinstance(used, dict) else None
    return JobRecord(
        job_id=job_id,
        state=state,
        raw_state=raw_state,
        name=str(attrs.get("Job_Name", "")),
        user=owner_user(str(attrs.get("Job_Owner", ""))),
        node=first_exec_host(str(attrs.get("exec_host", ""))),
        exit_code=exit_code,
        signal=sig,
        submit_time=parse_ctime(attrs.get("qtime") or attrs.get("ctime"), tz),
        start_time=parse_ctime(attrs.get("stime"), tz),
        end_time=end,
        cpu_seconds=parse_duration(cput),
        account=str(attrs.get("Account_Name", "")),
        partition=str(attrs.get("queue", "")),
        reason=reason,
        metadata=dict(metadata or {}),
    )


def _join(first: str, second: str) -> str:
    if first and second:
        return f"{first}; PBS comment: {second}"
    return first or second


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def parse_ctime(text: object, tz: tzinfo | None = None) -> datetime | None:
    """``Mon Nov 23 13:20:02 2026`` (qstat's local time) as an aware datetime.

    ``tz`` is the zone qstat ran in; None means this machine's local zone.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        naive = datetime.strptime(text.strip(), _CTIME_FORMAT)
    except ValueError:
        log.warning("cannot parse PBS time %r", text)
        return None
    return naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()


def parse_duration(text: object) -> float | None:
    """``HH:MM:SS`` (hours may exceed 24), ``MM:SS`` or plain seconds, as seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        seconds = 0.0
        for part in text.strip().split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        return None
    return seconds


def first_exec_host(exec_host: str) -> str:
    """First host of ``exec_host`` (``n1/0*2+n2/1`` → ``n1``)."""
    first = exec_host.split("+", 1)[0]
    return first.split("/", 1)[0].strip()


def exec_hosts(exec_host: str) -> tuple[str, ...]:
    """Every host of ``exec_host``, in order, each once (``n1/0*2+n2/1+n1/1`` → n1, n2)."""
    hosts = (chunk.split("/", 1)[0].strip() for chunk in exec_host.split("+"))
    return tuple(dict.fromkeys(h for h in hosts if h))


def owner_user(job_owner: str) -> str:
    """``pbsuser@vm`` → ``pbsuser``."""
    return job_owner.split("@", 1)[0]


def script_from_submit_arguments(submit_arguments: str) -> PurePosixPath | None:
    """The job script of an imgsave job: the last word of ``Submit_arguments``.

    PBS stores the qsub arguments joined by spaces without quoting, so only the last
    word is unambiguous; imgsave puts the absolute script path (checked to contain no
    whitespace) there. Relative paths (other people's jobs) give None.
    """
    words = submit_arguments.split()
    if not words:
        return None
    path = PurePosixPath(words[-1])
    return path if path.is_absolute() else None


def parse_pbsnodes_json(stdout: str, node: str) -> str | None:
    """The ``state`` of ``node`` in ``pbsnodes -F json NODE``; None if PBS lacks it.

    An unknown node still exits 0 (23.06 prints ``{"nosuchnode": "Unknown node "}``
    as the node's entry, older releases ``{"Error": "..."}``); a real node always has a
    ``state`` attribute.
    """
    try:
        document = json.loads(stdout, strict=False)
    except ValueError as e:
        raise SchedulerError(f"pbsnodes printed no JSON: {stdout[:200]!r}") from e
    nodes = document.get("nodes") if isinstance(document, dict) else None
    entry = nodes.get(node) if isinstance(nodes, dict) else None
    if not isinstance(entry, dict) or "state" not in entry:
        return None
    return str(entry["state"])


def scheduler_message(stderr: str, stdout: str = "") -> str:
    """The line of a failed PBS command worth showing a user (its last stderr line)."""
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
