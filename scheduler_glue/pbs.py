"""PBS Pro (OpenPBS / Altair PBS Professional) backend.

Pure functions build every argv (:mod:`scheduler_glue.pbs_commands`) and parse every
output (:mod:`scheduler_glue.pbs_parse`, :mod:`scheduler_glue.pbs_logs`);
:class:`PbsScheduler` only wires them to a :class:`~site_configs.runner.Runner`.

Commands (OpenPBS 23.06 behaviour, see ``tests/fixtures/pbs``):

- submit: ``pbsnodes -F json NODE`` first, because ``qsub -l select=1:host=NOSUCH`` is
  accepted and the job then waits forever ("Can Never Run"); then
  ``qsub [-q QUEUE] [-A ACCOUNT] -N NAME -l select=1:host=NODE:ncpus=N
  -l walltime=HH:MM:SS -j oe -o OUTPUT SCRIPT``. No ``-v``: PBS splits its list on
  unquoted commas and mangles quotes and backslashes, and no ``-V``: the environment
  would be stored with the job.
- status: one ``qstat -fx -F json ID...`` per poll (``-F json`` needs ``-f``). Ids that
  qstat no longer knows (history off or purged) fall back to the accounting log (when
  ``accounting_log_dir`` is set) and then ``tracejob -n DAYS ID``.
- cancel: ``qdel ID``; node_of_job: ``qstat -f -F json ID``.

``BatchJob.qos`` has no PBS counterpart and is ignored; PBS Pro's qsub has no
working-directory option either, so ``BatchJob.workdir`` is ignored too (a PBS job starts
in the owner's home; the rendered script changes directory itself).

Request metadata. PBS has no free-text job field that survives into history and the
accounting log, and ``-v`` cannot carry arbitrary text (see above). So:

- the job name carries a short tag: ``BatchJob.name`` reduced to PBS's job-name
  alphabet (``[A-Za-z0-9_+-]``, first character a letter, at most 236 characters);
  list_jobs filters on it and it is kept in the accounting log;
- the full metadata (``imgsave/1 key=value;...``, :mod:`scheduler_glue.metadata`) is
  written by ``submit`` to ``<script dir>/metadata`` before ``qsub``, atomically. The
  script directory is the job's own spool directory, on shared storage.
- status reads it back from the script path, which is the last word of the job's
  ``Submit_arguments`` (PBS stores the qsub arguments space-joined and unquoted, so
  submit refuses a script path containing whitespace, which keeps that last word exact).
  Records that come only from the logs (history purged) carry no script path and hence
  no metadata; the service keeps its own index of requests for those.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from scheduler_glue.base import BatchJob, JobRecord, Scheduler
from scheduler_glue.pbs_commands import (
    NAME_CHARS,
    check_job,
    pbsnodes_argv,
    qdel_argv,
    qstat_argv,
    qsub_argv,
    read_metadata_file,
    tracejob_argv,
    write_metadata_file,
)
from scheduler_glue.pbs_logs import (
    AccountingRecord,
    accounting_log_paths,
    facts_from_accounting,
    parse_accounting_log,
    parse_tracejob,
    record_from_facts,
)
from scheduler_glue.pbs_parse import (
    HISTORY_OFF,
    QstatAnswer,
    parse_pbsnodes_json,
    parse_qstat_json,
    parse_qsub_job_id,
    record_from_qstat,
    scheduler_message,
    script_from_submit_arguments,
)
from scheduler_glue.states import JobState
from site_configs.errors import CommandFailed, NotFound, SchedulerError
from site_configs.runner import DEFAULT_TIMEOUT_SECONDS, CommandResult, Runner, run_command

log = logging.getLogger(__name__)

_UNKNOWN_JOB = "Unknown Job Id"
_FINISHED_JOB = "Job has finished"
_BAD_NODE_STATES = ("down", "offline", "unknown", "stale", "unresolvable")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PbsScheduler(Scheduler):
    """PBS Pro through its CLI: qsub, qstat, qdel, pbsnodes, tracejob.

    ``server_history`` says the server keeps finished jobs (``job_history_enable``);
    without it status asks ``qstat -f`` and reads finished jobs from the logs.
    ``accounting_log_dir`` is a readable copy (or mount) of
    ``$PBS_HOME/server_priv/accounting``. ``clock`` is for tests.
    """

    name = "pbs"

    def __init__(
        self,
        runner: Runner = run_command,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        server_history: bool = True,
        accounting_log_dir: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
        server_timezone: str = "",
    ) -> None:
        self.runner = runner
        # tracejob prints the server's local time; "" = this machine's zone
        self.server_timezone = server_timezone
        self.server_tz = ZoneInfo(server_timezone) if server_timezone else None
        self.timeout = timeout
        self.server_history = server_history
        self.accounting_log_dir = Path(accounting_log_dir) if accounting_log_dir else None
        self.clock = clock

    # -- commands -------------------------------------------------------------------

    def _qstat(self, job_ids: list[str]) -> QstatAnswer:
        """``qstat -f[x] -F json``: with ``-x`` while the server keeps history. A server
        that says it keeps none (whatever the site config claims; switching history off
        also purges what was kept) is asked again without ``-x``, and from then on the
        logs stand in for finished jobs (fixtures/pbs 31*)."""
        result = self._run(qstat_argv(job_ids, history=self.server_history))
        if self.server_history and HISTORY_OFF in result.stderr:
            log.warning("PBS keeps no job history (job_history_enable is False on the "
                        "server): finished jobs come from the accounting log and tracejob")
            self.server_history = False
            result = self._run(qstat_argv(job_ids, history=False))
        return parse_qstat_json(result.stdout, result.stderr, result.returncode)

    def _run(self, argv: list[str]) -> CommandResult:
        """Run without raising on exit codes; a command that cannot run → SchedulerError."""
        try:
            return self.runner(argv, timeout=self.timeout, check=False)
        except CommandFailed as e:
            raise SchedulerError(
                f"{argv[0]} could not run: {e.message}", retryable=e.retryable
            ) from e

    # -- Scheduler API ----------------------------------------------------------------

    def node_exists(self, node: str) -> bool:
        """Whether PBS knows ``node`` as an execution host (``pbsnodes -F json NODE``)."""
        return self._node_state(node) is not None

    def _node_state(self, node: str) -> str | None:
        result = self._run(pbsnodes_argv(node))
        if result.returncode != 0:
            raise SchedulerError(
                f"pbsnodes failed: {scheduler_message(result.stderr, result.stdout)}",
                retryable=True,
            )
        return parse_pbsnodes_json(result.stdout, node)

    def submit(self, job: BatchJob) -> str:
        """Check the node, write the metadata file, qsub; return the job id."""
        check_job(job)
        self.check_submitter()
        state = self._node_state(job.node)
        if state is None:
            raise NotFound(f"node {job.node} is not a PBS execution host")
        if any(bad in state for bad in _BAD_NODE_STATES):
            log.warning("PBS node %s is %s; the job will wait until it is back", job.node, state)
        try:
            write_metadata_file(job.script, job.metadata)
        except OSError as e:
            raise SchedulerError(f"cannot write the job's metadata file: {e}") from e
        result = self._run(qsub_argv(job))
        if result.returncode != 0:
            message = scheduler_message(result.stderr, result.stdout)
            raise SchedulerError(
                f"qsub refused the job: {message}", retryable="cannot connect" in message
            )
        job_id = parse_qsub_job_id(result.stdout)
        log.info("submitted PBS job %s pinned to %s", job_id, job.node)
        return job_id

    def status(self, job_ids: Iterable[str], since: datetime) -> dict[str, JobRecord]:
        """One batched qstat; ids it lacks come from the accounting log or tracejob."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        since = since.astimezone()  # a naive time is taken as local
        try:
            answer = self._qstat(wanted)
        except SchedulerError as e:
            log.warning("PBS status unavailable, every job UNKNOWN: %s", e.message)
            return {job_id: _unknown(job_id, e.message) for job_id in wanted}
        records: dict[str, JobRecord] = {}
        for job_id in wanted:
            attrs = answer.jobs.get(job_id) or _by_sequence(job_id, answer.jobs)
            if attrs is not None:
                records[job_id] = self._from_qstat(job_id, attrs)
        missing = [job_id for job_id in wanted if job_id not in records]
        if missing:
            records.update(self._from_logs(missing, since))
        return records

    def _from_qstat(self, job_id: str, attrs: Mapping[str, object]) -> JobRecord:
        script = script_from_submit_arguments(str(attrs.get("Submit_arguments", "")))
        metadata = read_metadata_file(Path(script) if script else None)
        return record_from_qstat(job_id, attrs, metadata=metadata)

    def _from_logs(self, job_ids: list[str], since: datetime) -> dict[str, JobRecord]:
        """Records for jobs qstat does not know: accounting log, then tracejob.

        qstat lists every queued or running job, so only a final record counts here; a
        log that ends with the job still live was cut short and gives UNKNOWN.
        """
        found: dict[str, JobRecord] = {}
        if self.accounting_log_dir is not None:
            facts = facts_from_accounting(self._accounting_records(since, None))
            for job_id in job_ids:
                if job_id in facts:
                    found[job_id] = record_from_facts(facts[job_id], "accounting")
        days = (self.clock().astimezone().date() - since.astimezone().date()).days + 1
        for job_id in job_ids:
            if job_id in found and found[job_id].state.final:
                continue
            try:
                result = self._run(tracejob_argv(job_id, days, self.server_timezone))
            except SchedulerError as e:
                log.warning("tracejob unavailable for %s: %s", job_id, e.message)
                continue
            if result.returncode != 0:
                log.warning("tracejob %s failed: %s", job_id, scheduler_message(result.stderr))
                continue
            trace = parse_tracejob(result.stdout, job_id, self.server_tz)
            if trace is not None:
                found[job_id] = record_from_facts(trace, "tracejob")
        for job_id in job_ids:
            record = found.get(job_id)
            if record is None:
                log.warning("PBS job %s is unknown to qstat, the logs and tracejob", job_id)
                found[job_id] = _unknown(
                    job_id, "unknown to qstat, the accounting log and tracejob"
                )
            elif not record.state.final:
                found[job_id] = _unknown(
                    job_id, f"qstat no longer knows the job; its logs end in {record.state}"
                )
        return found

    def _accounting_records(
        self, since: datetime, until: datetime | None
    ) -> list[AccountingRecord]:
        """Records of the daily accounting files that may cover [since, until]."""
        records: list[AccountingRecord] = []
        if self.accounting_log_dir is None:
            return records
        for path in accounting_log_paths(self.accounting_log_dir, since, until or self.clock()):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("cannot read PBS accounting log %s: %s", path, e)
                continue
            records.extend(parse_accounting_log(text))
        return records

    def list_jobs(
        self, since: datetime, until: datetime | None = None, name_prefix: str = ""
    ) -> list[JobRecord]:
        """Jobs submitted in [since, until] whose name starts with ``name_prefix``.

        From ``qstat -fx -F json`` (every job the server keeps), plus the accounting log
        for jobs whose history is gone when ``accounting_log_dir`` is set.
        """
        since = since.astimezone()  # a naive time is taken as local
        until = until.astimezone() if until is not None else None
        answer = self._qstat([])
        if not self.server_history and self.accounting_log_dir is None:
            # only live jobs are listed: a report would take the window as covered
            raise SchedulerError(
                "PBS keeps no job history and no accounting log directory is configured "
                "(scheduler.pbs_accounting_log_dir): finished jobs cannot be listed; turn "
                "job_history_enable on or give the log directory (docs/install-pbs.md)"
            )
        prefix = NAME_CHARS.sub("-", name_prefix)

        def wanted(name: str, submitted: datetime | None) -> bool:
            if not name.startswith(prefix) or submitted is None or submitted < since:
                return False
            return until is None or submitted <= until

        records: dict[str, JobRecord] = {}
        for job_id, attrs in answer.jobs.items():
            record = record_from_qstat(job_id, attrs)
            if wanted(record.name, record.submit_time):
                script = script_from_submit_arguments(str(attrs.get("Submit_arguments", "")))
                metadata = read_metadata_file(Path(script) if script else None)
                records[job_id] = dataclasses.replace(record, metadata=metadata)
        if self.accounting_log_dir is not None:
            facts = facts_from_accounting(self._accounting_records(since, until))
            for job_id, job_facts in facts.items():
                if job_id not in records and wanted(job_facts.name, job_facts.submit):
                    records[job_id] = record_from_facts(job_facts, "accounting")
        return sorted(records.values(), key=_submit_order)

    def cancel(self, job_id: str) -> None:
        """``qdel``. A job that already finished is left alone (cancel is idempotent)."""
        result = self._run(qdel_argv(job_id))
        if result.returncode == 0:
            return
        message = scheduler_message(result.stderr, result.stdout)
        if _UNKNOWN_JOB in message:
            raise NotFound(f"PBS does not know job {job_id}")
        if _FINISHED_JOB in message:
            log.info("PBS job %s already finished; nothing to cancel", job_id)
            return
        raise SchedulerError(f"qdel {job_id} failed: {message}")

    def node_of_job(self, job_id: str) -> tuple[str, str]:
        """(first exec host, owner) of a running job, from ``qstat -f -F json ID``."""
        result = self._run(qstat_argv([job_id], history=False))
        try:
            answer = parse_qstat_json(result.stdout, result.stderr, result.returncode)
        except SchedulerError as e:
            raise SchedulerError(f"cannot read PBS job {job_id}: {e.message}") from e
        attrs = answer.jobs.get(job_id) or _by_sequence(job_id, answer.jobs)
        if attrs is None:
            why = "has finished" if answer.finished else "is unknown to PBS"
            raise NotFound(f"PBS job {job_id} {why}")
        record = record_from_qstat(job_id, attrs)
        # R only: a suspended job (S, U) also maps to RUNNING but its processes are stopped
        if attrs.get("job_state") != "R" or not record.node:
            raise NotFound(f"PBS job {job_id} is not running (state {record.raw_state})")
        return record.node, record.user


def _by_sequence(
    job_id: str, jobs: Mapping[str, Mapping[str, object]]
) -> Mapping[str, object] | None:
    """Match ``12`` or ``12.host`` against ``12.host.domain``: same sequence number, once."""
    sequence = job_id.split(".", 1)[0]
    matches = [attrs for key, attrs in jobs.items() if key.split(".", 1)[0] == sequence]
    return matches[0] if len(matches) == 1 else None


def _unknown(job_id: str, reason: str) -> JobRecord:
    return JobRecord(job_id=job_id, state=JobState.UNKNOWN, reason=reason)


def _submit_order(record: JobRecord) -> tuple[float, str]:
    when = record.submit_time.timestamp() if record.submit_time else 0.0
    return when, record.job_id
