"""A cancel request (SIGTERM from ``scancel``/``qdel``) that a save can honour cleanly.

Outside an upload the signal raises :class:`~builder_jobs.failures.SaveFailed` at once
and the save cleans up. During a streamed layer upload raising would cut the request
mid-body, and a registry then refuses to delete the partial upload (distribution: its
upload state token no longer matches the bytes it received), leaving it behind until
the registry purges abandoned uploads. So while :func:`deferred` is in force the signal
only sets :data:`requested`; the upload ends its body at the next chunk, the registry
answers with the upload's current location, the upload is deleted there, and then the
save fails as cancelled (:func:`raise_if_requested`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from builder_jobs.events import FailureKind
from builder_jobs.failures import SaveFailed

requested = threading.Event()
_state = {"deferring": 0, "signal": 0}


def cancelled() -> SaveFailed:
    return SaveFailed(FailureKind.INTERNAL,
                      f"the save job was cancelled (signal {_state['signal']})")  # fmt: skip


def on_signal(signum: int, frame: object) -> None:
    """The SIGTERM handler of a save process."""
    _state["signal"] = signum
    requested.set()
    if not _state["deferring"]:
        raise cancelled()


@contextmanager
def deferred() -> Iterator[None]:
    """While inside, a cancel is noted, not raised (see the module docstring)."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1


def raise_if_requested() -> None:
    if requested.is_set():
        raise cancelled()
