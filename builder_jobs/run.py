"""One save on this node: :class:`SaveRun`, what every stage of a save is handed.

Its own module so that the stages (:mod:`builder_jobs.node_save`, :mod:`builder_jobs.sif`,
:mod:`builder_jobs.streaming.save`) all import it from here and none from another stage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from builder_jobs.engine_choice import engine_for, engines_on
from builder_jobs.engines import ContainerEngine, ContainerInfo, temporary_image
from builder_jobs.events import EventSink, ProgressEvent, Stage
from builder_jobs.failures import engine_failure
from builder_jobs.script import JOB_ID_VARIABLE, NODE_VARIABLE
from builder_jobs.spec import SaveSpec
from core.errors import CommandFailed
from core.runner import Runner, run_command
from registry.refs import ImageRef
from site_configs.schema import SiteConfig


@dataclass
class SaveRun:
    """One save on this node: its inputs, its event log and its stage clock."""

    spec: SaveSpec
    site: SiteConfig
    events: EventSink
    runner: Runner = run_command
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    seconds: dict[str, float] = field(default_factory=dict)
    job_id_known: str = ""  # the job id, when the caller learnt it from the scheduler
    # called with the container once found and its owner checked, before anything is
    # paused or made (the privileged entry takes the node's lock on it here)
    located: Callable[[ContainerInfo], None] | None = None

    def __post_init__(self) -> None:
        # the engines this node's sessions may run under; LOCATING sets ``engine`` to the
        # one that holds the container
        self.engines: list[ContainerEngine] = engines_on(self.site.engine, self.node)
        self.engine: ContainerEngine = (self.engines[0] if self.engines
                                        else engine_for(self.site.engine))
        self.temp_image = temporary_image(self.spec.request_id)
        self.local_images: list[str] = []
        self.target_ref = ImageRef("", "")  # set once LOCATING has checked the spec's target

    @property
    def node(self) -> str:
        """The node name as the scheduler knows it (``$IMGSAVE_NODE``) or the spec's."""
        return self.env.get(NODE_VARIABLE) or self.spec.node

    @property
    def job_id(self) -> str:
        return self.job_id_known or self.env.get(JOB_ID_VARIABLE) or ""

    def emit(
        self,
        stage: Stage,
        message: str = "",
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        event = ProgressEvent(
            stage, message=message, bytes_done=bytes_done, bytes_total=bytes_total
        )
        self.events.emit(event)

    @contextmanager
    def stage(self, stage: Stage, message: str = "") -> Iterator[None]:
        """Emit ``stage`` and add the time spent in it to :attr:`seconds`."""
        self.emit(stage, message)
        start = time.monotonic()
        try:
            yield
        finally:
            key = stage.value
            self.seconds[key] = round(self.seconds.get(key, 0.0) + time.monotonic() - start, 3)

    def run(self, argv: Sequence[str], timeout: float) -> str:
        """Run an engine command; its failure is an ENGINE failure unless caught."""
        try:
            return self.runner(argv, timeout=timeout).stdout
        except CommandFailed as e:
            raise engine_failure(e) from e
