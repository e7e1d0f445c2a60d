"""Pure parsers for Slurm output: ``sbatch --parsable``, ``sacct --parsable2``, ``squeue``.

Nothing here runs a command; :mod:`scheduler_glue.slurm.commands` builds the argv and
:mod:`scheduler_glue.slurm.backend` hands both to the base class's runner. Every parser
is tested on real Slurm 22.05 output captured from the local cluster
(``tests/captures/slurm/``, see its README for the surprises).

Rows are split with ``str.split`` and a fixed field order, never a regex per row, so a
``list_jobs`` over 10^5 accounting rows stays fast. The free-text ``Comment`` is the last
field, so a ``|`` inside a foreign job's comment cannot shift the other columns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import fields, replace
from datetime import datetime, tzinfo

import hostlist

from core.errors import SchedulerError
from scheduler_glue.base import SAVE_STEP_PREFIX, JobRecord
from scheduler_glue.metadata import decode_metadata
from scheduler_glue.states import JobState

log = logging.getLogger(__name__)

# Slurm job states -> JobState. Long names as sacct and squeue print them; see
# https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES and
# https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES (live-only states).
_STATE_MAP: Mapping[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,  # allocated, nodes booting: the script has not started
    "REQUEUED": JobState.PENDING,  # will run again
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,  # still holds its node; raw_state says so
    "STOPPED": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "COMPLETING": JobState.COMPLETING,
    "STAGE_OUT": JobState.COMPLETING,
    "COMPLETED": JobState.COMPLETED,  # every process exited 0
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,  # killed for another job: the save did not happen
    "CANCELLED": JobState.CANCELLED,  # sacct prints "CANCELLED by <uid>"
    "REVOKED": JobState.CANCELLED,  # federation: a sibling cluster runs it, not this one
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,  # --deadline passed
    "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}

# Order matters: parse_sacct_rows indexes by position. Comment last (see module doc).
SACCT_FIELDS = (
    "JobID", "JobName", "User", "Account", "Partition", "State", "ExitCode",
    "Submit", "Start", "End", "NodeList", "TotalCPU", "Reason", "Comment",
)  # fmt: skip
# squeue -o codes: id, state, nodes, user, name, account, partition, submit, start, end,
# reason, comment (last, same reason).
SQUEUE_FORMAT = "%i|%T|%N|%u|%j|%a|%P|%V|%S|%e|%r|%k"
_SQUEUE_COLUMNS = SQUEUE_FORMAT.count("|") + 1
_SACCT_COLUMNS = len(SACCT_FIELDS)
_TOTAL_CPU = SACCT_FIELDS.index("TotalCPU")

PARTIAL_RECORD_NAME = "allocation"
# How a save run as a step of the user's own job is named: imgsave-save-USER-REQUEST.
STEP_NAME_PREFIX = SAVE_STEP_PREFIX
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_NO_TIME = frozenset({"", "Unknown", "None", "N/A", "(null)"})
_NO_TEXT = frozenset({"", "None", "None assigned", "(null)", "N/A"})
# The Slurm job-id grammar: 123, array task 123_4, het component 123+1, and a numbered
# step of one of them, 123.4 (a save run inside the user's own job, docs/install-slurm.md).
JOB_ID = re.compile(r"[0-9][0-9_+]*(?:\.[0-9]+)?")


def map_state(raw: str) -> JobState:
    """JobState for a Slurm state as printed (``CANCELLED by 0`` -> CANCELLED)."""
    word = raw.split(" ", 1)[0].rstrip("+")
    state = _STATE_MAP.get(word)
    if state is None:
        log.warning("unknown Slurm job state %r: treating it as UNKNOWN", raw)
        return JobState.UNKNOWN
    return state


def is_job_id(text: str) -> bool:
    """Whether ``text`` looks like a Slurm job id (digits, ``_`` array, ``+`` het job,
    ``.N`` a numbered step)."""
    return bool(JOB_ID.fullmatch(text))


def step_metadata(name: str) -> dict[str, str]:
    """What a step's name says (a step has no comment): the request id of a step named
    ``imgsave-save-USER-REQUEST``, else nothing. Anyone can name a step so: it binds
    the step to a request of its owner's, never to another user's."""
    if not name.startswith(STEP_NAME_PREFIX):
        return {}
    request_id = name.rsplit("-", 1)[-1]
    return {"request_id": request_id} if REQUEST_ID.fullmatch(request_id) else {}


def job_of_step(job_id: str) -> str:
    """``123`` for the step ``123.4``; "" for an id that names no numbered step."""
    job, dot, step = job_id.partition(".")
    return job if dot and step.isdigit() else ""


def parse_sbatch_parsable(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0] if lines else ""
    if not job_id.isdigit():
        raise SchedulerError(
            f"sbatch --parsable printed no job id (expected '<digits>' or "
            f"'<digits>;<cluster>' on the last line): {stdout.strip()!r}"
        )
    return job_id


def slurm_errors(stderr: str) -> str:
    """The ``error:``/``fatal:`` lines of a Slurm command's stderr, without the prefix.

    ``sbatch: error: invalid partition specified: x`` -> ``invalid partition specified: x``;
    several lines are joined with ``; ``. Without such lines, the last stderr line.
    """
    found = []
    for line in stderr.splitlines():
        for mark in (": error: ", ": fatal: "):
            _, sep, rest = line.partition(mark)
            if sep:
                found.append(rest.strip())
                break
    if found:
        return "; ".join(found)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_slurm_time(text: str, tz: tzinfo | None = None) -> datetime | None:
    """An aware datetime from a Slurm time (``2026-11-26T03:16:42``) or None.

    Slurm prints naive times in the client's local zone; ``tz`` None means that zone.
    Raises ValueError for anything else (``SLURM_TIME_FORMAT`` set to a custom format).
    """
    if text in _NO_TIME:
        return None
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"unexpected Slurm time {text!r}: imgsave needs the standard ISO format "
            "(unset SLURM_TIME_FORMAT)"
        ) from None
    return naive.astimezone() if tz is None else naive.replace(tzinfo=tz)


def parse_duration(text: str) -> float | None:
    """Seconds in a Slurm duration: ``[D-][HH:]MM:SS[.mmm]`` (TotalCPU, Elapsed)."""
    if text in _NO_TIME or text == "INVALID":
        return None
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    try:
        seconds = float(parts[-1])
        if len(parts) > 1:
            seconds += int(parts[-2]) * 60
        if len(parts) > 2:
            seconds += int(parts[-3]) * 3600
        if days:
            seconds += int(days) * 86400
    except ValueError:
        log.warning("unparsable Slurm duration %r", text)
        return None
    return seconds


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``N:S`` -> (exit code N, signal S or None when S is 0)."""
    code, _, sig = text.partition(":")
    try:
        signal = int(sig) if sig else 0
        return int(code), (signal or None)
    except ValueError:
        return None, None


def iter_hostlist(expression: str) -> Iterator[str]:
    """Expand a Slurm hostlist (``n[1-2],gpu[01-03,7],login``) in order, zero padding as
    ``scontrol show hostnames`` gives it (python-hostlist); ValueError if malformed."""
    try:
        return iter(hostlist.expand_hostlist(expression))
    except hostlist.BadHostlist as e:
        raise ValueError(f"bad hostlist {expression!r}: {e}") from e


def first_node(nodelist: str) -> str:
    """The first host of a nodelist, '' for none (``None assigned``, empty)."""
    if nodelist in _NO_TEXT:
        return ""
    if "[" not in nodelist and "," not in nodelist:
        return nodelist
    return next(iter_hostlist(nodelist), "")


def parse_sacct_rows(
    stdout: str, *, name_prefix: str = "", tz: tzinfo | None = None,
    steps: Collection[str] = (),
) -> list[JobRecord]:
    """One record per job from ``sacct --parsable2 --noheader --format=<SACCT_FIELDS>``.

    Without ``-X`` sacct follows each job's row with one row per step (``123.batch``,
    ``123.extern``, ``123.0``; ``123_4.batch`` for an array task). A step row is no job:
    it only adds its TotalCPU to its job's CPU time. A job with step rows gets their sum
    (what sacct prints on the job's row too, 46_*); one without (``-X``, which prints
    ``00:00:00`` on the job's row whatever it used, 46c_*; or a job that never ran) keeps
    its own row's. Rows whose name lacks ``name_prefix`` are skipped before any other
    parsing (their steps with them). Rows with too few fields (a foreign comment with a
    newline) are skipped with one warning.

    A step named in ``steps`` (``123.4``, a save run as a step of the user's job), and
    in a listing (``name_prefix``) a numbered step named :data:`STEP_NAME_PREFIX`, is a
    record of its own: sacct prints no user, account or comment on a step's row
    (46_*, 60_*), so those come from its job's row, printed before it.
    """
    jobs: list[list[str]] = []
    step_cpu: dict[str, list[str]] = {}  # job id -> its steps' TotalCPU, parsed if kept
    owners: dict[str, list[str]] = {}  # job id -> its row (a step's owner)
    bad = 0
    last = _SACCT_COLUMNS - 1
    for line in stdout.splitlines():
        cols = line.split("|", last)
        if len(cols) != _SACCT_COLUMNS:
            bad += line != ""
            continue
        job_id, dot, step = cols[0].partition(".")
        if not dot:
            owners[job_id] = cols
            if not name_prefix or cols[1].startswith(name_prefix):
                jobs.append(cols)
            continue
        if cols[0] in steps or (name_prefix and step.isdigit()
                                and cols[1].startswith(STEP_NAME_PREFIX)):
            owner = owners.get(job_id)
            if owner is not None:  # a step's row has no user, account or comment
                cols[2], cols[3], cols[4] = owner[2], owner[3], cols[4] or owner[4]
            cols[-1] = ""
            jobs.append(cols)
        step_cpu.setdefault(job_id, []).append(cols[_TOTAL_CPU])
    if bad:
        log.warning("skipped %d sacct line(s) without %d fields", bad, _SACCT_COLUMNS)
    when = _TimeParser(tz)
    return [_sacct_record(cols, when, None if "." in cols[0]
                          else _steps_cpu(step_cpu.get(cols[0]))) for cols in jobs]


def _steps_cpu(totals: list[str] | None) -> float | None:
    """The sum of a job's steps' TotalCPU; None without steps (or none readable)."""
    seconds = [s for s in map(parse_duration, totals or ()) if s is not None]
    return sum(seconds) if seconds else None


class _TimeParser:
    """parse_slurm_time with a memo: submit/start/end often repeat within a listing
    (bursts, short jobs), and converting to the local zone is the parser's costliest step."""

    def __init__(self, tz: tzinfo | None) -> None:
        self.tz = tz
        self.seen: dict[str, datetime | None] = {}

    def __call__(self, text: str) -> datetime | None:
        try:
            return self.seen[text]
        except KeyError:
            value = self.seen[text] = parse_slurm_time(text, self.tz)
            return value


def _sacct_record(cols: list[str], when: _TimeParser, steps_cpu: float | None) -> JobRecord:
    (job_id, name, user, account, partition, raw_state, exit_text,
     submit, start, end, nodes, total_cpu, reason, comment) = cols  # fmt: skip
    state = map_state(raw_state)
    start_time = when(start)
    exit_code, signal = parse_exit_code(exit_text)
    if not state.final or start_time is None:  # 0:0 while running means nothing yet
        exit_code = signal = None
    if not partition and name == PARTIAL_RECORD_NAME:
        name = ""  # a placeholder, see is_partial_record
    return JobRecord(
        job_id=job_id,
        state=state,
        raw_state=raw_state,
        name=name,
        user=user,
        node=first_node(nodes),
        exit_code=exit_code,
        signal=signal,
        submit_time=when(submit),
        start_time=start_time,
        end_time=when(end),
        cpu_seconds=steps_cpu if steps_cpu is not None else parse_duration(total_cpu),
        account=account,
        partition=partition,
        reason="" if reason in _NO_TEXT else reason,
        metadata=step_metadata(name) if "." in job_id else decode_metadata(comment),
    )


def is_partial_record(record: JobRecord) -> bool:
    """Whether slurmdbd has only part of this job yet (no partition, placeholder name).

    For a few seconds after a short job ends (or is cancelled right after submission),
    sacct can show it named ``allocation`` with no partition (45b_*, job 19); the full
    record replaces it later. The name and partition then come from squeue.
    """
    return record.partition == ""


def parse_squeue_rows(stdout: str, *, tz: tzinfo | None = None) -> list[JobRecord]:
    """Records from ``squeue -h -t all -o <SQUEUE_FORMAT>`` (live jobs, no exit code).

    squeue prints an estimated start for pending jobs and a projected end for running
    ones, so those times are kept only where they are facts.
    """
    records = []
    for line in stdout.splitlines():
        cols = line.split("|", _SQUEUE_COLUMNS - 1)
        if len(cols) != _SQUEUE_COLUMNS:
            continue
        (job_id, raw_state, nodes, user, name, account, partition,
         submit, start, end, reason, comment) = cols  # fmt: skip
        state = map_state(raw_state)
        node = first_node(nodes)
        started = state.order >= JobState.RUNNING.order and node != ""
        records.append(
            JobRecord(
                job_id=job_id,
                state=state,
                raw_state=raw_state,
                name=name,
                user=user,
                node=node,
                exit_code=0 if state is JobState.COMPLETED else None,
                submit_time=parse_slurm_time(submit, tz),
                start_time=parse_slurm_time(start, tz) if started else None,
                end_time=parse_slurm_time(end, tz) if state.final else None,
                account=account,
                partition=partition,
                reason="" if reason in _NO_TEXT else reason,
                metadata=decode_metadata(comment),
            )
        )
    return records


def merge_live(accounted: JobRecord, live: JobRecord) -> JobRecord:
    """One record from accounting (``sacct``) and the controller (``squeue``).

    The further state wins (states only move forward; squeue is fresher, sacct lags);
    fields the winner lacks come from the other. sacct has no comment while a job runs
    (it is stored at the end), so metadata of live jobs comes from squeue.
    """
    if live.state is JobState.UNKNOWN:
        return accounted
    if live.state.order > accounted.state.order:
        return _fill_missing(live, accounted)
    return _fill_missing(accounted, live)


def _fill_missing(primary: JobRecord, secondary: JobRecord) -> JobRecord:
    changes = {}
    for field in fields(JobRecord):
        mine, theirs = getattr(primary, field.name), getattr(secondary, field.name)
        if _empty(mine) and not _empty(theirs):
            changes[field.name] = theirs
    return replace(primary, **changes) if changes else primary


def _empty(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, Mapping) and not value)


def parse_node_state(stdout: str) -> tuple[str, str, str] | None:
    """(state, nodelist, user) from ``squeue -h -t all -j ID -o %T|%N|%u``; None if empty."""
    for line in stdout.splitlines():
        cols = line.split("|")
        if len(cols) == 3:
            return cols[0], cols[1], cols[2]
    return None


def parse_job_nodes(stdout: str) -> tuple[str, tuple[str, ...], str] | None:
    """(state, nodes, user) from ``squeue -h -t all -j ID -o %T|%N|%u|%Y``: the nodes a
    running job holds (%N) or a pending one is expected to start on (%Y, SchedNodes),
    expanded; () when Slurm has chosen none. None for no row; ValueError if malformed."""
    for line in stdout.splitlines():
        cols = line.strip().split("|")
        if len(cols) != 4:
            continue
        state, held, user, expected = cols
        chosen = held if held not in _NO_TEXT else expected
        nodes = () if chosen in _NO_TEXT else tuple(iter_hostlist(chosen))
        return state, nodes, user
    return None


def parse_sinfo_nodes(stdout: str) -> frozenset[str]:
    """Node names from ``sinfo -h -N -o %N`` (one per node and partition)."""
    return frozenset(line.strip() for line in stdout.splitlines() if line.strip())


def slurm_version(sinfo_version: str) -> tuple[int, int] | None:
    """(major, minor) from ``sinfo --version`` (``slurm-wlm 22.05.8`` -> (22, 5))."""
    words = sinfo_version.split()
    return _major_minor(words[-1]) if words else None


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def pyslurm_matches(pyslurm_version: str, sinfo_version: str) -> bool:
    """Whether pyslurm ``22.5.x`` (or ``22.05.x``) was built for this Slurm's major.minor."""
    mine, theirs = _major_minor(pyslurm_version), slurm_version(sinfo_version)
    return mine is not None and mine == theirs
