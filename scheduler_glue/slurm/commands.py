"""Pure argv builders of the Slurm backend: sbatch, sacct, squeue, scancel, sinfo.

Every command is an argv list for the base class's runner; nothing here runs one.

Why ``--parsable2`` and not ``sacct --json`` (measured on the local Slurm 22.05.8
cluster, 123 jobs in accounting): for 10 ids ~100 ms against ~380 ms, for a whole window
~50 ms against ~390 ms; ``--json`` prints ~5.5 KB per job, and its ``exit_code`` says 0
for a script that exited 3 (``tests/captures/slurm/21b_*``). See docs/install-slurm.md.

Why no ``-X`` (``--allocations``): with it the job's row reads TotalCPU ``00:00:00``
whatever the job used, since sacct adds the steps' CPU times up only when it lists the
steps (``tests/captures/slurm/46c_*`` against ``46_*``). The parser folds the step rows
(``123.batch``, ``123.extern``, ``123.0``) into one record per job.

The job's environment (issue 12): ``--export NONE`` kept the submitter's environment out
of the job, but on Slurm 22.05 it makes slurmstepd load the owner's login environment
(``SLURM_GET_USER_ENV=1``: ``su - USER -c ... slurmstepd getenv``), 1.1-1.3 s before
the job starts on most jobs here; ``--export=NIL`` does the same. So sbatch runs under
``env -i`` with a small environment built from the account database
(:func:`job_environment`) and passes exactly that on (``--export ALL``): nothing of
the submitter's (a portal's secrets, a planted ``PATH``, ``LD_PRELOAD``, ``PYTHON*``,
``BASH_ENV``, stray ``SLURM_*`` or ``SBATCH_*`` settings) reaches sbatch, the job or
accounting, and no login shell runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from scheduler_glue.base import BatchJob
from scheduler_glue.metadata import encode_metadata
from scheduler_glue.slurm.parse import SACCT_FIELDS, SQUEUE_FORMAT
from scheduler_glue.slurm.steps import SQUEUE_STEP_FORMAT

# sacct -S is compared with the job's eligible/end times on the controller's clock.
SACCT_SLACK = timedelta(minutes=5)
# Every state sacct accounts. With -s, a window also finds jobs that were never eligible
# (held, then cancelled); without it sacct skips them (fixtures 22 vs 22b).
ACCOUNTED_STATES = "PD,R,CD,F,CA,TO,NF,OOM,PR,BF,DL,RQ,S,RS,RV"


# The job's PATH: the system's directories only (the job runs sudo and an absolute python).
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
# Variables sbatch itself may need, taken from the submitter's environment when set.
PASSED_THROUGH = ("SLURM_CONF",)


def job_environment(user: str, home: str, inherited: Mapping[str, str]) -> dict[str, str]:
    """The whole environment sbatch runs with, and the job gets (``--export ALL``; Slurm
    adds its ``SLURM_*`` variables): ``user`` and ``home`` from the account database,
    never from ``$USER``/``$HOME``; of ``inherited`` only :data:`PASSED_THROUGH`."""
    environment = {"PATH": JOB_PATH, "HOME": home, "USER": user, "LOGNAME": user,
                   "LANG": "C.UTF-8"}  # fmt: skip
    environment.update({k: inherited[k] for k in PASSED_THROUGH if inherited.get(k)})
    return environment


def slurm_time(moment: datetime) -> str:
    """``moment`` as sacct reads it: local time, no zone (a naive one is taken as local)."""
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def output_pattern(path: str) -> str:
    """``path`` for ``--output``, with ``%`` escaped: Slurm expands ``%j`` and friends."""
    return path.replace("%", "%%")


def sbatch_argv(job: BatchJob, extra_args: Sequence[str] = (), *,
                environment: Mapping[str, str], sbatch: str = "sbatch") -> list[str]:
    """``env -i VAR=VALUE... sbatch --parsable ...`` for ``job``, pinned to ``job.node``;
    metadata in --comment; the job's whole environment is ``environment``
    (:func:`job_environment`). ``sbatch`` is its path as the submitter's PATH finds it."""
    if any(not name.isidentifier() for name in environment):
        raise ValueError(f"bad environment variable names: {sorted(environment)}")
    argv = ["env", "-i", *(f"{k}={v}" for k, v in environment.items()), sbatch, "--parsable",
            "--job-name", job.name, "--partition", job.partition]
    if job.qos:
        argv += ["--qos", job.qos]
    if job.account:
        argv += ["--account", job.account]
    argv += [
        "--nodelist", job.node, "--nodes", "1", "--ntasks", "1",
        "--cpus-per-task", str(job.cpus), "--time", str(job.time_limit_minutes),
        "--output", output_pattern(str(job.output_path)),
        "--comment", encode_metadata(job.metadata),
        # The environment env -i gave sbatch, and nothing else (see the module's doc).
        "--export", "ALL",
    ]  # fmt: skip
    if job.workdir is not None:
        argv += ["--chdir", str(job.workdir)]
    return [*argv, *extra_args, str(job.script)]


def srun_step_argv(job_id: str, step: BatchJob, *, environment: Mapping[str, str],
                   srun: str = "srun") -> list[str]:
    """``env -i VAR=VALUE... srun --jobid J --overlap ...``: ``step.script`` as one task
    on ``step.node`` inside the caller's running job ``job_id``, beside whatever the job
    runs (``--overlap``: it shares the job's CPUs, so it needs no CPU of its own and works
    in a whole-node or ``--exclusive`` job). Its output goes to ``step.output_path``; the
    step is named ``step.name`` (what status and reports find it by)."""
    if any(not name.isidentifier() for name in environment):
        raise ValueError(f"bad environment variable names: {sorted(environment)}")
    argv = ["env", "-i", *(f"{k}={v}" for k, v in environment.items()), srun,
            "--jobid", job_id, "--overlap", "--nodes", "1", "--ntasks", "1",
            "--nodelist", step.node, "--job-name", step.name,
            "--output", output_pattern(str(step.output_path)), "--export", "ALL",
            "--quiet"]  # fmt: skip
    if step.workdir is not None:
        argv += ["--chdir", str(step.workdir)]
    return [*argv, str(step.script)]


def squeue_steps_argv(job_id: str) -> list[str]:
    """``squeue --steps`` of one job: each running step's id, name, user and node."""
    return ["squeue", "-h", "-s", "-j", job_id, "-o", SQUEUE_STEP_FORMAT]


def squeue_step_status_argv(step_ids: Sequence[str]) -> list[str]:
    """``squeue`` for the given steps (running ones only: squeue shows no other)."""
    return ["squeue", "-h", "--steps", ",".join(step_ids), "-o", SQUEUE_STEP_FORMAT]


def sacct_status_argv(job_ids: Sequence[str], since: datetime) -> list[str]:
    """One batched ``sacct`` for ``job_ids``, bounded below by ``since`` minus slack.

    No ``-X``: the job's steps' rows carry its CPU time (see ``parse_sacct_rows``).
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


def squeue_nodes_argv(job_id: str) -> list[str]:
    """``squeue`` for one job's state, nodelist, owner and (pending) expected nodes."""
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%N|%u|%Y"]


def scancel_argv(job_id: str) -> list[str]:
    """``scancel -v``: without -v, 22.05 says nothing (exit 0) for an unknown job id."""
    return ["scancel", "-v", job_id]


def sinfo_nodes_argv() -> list[str]:
    """Every node in some partition, one line per node and partition."""
    return ["sinfo", "-h", "-N", "-o", "%N"]


def sinfo_version_argv() -> list[str]:
    """``sinfo --version`` (``slurm-wlm 22.05.8``)."""
    return ["sinfo", "--version"]
