"""Slurm backend through its CLI: sbatch, sacct, squeue, scancel, sinfo.

Pure functions build each argv (``*_argv``) and :mod:`scheduler_glue.slurm_parse` parses
the output; :class:`SlurmScheduler` only wires them to a runner. Status comes from
accounting (``sacct --parsable2``, one batched query bounded by the submit time), so a
finished save stays visible after it leaves ``squeue`` (``MinJobAge``).

Why ``--parsable2`` and not ``sacct --json`` (measured on the local Slurm 22.05.8
cluster, 123 jobs in accounting): for 10 ids ~100 ms against ~380 ms, for a whole window
~50 ms against ~390 ms; ``--json`` prints ~5.5 KB per job, and its ``exit_code`` says 0
for a script that exited 3 (``tests/fixtures/slurm/21b_*``). See docs/install-slurm.md.

Why no ``-X`` (``--allocations``): with it the job's row reads TotalCPU ``00:00:00``
whatever the job used, since sacct adds the steps' CPU times up only when it lists the
steps (``tests/fixtures/slurm/46c_*`` against ``46_*``). The parser folds the step rows
(``123.batch``, ``123.extern``, ``123.0``) into one record per job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from scheduler_glue.base import BatchJob, JobRecord, Scheduler
from scheduler_glue.metadata import encode_metadata
from scheduler_glue.slurm_parse import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    first_node,
    is_job_id,
    is_partial_record,
    merge_live,
    parse_node_state,
    parse_sacct_rows,
    parse_sbatch_parsable,
    parse_sinfo_nodes,
    parse_squeue_rows,
    pyslurm_matches,
    slurm_errors,
)
from scheduler_glue.states import JobState
from site_configs.errors import (
    CommandFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SchedulerError,
)
from site_configs.runner import Runner, run_command

log = logging.getLogger(__name__)

# sacct -S is compared with the job's eligible/end times on the controller's clock.
SACCT_SLACK = timedelta(minutes=5)
# Every state sacct accounts. With -s, a window also finds jobs that were never eligible
# (held, then cancelled); without it sacct skips them (fixtures 22 vs 22b).
ACCOUNTED_STATES = "PD,R,CD,F,CA,TO,NF,OOM,PR,BF,DL,RQ,S,RS,RV"
NODE_CACHE_SECONDS = 60.0
# sbatch errors after which the same request may work later (controller busy or away).
_TRANSIENT = ("temporarily unable", "socket timed out", "unable to contact", "try again")


def slurm_time(moment: datetime) -> str:
    """``moment`` as sacct reads it: local time, no zone (a naive one is taken as local)."""
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def output_pattern(path: str) -> str:
    """``path`` for ``--output``, with ``%`` escaped: Slurm expands ``%j`` and friends."""
    return path.replace("%", "%%")


def sbatch_argv(job: BatchJob, extra_args: Sequence[str] = ()) -> list[str]:
    """``sbatch --parsable ...`` for ``job``, pinned to ``job.node``; metadata in --comment."""
    argv = ["sbatch", "--parsable", "--job-name", job.name, "--partition", job.partition]
    if job.qos:
        argv += ["--qos", job.qos]
    if job.account:
        argv += ["--account", job.account]
    argv += [
        "--nodelist", job.node, "--nodes", "1", "--ntasks", "1",
        "--cpus-per-task", str(job.cpus), "--time", str(job.time_limit_minutes),
        "--output", output_pattern(str(job.output_path)),
        "--comment", encode_metadata(job.metadata),
        # A clean environment: nothing of the submitter's (a portal's secrets above
        # all) reaches the job, or accounting if a site stores job_env.
        "--export", "NONE",
    ]  # fmt: skip
    if job.workdir is not None:
        argv += ["--chdir", str(job.workdir)]
    return [*argv, *extra_args, str(job.script)]


def sacct_status_argv(job_ids: Sequence[str], since: datetime) -> list[str]:
    """One batched ``sacct`` for ``job_ids``, bounded below by ``since`` minus slack.

    No ``-X``: the job's steps' rows carry its CPU time (see :func:`parse_sacct_rows`).
    """
    return [
        "sacct", "--parsable2", "--noheader", f"--format={','.join(SACCT_FIELDS)}",
        "-j", ",".join(job_ids), "-S", slurm_time(since - SACCT_SLACK), "-E", "now",
    ]  # fmt: skip


def sacct_list_argv(since: datetime, until: datetime | None = None) -> list[str]:
    """``sacct`` for every user's jobs in a bounded window (never the whole history),
    with their steps' rows (no ``-X``) for the CPU time."""
    return [
        "sacct", "--parsable2", "--noheader", "-a",
        f"--format={','.join(SACCT_FIELDS)}", "-s", ACCOUNTED_STATES,
        "-S", slurm_time(since), "-E", slurm_time(until) if until else "now",
    ]  # fmt: skip


def squeue_status_argv(job_ids: Sequence[str]) -> list[str]:
    """``squeue`` for ``job_ids`` in any state (``-t all``: finished ones within MinJobAge)."""
    return ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", SQUEUE_FORMAT]


def squeue_node_argv(job_id: str) -> list[str]:
    """``squeue`` for one job's state, nodelist and owner."""
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%N|%u"]


def scancel_argv(job_id: str) -> list[str]:
    """``scancel -v``: without -v, 22.05 says nothing (exit 0) for an unknown job id."""
    return ["scancel", "-v", job_id]


def sinfo_nodes_argv() -> list[str]:
    """Every node in some partition, one line per node and partition."""
    return ["sinfo", "-h", "-N", "-o", "%N"]


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
        sinfo = runner(["sinfo", "--version"], timeout=10).stdout
    except CommandFailed as e:
        log.warning("cannot tell the Slurm version (%s): using the CLI", e)
        return "cli"
    version = str(getattr(pyslurm, "__version__", ""))
    if pyslurm_matches(version, sinfo):
        return "pyslurm"
    log.info("pyslurm %s does not match %s: using the CLI", version, sinfo.strip())
    return "cli"


class SlurmScheduler(Scheduler):
    """Slurm through its CLI. ``extra_submit_args`` go before the script on sbatch's argv
    (site config ``scheduler.extra_submit_args``, e.g. ``--export=NONE``);
    ``list_timeout`` bounds the one large sacct of :meth:`list_jobs`.
    """

    name = "slurm"

    def __init__(
        self,
        runner: Runner = run_command,
        timeout: float = 30,
        *,
        extra_submit_args: Sequence[str] = (),
        list_timeout: float | None = None,
    ) -> None:
        self.runner = runner
        self.timeout = timeout
        self.extra_submit_args = tuple(extra_submit_args)
        self.list_timeout = list_timeout if list_timeout is not None else max(timeout, 300.0)
        self._nodes: frozenset[str] | None = None
        self._nodes_read_at = 0.0

    def submit(self, job: BatchJob) -> str:
        """Submit ``job`` pinned to ``job.node``; the node is checked before sbatch runs."""
        _check_job(job)
        self.check_submitter()
        if not self.node_exists(job.node):
            known = ", ".join(sorted(self._nodes or ()))
            raise NotFound(f"node {job.node} is not a node of this Slurm cluster (known: {known})")
        try:
            result = self.runner(sbatch_argv(job, self.extra_submit_args), timeout=self.timeout)
        except CommandFailed as e:
            reason = slurm_errors(e.stderr) or str(e)
            transient = e.timed_out or any(t in reason.lower() for t in _TRANSIENT)
            raise SchedulerError(
                f"sbatch refused job {job.name} for node {job.node}: {reason}",
                retryable=transient,
            ) from e
        if result.stderr.strip():
            log.warning("sbatch: %s", result.stderr.strip())
        job_id = parse_sbatch_parsable(result.stdout)
        log.info("submitted Slurm job %s (%s) to %s", job_id, job.name, job.node)
        return job_id

    def status(self, job_ids: Iterable[str], since: datetime) -> dict[str, JobRecord]:
        """Records for ``job_ids``: one sacct, then one squeue for ids that sacct lacks
        (just submitted), that are still live (sacct keeps no comment until the end) or
        whose accounting record is still partial."""
        ids = _check_ids(job_ids)
        if not ids:
            return {}
        try:
            output = self.runner(sacct_status_argv(ids, since), timeout=self.timeout).stdout
            accounted = {r.job_id: r for r in parse_sacct_rows(output) if r.job_id in ids}
        except (CommandFailed, ValueError) as e:
            # slurmdbd or its database down: the controller still knows live jobs (and
            # finished ones for MinJobAge); the rest are UNKNOWN, saying why
            log.warning("sacct failed, asking squeue only: %s", e)
            live = self._live_records(ids)
            why = (f"Slurm accounting (slurmdbd) does not answer ({slurm_errors(_stderr(e))}); "
                   "the state is known again when it does")  # fmt: skip
            return {i: live.get(i) or _unknown(i, why) for i in ids}
        ask_live = [i for i in ids if i not in accounted or _incomplete(accounted[i])]
        live = self._live_records(ask_live) if ask_live else {}
        records = {}
        for job_id in ids:
            have, now = accounted.get(job_id), live.get(job_id)
            if have is not None and now is not None:
                records[job_id] = merge_live(have, now)
            else:
                records[job_id] = have or now or _unknown(job_id, "not known to Slurm yet")
        return records

    def _live_records(self, job_ids: list[str]) -> dict[str, JobRecord]:
        try:
            result = self.runner(squeue_status_argv(job_ids), timeout=self.timeout, check=False)
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                log.warning("squeue failed: %s", slurm_errors(result.stderr))
                return {}
            return {r.job_id: r for r in parse_squeue_rows(result.stdout)}
        except (CommandFailed, ValueError) as e:
            log.warning("squeue failed: %s", e)
            return {}

    def list_jobs(
        self, since: datetime, until: datetime | None = None, name_prefix: str = ""
    ) -> list[JobRecord]:
        """Every user's jobs between ``since`` and ``until`` (default now) from accounting,
        only those whose name starts with ``name_prefix``."""
        if until is not None and until < since:
            raise InvalidRequest(f"list_jobs: until {until} is before since {since}")
        try:
            result = self.runner(sacct_list_argv(since, until), timeout=self.list_timeout)
            return parse_sacct_rows(result.stdout, name_prefix=name_prefix)
        except CommandFailed as e:
            raise SchedulerError(
                f"sacct cannot list jobs: {slurm_errors(e.stderr) or e}", retryable=True
            ) from e
        except ValueError as e:
            raise SchedulerError(f"sacct output not understood: {e}") from e

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job; a job that already finished is left alone."""
        (job_id,) = _check_ids([job_id])
        try:
            result = self.runner(scancel_argv(job_id), timeout=self.timeout, check=False)
        except CommandFailed as e:
            raise SchedulerError(f"scancel {job_id} failed: {e}", retryable=True) from e
        reason = slurm_errors(result.stderr) if "error:" in result.stderr else ""
        if "Invalid job id" in reason:
            raise NotFound(f"Slurm job {job_id} does not exist (or left the queue long ago)")
        if "already completing or completed" in reason:
            log.info("Slurm job %s already finished; nothing to cancel", job_id)
        elif "permission denied" in reason.lower():
            raise PermissionDenied(f"not allowed to cancel Slurm job {job_id}: {reason}")
        elif reason or result.returncode != 0:
            raise SchedulerError(f"scancel {job_id} failed: {reason or result.stderr.strip()}")

    def node_of_job(self, job_id: str) -> tuple[str, str]:
        """(first node, owner) of a RUNNING job; NotFound for any other state."""
        (job_id,) = _check_ids([job_id])
        try:
            result = self.runner(squeue_node_argv(job_id), timeout=self.timeout, check=False)
        except CommandFailed as e:
            raise SchedulerError(f"squeue cannot tell job {job_id}'s node: {e}") from e
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

    def node_exists(self, node: str) -> bool:
        """Whether ``node`` is in some partition (sinfo, cached; re-read on a miss).

        Only names sinfo printed pass, so ``-a`` or ``n1,n2`` never reach sbatch.
        """
        stale = time.monotonic() - self._nodes_read_at > NODE_CACHE_SECONDS
        if self._nodes is None or (node not in self._nodes and stale):
            try:
                result = self.runner(sinfo_nodes_argv(), timeout=self.timeout)
            except CommandFailed as e:
                raise SchedulerError(f"sinfo cannot list nodes: {e}", retryable=True) from e
            self._nodes = parse_sinfo_nodes(result.stdout)
            self._nodes_read_at = time.monotonic()
        return node in self._nodes


def _check_job(job: BatchJob) -> None:
    for what, text in (("job name", job.name), ("partition", job.partition)):
        if not text or any(c in text for c in "|\n\r"):
            raise InvalidRequest(f"{what} {text!r} must be non-empty, without '|' or newlines")
    if job.cpus < 1 or job.time_limit_minutes < 1:
        raise InvalidRequest(
            f"job {job.name}: cpus ({job.cpus}) and time limit "
            f"({job.time_limit_minutes} min) must be at least 1"
        )


def _check_ids(job_ids: Iterable[str]) -> list[str]:
    ids = list(dict.fromkeys(str(i).strip() for i in job_ids))
    bad = [i for i in ids if not is_job_id(i)]
    if bad:
        raise InvalidRequest(f"not Slurm job ids: {', '.join(map(repr, bad))}")
    return ids


def _incomplete(record: JobRecord) -> bool:
    return not record.state.final or is_partial_record(record)


def _stderr(error: Exception) -> str:
    return error.stderr if isinstance(error, CommandFailed) else str(error)


def _unknown(job_id: str, reason: str) -> JobRecord:
    return JobRecord(job_id=job_id, state=JobState.UNKNOWN, reason=reason)
