"""How a save fails: one exception carrying the :class:`FailureKind` the result reports."""

from __future__ import annotations

from builder_jobs.events import FailureKind
from core.errors import CommandFailed, ImgsaveError


class SaveFailed(ImgsaveError):
    """A save stopped; ``kind`` says why in a way the service can act on."""

    def __init__(self, kind: FailureKind, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.kind = kind


def engine_failure(error: CommandFailed) -> SaveFailed:
    """A container engine command failed or timed out."""
    return SaveFailed(FailureKind.ENGINE, f"container engine: {error.message}")


def registry_failure(error: ImgsaveError, reference: str) -> SaveFailed:
    """Talking to the registry about ``reference`` failed (down, refused, denied)."""
    return SaveFailed(
        FailureKind.REGISTRY,
        f"registry: {reference}: {error.message}",
        retryable=error.retryable or isinstance(error, CommandFailed),
    )
