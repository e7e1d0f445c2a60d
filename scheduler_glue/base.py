"""What every scheduler backend offers, and the records it returns.

The base knows nothing about images: a :class:`BatchJob` is a script, a node, a name,
metadata and limits. :class:`Scheduler` does the work every backend shares (psij-python's
split): it runs each command through the one :class:`~core.runner.Runner`, turns
a command that cannot run or exits non-zero into a :class:`SchedulerError` carrying the
scheduler's own words and whether a retry may help, checks job ids against the backend's
grammar, refuses root, and applies the unknown-state rule once: an id the scheduler does
not know, or cannot be asked about, is UNKNOWN with a reason, never finished or lost.

A backend (``scheduler_glue/<kind>/``) fills in hooks only: argv builders and parsers
(pure functions in its ``commands.py`` and ``parse.py``), the job-id grammar and order,
the accounting window, and the environment variables its jobs see.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

from core.errors import (
    CommandFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SchedulerError,
)
from core.runner import DEFAULT_TIMEOUT_SECONDS, CommandResult, Runner, run_command
from scheduler_glue.live_status import SharedStatus
from scheduler_glue.states import JobState

if TYPE_CHECKING:
    from site_configs.schema import SchedulerSection

log = logging.getLogger(__name__)


# The name of a save run as a step of its owner's job: imgsave-save-USER-REQUEST.
SAVE_STEP_PREFIX = "imgsave-save-"


@dataclass(frozen=True)
class BatchJob:
    """A job to submit, pinned to one node."""

    name: str
    script: Path  # an executable script file, already written to shared storage
    node: str
    output_path: Path  # stdout+stderr of the job
    metadata: Mapping[str, str] = field(default_factory=dict)
    partition: str = ""  # Slurm partition or PBS queue
    qos: str = ""
    account: str = ""
    time_limit_minutes: int = 30
    cpus: int = 1
    workdir: Path | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job as the scheduler (live or accounting) sees it."""

    job_id: str
    state: JobState
    raw_state: str = ""
    name: str = ""
    user: str = ""
    node: str = ""
    exit_code: int | None = None
    signal: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    cpu_seconds: float | None = None
    account: str = ""
    partition: str = ""
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.submit_time and self.start_time:
            return max(0.0, (self.start_time - self.submit_time).total_seconds())
        return None

    @property
    def run_seconds(self) -> float | None:
        if self.start_time and self.end_time:
            return max(0.0, (self.end_time - self.start_time).total_seconds())
        return None


@dataclass(frozen=True)
class JobNodes:
    """The nodes a job runs on (or, pending, is expected to run on), and its owner."""

    job_id: str
    owner: str
    state: str  # the scheduler's own word for it (RUNNING, PENDING, R, Q)
    nodes: tuple[str, ...]


ROOT_SUBMIT_REFUSED = (
    "imgsave never submits jobs as root: run it as yourself (CLI mode) or through the "
    "portal's service account (docs/security.md)"
)


class CommandRefused(SchedulerError):
    """A scheduler command exited non-zero or could not run; ``reason`` is the
    scheduler's own words (its error lines), without the caller's context."""

    def __init__(self, message: str, *, reason: str, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason


class StatusUnavailable(SchedulerError):
    """The backend's status query failed; ``known`` holds what it still learnt (e.g.
    live jobs from the controller). The other ids become UNKNOWN with this message."""

    def __init__(self, message: str, known: Mapping[str, JobRecord] | None = None) -> None:
        super().__init__(message, retryable=True)
        self.known = dict(known or {})


def unknown_record(job_id: str, reason: str) -> JobRecord:
    """The record of a job whose state cannot be told now (the unknown-state rule)."""
    return JobRecord(job_id=job_id, state=JobState.UNKNOWN, reason=reason)


class FinalRecords:
    """Records of ended jobs, kept: a final state never changes, so a job seen ended in
    accounting is not asked about again (status polls, the in-flight check, the
    portal's users watching their saves). Per process, bounded (least recently used
    dropped), thread-safe. Only a record accounting has completed is kept (final, with
    its end and its exit code or signal): a controller's record of a job that just
    ended may lack them, and is asked again."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # ids answered from here, not the scheduler

    def split(self, job_ids: Sequence[str]) -> tuple[dict[str, JobRecord], list[str]]:
        """(the kept records among ``job_ids``, the ids still to ask)."""
        known: dict[str, JobRecord] = {}
        with self._lock:
            for job_id in job_ids:
                if (record := self._records.get(job_id)) is not None:
                    self._records.move_to_end(job_id)
                    known[job_id] = record
            self.hits += len(known)
        return known, [j for j in job_ids if j not in known]

    def keep(self, records: Iterable[JobRecord]) -> None:
        with self._lock:
            for record in records:
                if record.state.final and record.end_time is not None and (
                        record.exit_code is not None or record.signal is not None):
                    self._records[record.job_id] = record
                    self._records.move_to_end(record.job_id)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)


class Scheduler(abc.ABC):
    """A batch scheduler backend. Every method raises SchedulerError with a reason.

    Public methods live here; a backend implements the hooks below them (a fake that
    stands in for a whole scheduler may override the public methods instead).
    """

    # -- what a backend declares ------------------------------------------------------
    name: ClassVar[str] = "scheduler"  # its kind in the site config (scheduler.kind)
    label: ClassVar[str] = "scheduler"  # how messages name it: "Slurm", "PBS"
    # the job ids it prints and accepts (argv safety: an id never starts with "-")
    job_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"[0-9]+")
    # list_jobs is asked for at most this much time at once (None: a window at once)
    accounting_window: ClassVar[timedelta | None] = None
    # the environment variables a job sees: its id, and its node ("": none; the job
    # script exports them under imgsave's neutral names, builder_jobs.script)
    job_id_variable: ClassVar[str] = ""
    node_variable: ClassVar[str] = ""
    # the step's number inside a job ("": the backend runs no save as a step)
    step_variable: ClassVar[str] = ""
    # the reason of an UNKNOWN record for an id the backend's status found nowhere
    unknown_reason: ClassVar[str] = "not known to the scheduler"

    # Whose account a submit runs under; tests that hand the commands to another account
    # (``runuser -u alice --``) say so by setting it. Root is always refused: on PBS
    # root's jobs are refused or untracked (tests/captures/pbs), and a root job is nobody's.
    submitter_uid: Callable[[], int] = staticmethod(os.geteuid)

    def __init__(
        self, runner: Runner = run_command, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.runner = runner
        self.timeout = timeout
        self.finals = FinalRecords()
        self.shared: SharedStatus[JobRecord] | None = None

    def share_status(self, interval: float) -> None:
        """Answer status polls about live jobs from one batched query per ``interval``
        seconds for every job asked about lately (a server with many users polling;
        the CLI asks each time)."""
        self.shared = SharedStatus(interval) if interval > 0 else None

    @classmethod
    def from_section(cls, section: SchedulerSection, runner: Runner) -> Self:
        """The backend configured by the site config's ``[scheduler]`` section."""
        return cls(runner, section.command_timeout_seconds)

    # -- job ids ------------------------------------------------------------------------
    def is_job_id(self, text: str) -> bool:
        """Whether ``text`` is a job id of this scheduler (its whole grammar)."""
        return bool(self.job_id_pattern.fullmatch(text))

    def job_sort_key(self, job_id: str) -> tuple[int, str]:
        """Submission order: the leading sequence number, then the id itself."""
        head = job_id.split(".", 1)[0].split("[", 1)[0]
        return (int(head) if head.isdigit() else 0, job_id)

    def check_ids(self, job_ids: Iterable[str]) -> list[str]:
        """``job_ids`` without repeats, each checked against the grammar (InvalidRequest)."""
        ids = list(dict.fromkeys(str(i).strip() for i in job_ids))
        bad = [i for i in ids if not self.is_job_id(i)]
        if bad:
            raise InvalidRequest(f"not {self.label} job ids: {', '.join(map(repr, bad))}")
        return ids

    # -- the one runner -------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        """Run ``argv`` whatever its exit code; one that cannot run → SchedulerError."""
        try:
            return self.runner(argv, timeout=timeout or self.timeout, check=False)
        except CommandFailed as e:
            raise SchedulerError(
                f"{argv[0]} could not run: {e.message}", retryable=e.retryable
            ) from e

    def run_or_fail(
        self,
        argv: Sequence[str],
        failure: str,
        *,
        timeout: float | None = None,
        retryable: bool | None = None,
    ) -> CommandResult:
        """Run ``argv``; a non-zero exit or a command that cannot run → CommandRefused
        ``"<failure>: <the scheduler's words>"``. ``retryable`` None asks
        :meth:`is_transient`; a timeout is always worth a retry."""
        try:
            result = self.runner(argv, timeout=timeout or self.timeout, check=False)
        except CommandFailed as e:
            again = e.retryable if retryable is None else retryable
            raise CommandRefused(f"{failure}: {e.message}", reason=e.message,
                                 retryable=again) from e  # fmt: skip
        if result.returncode != 0:
            error = CommandFailed(list(argv), result.returncode, result.stdout, result.stderr)
            reason = self.error_text(result.stderr, result.stdout) or error.message
            again = self.is_transient(reason) if retryable is None else retryable
            raise CommandRefused(f"{failure}: {reason}", reason=reason, retryable=again)
        return result

    def error_text(self, stderr: str, stdout: str = "") -> str:
        """The part of a failed command's output worth showing ("" if none)."""
        lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def is_transient(self, reason: str) -> bool:
        """Whether a command that failed with ``reason`` may work later."""
        return False

    # -- what callers use -----------------------------------------------------------------
    def check_submitter(self) -> None:
        """Refuse to submit as root (PermissionDenied)."""
        if self.submitter_uid() == 0:
            raise PermissionDenied(ROOT_SUBMIT_REFUSED)

    def submit(self, job: BatchJob) -> str:
        """Submit ``job`` pinned to ``job.node``; return the job id.

        The job is checked, root refused and the node checked before anything is
        submitted (PBS would queue a job for an unknown host forever)."""
        self.check_job(job)
        self.check_submitter()
        self.check_node(job.node)
        self.prepare(job)
        result = self.run_or_fail(self.submit_argv(job), self.submit_failure(job))
        if result.stderr.strip():
            log.warning("%s: %s", self.submit_command, result.stderr.strip())
        job_id = self.parse_job_id(result.stdout)
        log.info("submitted %s job %s (%s) to %s", self.label, job_id, job.name, job.node)
        return job_id

    def submit_step(self, job_id: str, step: BatchJob) -> str:
        """Run ``step`` as a step of the caller's own running job ``job_id`` on
        ``step.node``, within that job's allocation and accounting, without waiting for
        it to end; return the step's id (what status takes). Root is refused; a backend
        without steps says so (InvalidRequest)."""
        self.check_submitter()
        (job_id,) = self.check_ids([job_id])
        return self.launch_step(job_id, step)

    def status(self, job_ids: Iterable[str], since: datetime) -> dict[str, JobRecord]:
        """Records for the given ids (one batched query, bounded by ``since``).

        An id the scheduler does not know yet maps to a record in state UNKNOWN; if the
        status command itself fails every id is UNKNOWN, never finished or lost.
        """
        ids = self.check_ids(job_ids)
        if not ids:
            return {}
        ended, ask = self.finals.split(ids)  # ended jobs are not asked about again
        why = self.unknown_reason
        found: Mapping[str, JobRecord] = {}
        if ask:
            try:
                found = (self.read_status(ask, since) if self.shared is None
                         else self.shared.records(ask, since, self.read_status))
            except StatusUnavailable as e:
                log.warning("%s status unavailable, every job UNKNOWN but those it still "
                            "knows: %s", self.label, e.message)  # fmt: skip
                found, why = e.known, e.message
            self.finals.keep(found.values())
        return {job_id: ended.get(job_id) or found.get(job_id) or unknown_record(job_id, why)
                for job_id in ids}

    def list_jobs(
        self, since: datetime, until: datetime | None = None, name_prefix: str = ""
    ) -> list[JobRecord]:
        """Every job in accounting between ``since`` and ``until`` (finished ones too),
        only those whose name starts with ``name_prefix``."""
        if until is not None and until < since:
            raise InvalidRequest(f"list_jobs: until {until} is before since {since}")
        return self.read_jobs(since, until, name_prefix)

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job; one that already finished is left alone."""
        (job_id,) = self.check_ids([job_id])
        self.cancel_job(job_id)

    def node_of_job(self, job_id: str) -> tuple[str, str]:
        """(first node, owner user) of a running job; NotFound if it is not running."""
        (job_id,) = self.check_ids([job_id])
        return self.locate_job(job_id)

    def nodes_of_job(self, job_id: str) -> JobNodes:
        """Every node of a running job, or of a pending one whose nodes the scheduler
        has chosen; NotFound when it has none (ended, or pending without nodes)."""
        (job_id,) = self.check_ids([job_id])
        return self.locate_job_nodes(job_id)

    def check_node(self, node: str) -> None:
        """NotFound unless the scheduler knows ``node`` (before pinning a job to it)."""
        if not self.node_exists(node):
            raise NotFound(f"node {node} is not a node of this {self.label} cluster")

    # -- hooks --------------------------------------------------------------------------
    submit_command: ClassVar[str] = "submit"  # how messages name the submit command

    def check_job(self, job: BatchJob) -> None:
        """Refuse a job the scheduler would mis-read (InvalidRequest); none by default."""
        return None

    def prepare(self, job: BatchJob) -> None:
        """Anything the job needs on disk before it is submitted; nothing by default."""
        return None

    def submit_failure(self, job: BatchJob) -> str:
        """How a refused submit of ``job`` begins its message."""
        return f"{self.submit_command} refused job {job.name} for node {job.node}"

    def submit_argv(self, job: BatchJob) -> list[str]:
        """The command that submits ``job`` pinned to ``job.node``."""
        raise NotImplementedError(f"{type(self).__name__} has no submit_argv")

    def parse_job_id(self, stdout: str) -> str:
        """The job id the submit command printed (SchedulerError if none)."""
        raise NotImplementedError(f"{type(self).__name__} has no parse_job_id")

    def launch_step(self, job_id: str, step: BatchJob) -> str:
        """Start ``step`` inside the running job ``job_id`` (checked); its step id."""
        raise InvalidRequest(
            f"{self.label} cannot run a save as a step of your job here: save with --node "
            "or --job alone (a job of its own)"
        )

    def read_status(self, job_ids: list[str], since: datetime) -> dict[str, JobRecord]:
        """The records the scheduler has for ``job_ids`` (checked, no repeats); ids it
        lacks may be left out. StatusUnavailable if the query itself failed."""
        raise NotImplementedError(f"{type(self).__name__} has no read_status")

    def read_jobs(
        self, since: datetime, until: datetime | None, name_prefix: str
    ) -> list[JobRecord]:
        """The jobs of :meth:`list_jobs` (the window is already checked)."""
        raise NotImplementedError(f"{type(self).__name__} has no read_jobs")

    def cancel_job(self, job_id: str) -> None:
        """Cancel one checked job id (NotFound, PermissionDenied, SchedulerError)."""
        raise NotImplementedError(f"{type(self).__name__} has no cancel_job")

    def locate_job(self, job_id: str) -> tuple[str, str]:
        """(first node, owner) of one checked job id; NotFound if not running."""
        raise NotImplementedError(f"{type(self).__name__} has no locate_job")

    def locate_job_nodes(self, job_id: str) -> JobNodes:
        """:meth:`nodes_of_job`'s answer; by default the first node of a running job only
        (a backend that can list all of them, and pending jobs', overrides this)."""
        node, owner = self.locate_job(job_id)
        return JobNodes(job_id=job_id, owner=owner, state="RUNNING", nodes=(node,))

    @abc.abstractmethod
    def node_exists(self, node: str) -> bool:
        """Whether the scheduler knows this node (checked before pinning to it)."""
