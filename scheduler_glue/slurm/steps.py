"""Pure parts of a save run as a step of the user's own job (``srun --jobid J --overlap``).

A step has no comment and sacct prints no owner on its row; :func:`parse_sacct_rows`
takes those from the job's row. While it runs, ``squeue --steps`` lists it
(:data:`SQUEUE_STEP_FORMAT`); squeue shows no other step state.
"""

from __future__ import annotations

from datetime import tzinfo

from scheduler_glue.base import JobRecord
from scheduler_glue.slurm.parse import first_node, job_of_step, parse_slurm_time, step_metadata
from scheduler_glue.states import JobState

# squeue --steps codes: step id, step name, user, nodes, partition, start (61_*).
SQUEUE_STEP_FORMAT = "%i|%j|%u|%N|%P|%S"
_COLUMNS = SQUEUE_STEP_FORMAT.count("|") + 1


def parse_squeue_steps(stdout: str, *, tz: tzinfo | None = None) -> list[JobRecord]:
    """Records of running steps from ``squeue -h -s -o <SQUEUE_STEP_FORMAT>`` (squeue
    lists only running steps; a step just ended is in accounting, not here)."""
    records = []
    for line in stdout.splitlines():
        cols = line.split("|")
        if len(cols) != _COLUMNS or not job_of_step(cols[0]):
            continue
        step_id, name, user, nodes, partition, start = cols
        records.append(JobRecord(
            job_id=step_id, state=JobState.RUNNING, raw_state="RUNNING", name=name,
            user=user, node=first_node(nodes), partition=partition,
            start_time=parse_slurm_time(start, tz), metadata=step_metadata(name),
        ))  # fmt: skip
    return records
