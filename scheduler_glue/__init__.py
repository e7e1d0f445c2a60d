"""Generic batch jobs: submit pinned to a node, cancel, status from accounting.

Knows nothing about images. A backend is one folder (``slurm/``, ``pbs/``: its argv
builders, parsers and a :class:`~scheduler_glue.base.Scheduler` subclass of hooks) and one
entry in :data:`BACKENDS`; :func:`make_scheduler` picks the one named in the site config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.runner import Runner, run_command
from scheduler_glue.base import Scheduler
from scheduler_glue.pbs.backend import PbsScheduler
from scheduler_glue.slurm.backend import SlurmScheduler

if TYPE_CHECKING:
    from site_configs.schema import SchedulerSection

# scheduler.kind in the site config -> its backend
BACKENDS: Mapping[str, type[Scheduler]] = {
    SlurmScheduler.name: SlurmScheduler,
    PbsScheduler.name: PbsScheduler,
}
SCHEDULER_NAMES = tuple(sorted(BACKENDS))


def make_scheduler(section: SchedulerSection, runner: Runner = run_command) -> Scheduler:
    """The scheduler backend named by ``section.kind`` (one of :data:`SCHEDULER_NAMES`)."""
    backend = BACKENDS.get(section.kind)
    if backend is None:
        raise ConfigError(
            f"unknown scheduler kind {section.kind!r} in the site config; valid: "
            f"{', '.join(SCHEDULER_NAMES)}"
        )
    return backend.from_section(section, runner)
