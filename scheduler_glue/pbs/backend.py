"""PBS Pro (OpenPBS / Altair PBS Professional) backend.

Only hooks: pure functions build every argv (:mod:`scheduler_glue.pbs.commands`) and
parse every output (:mod:`scheduler_glue.pbs.parse`, :mod:`scheduler_glue.pbs.logs`);
the base class (:class:`~scheduler_glue.base.Scheduler`) runs the commands, turns
failures into typed errors and makes what PBS does not know UNKNOWN.

Commands (OpenPBS 23.06 behaviour, see ``tests/captures/pbs``):

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
- the full metadata (``imgsave/1 key=value;...``, :mod:`scheduler_glue.pbs.metadata_file`)
  is written by ``submit`` to ``<script dir>/metadata`` before ``qsub``, atomically. The
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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self
from zoneinfo import ZoneInfo

from core.errors import NotFound, SchedulerError
from core.runner import DEFAULT_TIMEOUT_SECONDS, Runner, run_command
from scheduler_glue.base import (
    BatchJob,
    JobNodes,
    JobRecord,
    Scheduler,
    StatusUnavailable,
    unknown_record,
)
from scheduler_glue.pbs.commands import (
    NAME_CHARS,
    check_job,
    pbsnodes_argv,
    qdel_argv,
    qstat_argv,
    qsub_argv,
    tracejob_argv,
)
from scheduler_glue.pbs.logs import (
    AccountingRecord,
    accounting_log_paths,
    facts_from_accounting,
    parse_accounting_log,
    parse_tracejob,
    record_from_facts,
)
from scheduler_glue.pbs.metadata_file import read_metadata_file, write_metadata_file
from scheduler_glue.pbs.parse import (
    HISTORY_OFF,
    JOB_ID,
    QstatAnswer,
    exec_hosts,
    parse_pbsnodes_json,
    parse_qstat_json,
    parse_qsub_job_id,
    record_from_qstat,
    scheduler_message,
    script_from_submit_arguments,
)

if TYPE_CHECKING:
    from site_configs.schema import SchedulerSection

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
    label = "PBS"
    submit_command = "qsub"
    job_id_pattern = JOB_ID
    accounting_window = None  # qstat -x has no time window: each window at once
    job_id_variable = "PBS_JOBID"
    node_variable = ""  # PBS exports no execution host name: the spec's node stands
    unknown_reason = "unknown to qstat, the accounting log and tracejob"

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
        super().__init__(runner, timeout)
        # tracejob prints the server's local time; "" = this machine's zone
        self.server_timezone = server_timezone
        self.server_tz = ZoneInfo(server_timezone) if server_timezone else None
        self.server_history = server_history
        self.accounting_log_dir = Path(accounting_log_dir) if accounting_log_dir else None
        self.clock = clock

    @classmethod
    def from_section(cls, section: SchedulerSection, runner: Runner) -> Self:
        return cls(
            runner=runner,
            timeout=section.command_timeout_seconds,
            server_history=section.pbs_job_history,
            accounting_log_dir=section.pbs_accounting_log_dir or None,
            server_timezone=section.pbs_server_timezone,
        )

    def _qstat(self, job_ids: list[str]) -> QstatAnswer:
        """``qstat -f[x] -F json``: with ``-x`` while the server keeps history. A server
        that says it keeps none (whatever the site config claims; switching history off
        also purges what was kept) is asked again without ``-x``, and from then on the
        logs stand in for finished jobs (tests/captures/pbs 31*)."""
        result = self.run(qstat_argv(job_ids, history=self.server_history))
        if self.server_history and HISTORY_OFF in result.stderr:
            log.warning("PBS keeps no job history (job_history_enable is False on the "
                        "server): finished jobs come from the accounting log and tracejob")
            self.server_history = False
            result = self.run(qstat_argv(job_ids, history=False))
        return parse_qstat_json(result.stdout, result.stderr, result.returncode)

    # -- submit -------------------------------------------------------------------------
    def check_job(self, job: BatchJob) -> None:
        check_job(job)

    def check_node(self, node: str) -> None:
        state = self._node_state(node)
        if state is None:
            raise NotFound(f"node {node} is not a PBS execution host")
        if any(bad in state for bad in _BAD_NODE_STATES):
            log.warning("PBS node %s is %s; the job will wait until it is back", node, state)

    def prepare(self, job: BatchJob) -> None:
        """Write the job's metadata file beside its script (see the module doc)."""
        try:
            write_metadata_file(job.script, job.metadata)
        except OSError as e:
            raise SchedulerError(f"cannot write the job's metadata file: {e}") from e

    def submit_failure(self, job: BatchJob) -> str:
        return "qsub refused the job"

    def submit_argv(self, job: BatchJob) -> list[str]:
        return qsub_argv(job)

    def parse_job_id(self, stdout: str) -> str:
        return parse_qsub_job_id(stdout)

    def error_text(self, stderr: str, stdout: str = "") -> str:
        return scheduler_message(stderr, stdout)

    def is_transient(self, reason: str) -> bool:
        return "cannot connect" in reason

    def node_exists(self, node: str) -> bool:
        """Whether PBS knows ``node`` as an execution host (``pbsnodes -F json NODE``)."""
        return self._node_state(node) is not None

    def _node_state(self, node: str) -> str | None:
        result = self.run_or_fail(pbsnodes_argv(node), "pbsnodes failed", retryable=True)
        return parse_pbsnodes_json(result.stdout, node)

    # -- status -------------------------------------------------------------------------
    def read_status(self, job_ids: list[str], since: datetime) -> dict[str, JobRecord]:
        """One batched qstat; ids it lacks come from the accounting log or tracejob."""
        since = since.astimezone()  # a naive time is taken as local
        try:
            answer = self._qstat(job_ids)
        except SchedulerError as e:
            raise StatusUnavailable(e.message) from e
        records: dict[str, JobRecord] = {}
        for job_id in job_ids:
            attrs = answer.jobs.get(job_id) or _by_sequence(job_id, answer.jobs)
            if attrs is not None:
                records[job_id] = self._from_qstat(job_id, attrs)
        missing = [job_id for job_id in job_ids if job_id not in records]
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
        log that ends with the job still live was cut short and gives UNKNOWN. Ids found
        nowhere are left out (the base makes them UNKNOWN).
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
                result = self.run(tracejob_argv(job_id, days, self.server_timezone))
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
            elif not record.state.final:
                found[job_id] = unknown_record(
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

    def read_jobs(
        self, since: datetime, until: datetime | None, name_prefix: str
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

    # -- cancel, node -------------------------------------------------------------------
    def cancel_job(self, job_id: str) -> None:
        """``qdel``. A job that already finished is left alone (cancel is idempotent)."""
        result = self.run(qdel_argv(job_id))
        if result.returncode == 0:
            return
        message = scheduler_message(result.stderr, result.stdout)
        if _UNKNOWN_JOB in message:
            raise NotFound(f"PBS does not know job {job_id}")
        if _FINISHED_JOB in message:
            log.info("PBS job %s already finished; nothing to cancel", job_id)
            return
        raise SchedulerError(f"qdel {job_id} failed: {message}")

    def locate_job_nodes(self, job_id: str) -> JobNodes:
        """Every exec host of a running job (``exec_host`` ``n1/0*2+n2/1``); a queued job
        has none yet (PBS chooses hosts only when it starts it): NotFound."""
        attrs = _running_attrs(self, job_id)
        record = record_from_qstat(job_id, attrs)
        hosts = exec_hosts(str(attrs.get("exec_host", "")))
        if attrs.get("job_state") != "R" or not hosts:
            raise NotFound(f"PBS job {job_id} is not running on hosts (state {record.raw_state})")
        return JobNodes(job_id=job_id, owner=record.user, state="R", nodes=hosts)

    def locate_job(self, job_id: str) -> tuple[str, str]:
        """(first exec host, owner) of a running job, from ``qstat -f -F json ID``."""
        attrs = _running_attrs(self, job_id)
        record = record_from_qstat(job_id, attrs)
        # R only: a suspended job (S, U) also maps to RUNNING but its processes are stopped
        if attrs.get("job_state") != "R" or not record.node:
            raise NotFound(f"PBS job {job_id} is not running (state {record.raw_state})")
        return record.node, record.user


def _running_attrs(scheduler: PbsScheduler, job_id: str) -> Mapping[str, object]:
    """``qstat -f -F json ID``'s attributes of a job (NotFound if finished or unknown)."""
    result = scheduler.run(qstat_argv([job_id], history=False))
    try:
        answer = parse_qstat_json(result.stdout, result.stderr, result.returncode)
    except SchedulerError as e:
        raise SchedulerError(f"cannot read PBS job {job_id}: {e.message}") from e
    attrs = answer.jobs.get(job_id) or _by_sequence(job_id, answer.jobs)
    if attrs is None:
        why = "has finished" if answer.finished else "is unknown to PBS"
        raise NotFound(f"PBS job {job_id} {why}")
    return attrs


def _by_sequence(
    job_id: str, jobs: Mapping[str, Mapping[str, object]]
) -> Mapping[str, object] | None:
    """Match ``12`` or ``12.host`` against ``12.host.domain``: same sequence number, once."""
    sequence = job_id.split(".", 1)[0]
    matches = [attrs for key, attrs in jobs.items() if key.split(".", 1)[0] == sequence]
    return matches[0] if len(matches) == 1 else None


def _submit_order(record: JobRecord) -> tuple[float, str]:
    when = record.submit_time.timestamp() if record.submit_time else 0.0
    return when, record.job_id
