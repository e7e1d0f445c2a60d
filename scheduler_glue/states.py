"""Job states common to every scheduler; each backend maps its own states onto these."""

from __future__ import annotations

import enum


class JobState(enum.Enum):
    """A batch job's state. ``final`` states never change again."""

    PENDING = ("pending", 0, False)
    RUNNING = ("running", 1, False)
    COMPLETING = ("completing", 2, False)
    COMPLETED = ("completed", 3, True)
    FAILED = ("failed", 3, True)
    CANCELLED = ("cancelled", 3, True)
    TIMEOUT = ("timeout", 3, True)
    NODE_FAIL = ("node_fail", 3, True)
    OUT_OF_MEMORY = ("out_of_memory", 3, True)
    UNKNOWN = ("unknown", -1, False)

    def __init__(self, label: str, order: int, final: bool) -> None:
        self.label = label
        self.order = order
        self.final = final

    @property
    def succeeded(self) -> bool:
        return self is JobState.COMPLETED

    def __str__(self) -> str:
        return self.label
