"""Pure helpers of the PBS backend: argv builders and the submit checks.

Every command is an argv list for the base class's runner; nothing here runs one.
Job-name and queue-name rules are OpenPBS's (``ck_job_name.c``, ``pbs_ifl.h``): a job
name has at most 236 characters from ``[A-Za-z0-9_+-]``, the first a letter; a queue
name at most 15.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.errors import InvalidRequest
from scheduler_glue.base import BatchJob

MAX_JOB_NAME = 236  # PBS_MAXJOBNAME in OpenPBS pbs_ifl.h
NAME_CHARS = re.compile(r"[^A-Za-z0-9_+-]")  # OpenPBS ck_job_name.c: alnum, - _ +
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_QUEUE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")  # PBS_MAXQUEUENAME = 15


def pbs_job_name(name: str) -> str:
    """``name`` in PBS's job-name alphabet: other characters become ``-``.

    qsub -N wants at most 236 characters from ``[A-Za-z0-9_+-]``, the first one a
    letter; a name starting otherwise gets a ``j`` in front.
    """
    cleaned = NAME_CHARS.sub("-", name) or "imgsave"
    if not cleaned[0].isalpha():
        cleaned = "j" + cleaned
    return cleaned[:MAX_JOB_NAME]


def walltime(minutes: int) -> str:
    """``HH:MM:SS`` for ``-l walltime`` (hours may exceed 99)."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def qsub_argv(job: BatchJob) -> list[str]:
    """The qsub command that submits ``job`` pinned to ``job.node``."""
    argv = ["qsub"]
    if job.partition:
        argv += ["-q", job.partition]
    if job.account:
        argv += ["-A", job.account]
    argv += [
        "-N", pbs_job_name(job.name),
        "-l", f"select=1:host={job.node}:ncpus={job.cpus}",
        "-l", f"walltime={walltime(job.time_limit_minutes)}",
        "-j", "oe",
        "-o", str(job.output_path),
        str(job.script),
    ]  # fmt: skip
    return argv


def qstat_argv(job_ids: Iterable[str], *, history: bool) -> list[str]:
    """One qstat for many ids (all jobs when ``job_ids`` is empty)."""
    return ["qstat", "-fx" if history else "-f", "-F", "json", *job_ids]


def qdel_argv(job_id: str) -> list[str]:
    return ["qdel", job_id]


def pbsnodes_argv(node: str) -> list[str]:
    return ["pbsnodes", "-F", "json", node]


def tracejob_argv(job_id: str, days: int, server_timezone: str = "") -> list[str]:
    """tracejob reads only the last day of logs unless told ``-n DAYS``. It picks the
    daily log files by the date in the caller's zone, while the files are named and
    stamped in the server's (captures 28e/28f: a caller in Los Angeles does not find a
    job of today's UTC file): with ``server_timezone`` it runs in that zone."""
    argv = ["tracejob", "-n", str(max(1, days)), job_id]
    return ["env", f"TZ={server_timezone}", *argv] if server_timezone else argv


def check_job(job: BatchJob) -> None:
    """Refuse a job PBS would mis-parse or accept and never run (InvalidRequest)."""
    if not _HOST.match(job.node):
        raise InvalidRequest(f"node name {job.node!r} is not a valid PBS host name")
    if job.partition and not _QUEUE.match(job.partition):
        raise InvalidRequest(f"queue name {job.partition!r} is not a valid PBS queue name")
    script = str(job.script)
    if not job.script.is_absolute() or re.search(r"\s", script):
        raise InvalidRequest(
            f"job script {script!r} must be an absolute path without whitespace "
            "(PBS keeps it unquoted in Submit_arguments)"
        )
    if ":" in str(job.output_path) or not job.output_path.is_absolute():
        raise InvalidRequest(
            f"output path {str(job.output_path)!r} must be absolute and contain no ':' "
            "(qsub -o reads HOST:PATH)"
        )
    if job.cpus < 0 or job.time_limit_minutes < 1:
        raise InvalidRequest("a PBS job needs cpus >= 0 and a time limit of >= 1 minute")
