"""What every scheduler backend offers, and the records it returns.

The base knows nothing about images: a :class:`BatchJob` is a script, a node, a name,
metadata and limits. Backends (Slurm, PBS) build argv and parse output as pure
functions; a :class:`~site_configs.runner.Runner` executes the commands.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from scheduler_glue.states import JobState
from site_configs.errors import PermissionDenied


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


ROOT_SUBMIT_REFUSED = (
    "imgsave never submits jobs as root: run it as yourself (CLI mode) or through the "
    "portal's service account (docs/security.md)"
)


class Scheduler(abc.ABC):
    """A batch scheduler backend. Every method raises SchedulerError with a reason."""

    name: str = "scheduler"
    # Whose account a submit runs under; tests that hand the commands to another account
    # (``runuser -u alice --``) say so by setting it. Root is always refused: on PBS
    # root's jobs are refused or untracked (fixtures/pbs), and a root job is nobody's.
    submitter_uid: Callable[[], int] = staticmethod(os.geteuid)

    def check_submitter(self) -> None:
        """Refuse to submit as root (PermissionDenied)."""
        if self.submitter_uid() == 0:
            raise PermissionDenied(ROOT_SUBMIT_REFUSED)

    @abc.abstractmethod
    def submit(self, job: BatchJob) -> str:
        """Submit ``job`` pinned to ``job.node``; return the job id."""

    @abc.abstractmethod
    def status(self, job_ids: Iterable[str], since: datetime) -> dict[str, JobRecord]:
        """Records for the given ids (one batched query, bounded by ``since``).

        An id the scheduler does not know yet maps to a record in state UNKNOWN; if the
        status command itself fails every id is UNKNOWN, never finished or lost.
        """

    @abc.abstractmethod
    def list_jobs(
        self, since: datetime, until: datetime | None = None, name_prefix: str = ""
    ) -> list[JobRecord]:
        """Every job in accounting between ``since`` and ``until`` (finished ones too)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job."""

    @abc.abstractmethod
    def node_of_job(self, job_id: str) -> tuple[str, str]:
        """(first node, owner user) of a running job; NotFound if it is not running."""

    @abc.abstractmethod
    def node_exists(self, node: str) -> bool:
        """Whether the scheduler knows this node (checked before pinning to it)."""
