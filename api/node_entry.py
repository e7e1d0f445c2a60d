"""``python -I -m api.node_entry CONFIG JOBID REQUEST_ID``: the node's privileged entry.

What the root-owned wrapper ``imgsave-node-save`` runs (site_configs/deploy). All the
entry's checks and the save live in :mod:`builder_jobs.node_gate`; this module only
gives it the site's scheduler, asked about the job: builder_jobs never imports
scheduler_glue, so the one module that needs both sits above them.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from builder_jobs import node_gate, step_gate, warmup_gate
from builder_jobs.node_gate import JobLookup, JobOnRecord, Refused
from core.errors import ImgsaveError
from scheduler_glue import make_scheduler
from scheduler_glue.base import Scheduler
from scheduler_glue.metadata import requester_of
from scheduler_glue.states import JobState
from site_configs.schema import SiteConfig

# How far back the scheduler is asked about the job (it is running now).
LOOKBACK = timedelta(days=3)


def job_record(scheduler: Scheduler, config: SiteConfig, job_id: str) -> JobOnRecord:
    """The scheduler's record of ``job_id`` (a job, or a step of a user's job);
    Refused if it cannot say or does not know it."""
    service_account = config.service_account
    since = datetime.now(UTC) - LOOKBACK
    try:
        record = scheduler.status([job_id], since).get(job_id)
    except ImgsaveError as e:
        raise Refused(f"cannot ask the scheduler about job {job_id}: {e.message}") from e
    if record is None or record.state is JobState.UNKNOWN:
        raise Refused(f"job {job_id} is not known to the scheduler")
    metadata = record.metadata
    if step_gate.is_step(record.job_id):  # no comment: the request is in the owner's spool
        if not record.user or record.user == service_account:
            raise Refused(f"step {job_id} names no user it may save for")
        metadata = step_gate.step_request(config, record.job_id, record.user, record.node,
                                          record.metadata)  # fmt: skip
    return JobOnRecord(
        job_id=record.job_id,
        owner=record.user,
        state=record.state.name,
        running=record.state is JobState.RUNNING,
        works_for=requester_of(record.user, metadata, service_account),
        node=record.node,
        metadata=metadata,
    )


def scheduler_lookup(config: SiteConfig) -> JobLookup:
    """The site's scheduler as the entry asks it: one job's record."""
    scheduler = make_scheduler(config.scheduler)
    return lambda job_id: job_record(scheduler, config, job_id)


if __name__ == "__main__":
    # a warm-up job's request is a warm-up; anything else is a save (node_gate)
    sys.exit(warmup_gate.dispatch(None, scheduler_lookup, node_gate.main))
