"""Slurm backend through its CLI: sbatch, sacct, squeue, scancel, sinfo.

Only hooks: :mod:`scheduler_glue.slurm.commands` builds each argv,
:mod:`scheduler_glue.slurm.parse` reads the output, and the base class
(:class:`~scheduler_glue.base.Scheduler`) runs the commands, turns failures into typed
errors and makes what Slurm does not know UNKNOWN. Status comes from accounting
(``sacct --parsable2``, one batched query bounded by the submit time), so a finished save
stays visible after it leaves ``squeue`` (``MinJobAge``).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Self

from core.errors import (
    CommandFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SchedulerError,
)
from core.runner import Runner, run_command, spawn_detached
from scheduler_glue.base import (
    BatchJob,
    CommandRefused,
    JobNodes,
    JobRecord,
    Scheduler,
    StatusUnavailable,
)
from scheduler_glue.slurm.commands import (
    job_environment,
    sacct_list_argv,
    sacct_status_argv,
    sbatch_argv,
    scancel_argv,
    sinfo_nodes_argv,
    sinfo_version_argv,
    squeue_node_argv,
    squeue_nodes_argv,
    squeue_status_argv,
    squeue_step_status_argv,
    squeue_steps_argv,
    srun_step_argv,
)
from scheduler_glue.slurm.parse import (
    JOB_ID,
    first_node,
    is_partial_record,
    job_of_step,
    merge_live,
    parse_job_nodes,
    parse_node_state,
    parse_sacct_rows,
    parse_sbatch_parsable,
    parse_sinfo_nodes,
    parse_squeue_rows,
    pyslurm_matches,
    slurm_errors,
)
from scheduler_glue.slurm.steps import parse_squeue_steps

if TYPE_CHECKING:
    from site_configs.schema import SchedulerSection

log = logging.getLogger(__name__)

NODE_CACHE_SECONDS = 60.0
# How long a submit waits for srun's step to show in squeue, and how often it looks.
STEP_START_SECONDS = 30.0
STEP_POLL_SECONDS = 0.2
STEP_ACCOUNTING_TRIES = 3
LAUNCHER_LOG = "launcher.out"  # srun's own messages, beside the step's output
# sbatch errors after which the same request may work later (controller busy or away).
_TRANSIENT = ("temporarily unable", "socket timed out", "unable to contact", "try again")


def backend_path(runner: Runner = run_command) -> str:
    """``"pyslurm"`` if pyslurm imports and was built for this Slurm's major.minor, else
    ``"cli"``. PyPI has no pyslurm for Debian's Slurm 22.05, so here it is ``"cli"``, the
    only path :class:`SlurmScheduler` implements.
    """
    try:
        import pyslurm  # type: ignore[import-not-found]
    except ImportError:
        return "cli"
    try:
        sinfo = SlurmScheduler(runner, 10).run_or_fail(sinfo_version_argv(), "sinfo").stdout
    except SchedulerError as e:
        log.warning("cannot tell the Slurm version (%s): using the CLI", e)
        return "cli"
    version = str(getattr(pyslurm, "__version__", ""))
    if pyslurm_matches(version, sinfo):
        return "pyslurm"
    log.info("pyslurm %s does not match %s: using the CLI", version, sinfo.strip())
    return "cli"


class SlurmScheduler(Scheduler):
    """Slurm through its CLI. ``extra_submit_args`` go before the script on sbatch's argv
    (site config ``scheduler.extra_submit_args``, e.g. ``--mem=1G``);
    ``list_timeout`` bounds the one large sacct of :meth:`list_jobs`.
    """

    name = "slurm"
    label = "Slurm"
    submit_command = "sbatch"
    # 123, array task 123_4, het component 123+1
    job_id_pattern = JOB_ID
    # sacct is asked for at most a month at a time (a bounded window, never all history)
    accounting_window = timedelta(days=31)
    job_id_variable = "SLURM_JOB_ID"
    node_variable = "SLURMD_NODENAME"
    step_variable = "SLURM_STEP_ID"
    unknown_reason = "not known to Slurm yet"

    def __init__(
        self,
        runner: Runner = run_command,
        timeout: float = 30,
        *,
        extra_submit_args: Sequence[str] = (),
        list_timeout: float | None = None,
    ) -> None:
        super().__init__(runner, timeout)
        self.extra_submit_args = tuple(extra_submit_args)
        self.list_timeout = list_timeout if list_timeout is not None else max(timeout, 300.0)
        self._nodes: frozenset[str] | None = None
        self._nodes_read_at = 0.0

    @classmethod
    def from_section(cls, section: SchedulerSection, runner: Runner) -> Self:
        return cls(runner=runner, timeout=section.command_timeout_seconds,
                   extra_submit_args=section.extra_submit_args)  # fmt: skip

    # -- submit -----------------------------------------------------------------------
    def check_job(self, job: BatchJob) -> None:
        for what, text in (("job name", job.name), ("partition", job.partition)):
            if not text or any(c in text for c in "|\n\r"):
                raise InvalidRequest(
                    f"{what} {text!r} must be non-empty, without '|' or newlines"
                )
        if job.cpus < 1 or job.time_limit_minutes < 1:
            raise InvalidRequest(
                f"job {job.name}: cpus ({job.cpus}) and time limit "
                f"({job.time_limit_minutes} min) must be at least 1"
            )

    def check_node(self, node: str) -> None:
        if not self.node_exists(node):
            known = ", ".join(sorted(self._nodes or ()))
            raise NotFound(f"node {node} is not a node of this Slurm cluster (known: {known})")

    def submit_argv(self, job: BatchJob) -> list[str]:
        environment, sbatch = self.submit_environment()
        return sbatch_argv(job, self.extra_submit_args, environment=environment, sbatch=sbatch)

    def submit_environment(self) -> tuple[dict[str, str], str]:
        """(the job's whole environment, sbatch's path): the submitting account's name
        and home from the account database, never from the caller's environment."""
        uid = self.submitter_uid()
        try:
            account = pwd.getpwuid(uid)
        except KeyError as e:
            raise SchedulerError(f"uid {uid} has no account: cannot submit for it") from e
        environment = job_environment(account.pw_name, account.pw_dir, os.environ)
        return environment, shutil.which("sbatch") or "sbatch"

    def parse_job_id(self, stdout: str) -> str:
        return parse_sbatch_parsable(stdout)

    def launch_step(self, job_id: str, step: BatchJob) -> str:
        """``srun --jobid J --overlap`` in a session of its own (it lives as long as the
        step), then the step's id from squeue once the step runs. srun's own words, if it
        is refused (another user's job, a node outside the job), become the error."""
        if job_of_step(job_id) or not step.name or any(c in step.name for c in "|\n\r,"):
            raise InvalidRequest(f"cannot run step {step.name!r} in job {job_id!r}")
        self.check_node(step.node)
        environment, _ = self.submit_environment()
        argv = srun_step_argv(job_id, step, environment=environment,
                              srun=shutil.which("srun") or "srun")  # fmt: skip
        launcher_log = step.output_path.with_name(LAUNCHER_LOG)
        try:
            process = spawn_detached(argv, str(launcher_log))
        except CommandFailed as e:
            raise CommandRefused(f"srun could not start: {e.message}", reason=e.message,
                                 retryable=False) from e  # fmt: skip
        deadline = time.monotonic() + STEP_START_SECONDS
        while (code := process.poll()) is None and time.monotonic() < deadline:
            if found := self._step_named(job_id, step.name):
                log.info("started step %s (%s) on %s", found, step.name, step.node)
                return found
            time.sleep(STEP_POLL_SECONDS)
        # srun ended already (the step ran and ended at once, or srun was refused) or the
        # step is slow to show: accounting knows a step that ran, a moment after it began
        for _ in range(STEP_ACCOUNTING_TRIES):
            if found := self._step_named(job_id, step.name) or self._step_in_accounting(
                    job_id, step.name):
                return found
            time.sleep(STEP_POLL_SECONDS * 2)
        if (code := process.poll()) is None:
            process.terminate()  # nothing may start after the submit said it failed
        elif code != 0:
            reason = slurm_errors(_read_tail(launcher_log)) or f"srun exited {code}"
            raise CommandRefused(f"srun refused step {step.name} in job {job_id} on "
                                 f"{step.node}: {reason}", reason=reason,
                                 retryable=self.is_transient(reason))  # fmt: skip
        raise SchedulerError(f"srun started step {step.name} in job {job_id}, but neither "
                             f"squeue nor sacct shows it (see {launcher_log})", retryable=True)

    def _step_named(self, job_id: str, name: str) -> str:
        result = self.run(squeue_steps_argv(job_id))
        ids = [r.job_id for r in parse_squeue_steps(result.stdout) if r.name == name]
        return max(ids, key=_step_number) if ids else ""

    def _step_in_accounting(self, job_id: str, name: str) -> str:
        since = datetime.now().astimezone() - timedelta(days=3)
        result = self.run(sacct_status_argv([job_id], since))
        ids = [line.split("|", 2)[0] for line in result.stdout.splitlines()
               if line.count("|") > 2 and line.split("|", 2)[1] == name]  # fmt: skip
        ids = [i for i in ids if job_of_step(i) == job_id]
        return max(ids, key=_step_number) if ids else ""

    def error_text(self, stderr: str, stdout: str = "") -> str:
        return slurm_errors(stderr)

    def is_transient(self, reason: str) -> bool:
        return any(t in reason.lower() for t in _TRANSIENT)

    # -- status -------------------------------------------------------------------------
    def read_status(self, job_ids: list[str], since: datetime) -> dict[str, JobRecord]:
        """One sacct, then one squeue for ids that sacct lacks (just submitted), that are
        still live (sacct keeps no comment until the end) or whose accounting record is
        still partial."""
        steps = [i for i in job_ids if job_of_step(i)]
        # a step's row has no owner: its job's rows come too (sacct -j J lists its steps)
        asked = list(dict.fromkeys(job_of_step(i) or i for i in job_ids))
        try:
            output = self.run_or_fail(sacct_status_argv(asked, since), "sacct failed").stdout
            accounted = {r.job_id: r for r in parse_sacct_rows(output, steps=steps)
                         if r.job_id in job_ids}
        except (CommandRefused, ValueError) as e:
            # slurmdbd or its database down: the controller still knows live jobs (and
            # finished ones for MinJobAge); the rest are UNKNOWN, saying why
            log.warning("sacct failed, asking squeue only: %s", e)
            reason = e.reason if isinstance(e, CommandRefused) else slurm_errors(str(e))
            raise StatusUnavailable(
                f"Slurm accounting (slurmdbd) does not answer ({reason}); "
                "the state is known again when it does",
                self._live_records(job_ids),
            ) from e
        ask_live = [i for i in job_ids if i not in accounted or _incomplete(accounted[i])]
        live = self._live_records(ask_live) if ask_live else {}
        records = {}
        for job_id in job_ids:
            have, now = accounted.get(job_id), live.get(job_id)
            if have is not None and now is not None:
                records[job_id] = merge_live(have, now)
            elif have is not None or now is not None:
                records[job_id] = have if have is not None else now  # type: ignore[assignment]
        return records

    def _live_records(self, job_ids: list[str]) -> dict[str, JobRecord]:
        steps = [i for i in job_ids if job_of_step(i)]
        jobs = [i for i in job_ids if not job_of_step(i)]
        records = self._live_steps(steps) if steps else {}
        if jobs:
            records.update(self._live_jobs(jobs))
        return records

    def _live_steps(self, step_ids: list[str]) -> dict[str, JobRecord]:
        try:
            result = self.run(squeue_step_status_argv(step_ids))
            return {r.job_id: r for r in parse_squeue_steps(result.stdout)}
        except SchedulerError as e:
            log.warning("squeue --steps failed: %s", e)
            return {}

    def _live_jobs(self, job_ids: list[str]) -> dict[str, JobRecord]:
        try:
            result = self.run(squeue_status_argv(job_ids))
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                log.warning("squeue failed: %s", slurm_errors(result.stderr))
                return {}
            return {r.job_id: r for r in parse_squeue_rows(result.stdout)}
        except (SchedulerError, ValueError) as e:
            log.warning("squeue failed: %s", e)
            return {}

    def read_jobs(
        self, since: datetime, until: datetime | None, name_prefix: str
    ) -> list[JobRecord]:
        """Every user's jobs between ``since`` and ``until`` (default now) from accounting."""
        result = self.run_or_fail(sacct_list_argv(since, until), "sacct cannot list jobs",
                                  timeout=self.list_timeout, retryable=True)  # fmt: skip
        try:
            return parse_sacct_rows(result.stdout, name_prefix=name_prefix)
        except ValueError as e:
            raise SchedulerError(f"sacct output not understood: {e}") from e

    # -- cancel, node -------------------------------------------------------------------
    def cancel_job(self, job_id: str) -> None:
        try:
            result = self.run(scancel_argv(job_id))
        except SchedulerError as e:
            raise SchedulerError(f"scancel {job_id} failed: {e.message}", retryable=True) from e
        reason = slurm_errors(result.stderr) if "error:" in result.stderr else ""
        if "Invalid job id" in reason:
            raise NotFound(f"Slurm job {job_id} does not exist (or left the queue long ago)")
        if "already completing or completed" in reason:
            log.info("Slurm job %s already finished; nothing to cancel", job_id)
        elif "permission denied" in reason.lower():
            raise PermissionDenied(f"not allowed to cancel Slurm job {job_id}: {reason}")
        elif reason or result.returncode != 0:
            raise SchedulerError(f"scancel {job_id} failed: {reason or result.stderr.strip()}")

    def locate_job(self, job_id: str) -> tuple[str, str]:
        """(first node, owner) of a RUNNING job; NotFound for any other state."""
        try:
            result = self.run(squeue_node_argv(job_id))
        except SchedulerError as e:
            raise SchedulerError(f"squeue cannot tell job {job_id}'s node: {e.message}") from e
        found = parse_node_state(result.stdout)
        if found is None:
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                raise SchedulerError(
                    f"squeue failed for job {job_id}: {slurm_errors(result.stderr)}"
                )
            raise NotFound(f"Slurm job {job_id} is not in the queue (not running)")
        state, nodelist, user = found
        node = first_node(nodelist)
        if state != "RUNNING" or not node:
            raise NotFound(f"Slurm job {job_id} is {state}, not running on a node")
        return node, user

    def locate_job_nodes(self, job_id: str) -> JobNodes:
        """Every node of a running job, or those Slurm expects a pending one to start on."""
        try:
            result = self.run(squeue_nodes_argv(job_id))
            found = parse_job_nodes(result.stdout)
        except (SchedulerError, ValueError) as e:
            raise SchedulerError(f"squeue cannot tell job {job_id}'s nodes: {e}") from e
        if found is None:
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                raise SchedulerError(
                    f"squeue failed for job {job_id}: {slurm_errors(result.stderr)}"
                )
            raise NotFound(f"Slurm job {job_id} is not in the queue")
        state, nodes, user = found
        if not nodes or state not in ("RUNNING", "PENDING", "CONFIGURING"):
            why = "has no nodes yet" if state == "PENDING" else "is not pending or running"
            raise NotFound(f"Slurm job {job_id} is {state} and {why}")
        return JobNodes(job_id=job_id, owner=user, state=state, nodes=nodes)

    def node_exists(self, node: str) -> bool:
        """Whether ``node`` is in some partition (sinfo, cached; re-read on a miss).

        Only names sinfo printed pass, so ``-a`` or ``n1,n2`` never reach sbatch.
        """
        stale = time.monotonic() - self._nodes_read_at > NODE_CACHE_SECONDS
        if self._nodes is None or (node not in self._nodes and stale):
            result = self.run_or_fail(sinfo_nodes_argv(), "sinfo cannot list nodes",
                                      retryable=True)  # fmt: skip
            self._nodes = parse_sinfo_nodes(result.stdout)
            self._nodes_read_at = time.monotonic()
        return node in self._nodes


def _step_number(step_id: str) -> int:
    return int(step_id.rsplit(".", 1)[1])


def _read_tail(path: os.PathLike[str] | str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _incomplete(record: JobRecord) -> bool:
    return not record.state.final or is_partial_record(record)

