"""Generic batch jobs: submit pinned to a node, cancel, status from accounting.

Knows nothing about images. :func:`make_scheduler` picks the backend named in the site
config; backends are imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from scheduler_glue.base import Scheduler
from site_configs.errors import ConfigError
from site_configs.runner import Runner, run_command

if TYPE_CHECKING:
    from site_configs.schema import SchedulerSection


def _slurm(section: SchedulerSection, runner: Runner) -> Scheduler:
    from scheduler_glue.slurm import SlurmScheduler

    return SlurmScheduler(
        runner=runner,
        timeout=section.command_timeout_seconds,
        extra_submit_args=section.extra_submit_args,
    )


def _pbs(section: SchedulerSection, runner: Runner) -> Scheduler:
    from scheduler_glue.pbs import PbsScheduler

    return PbsScheduler(
        runner=runner,
        timeout=section.command_timeout_seconds,
        server_history=section.pbs_job_history,
        accounting_log_dir=section.pbs_accounting_log_dir or None,
        server_timezone=section.pbs_server_timezone,
    )


_BACKENDS: Mapping[str, Callable[[SchedulerSection, Runner], Scheduler]] = {
    "slurm": _slurm,
    "pbs": _pbs,
}
SCHEDULER_NAMES = tuple(sorted(_BACKENDS))


def make_scheduler(section: SchedulerSection, runner: Runner = run_command) -> Scheduler:
    """The scheduler backend named by ``section.kind`` (``slurm`` or ``pbs``)."""
    kind = str(section.kind)
    factory = _BACKENDS.get(kind)
    if factory is None:
        raise ConfigError(
            f"unknown scheduler kind {kind!r} in the site config; valid: "
            f"{', '.join(SCHEDULER_NAMES)}"
        )
    return factory(section, runner)
