"""``--wait``: follow saves to their end with a progress bar (``submit`` and ``status``).

Event-driven in direct mode (issue 12). The node's progress lands in the submitting
account's spool (``events.jsonl``, then ``result.json``); the follower watches those
files and builds the status again when one changes, while the service reuses the
scheduler's RUNNING record (``status_join.LiveRecords``): no accounting query per
event. It asks the scheduler at the start, every :data:`HEARTBEAT_SECONDS` (a job
cancelled, killed or still pending writes no event), and, once the result is there
(pushed or failed), every :data:`END_POLL_SECONDS` until the job's final state, for at most
:data:`JOB_END_GRACE_SECONDS` (the job ends a moment after it writes its result).

The files are watched by ``stat`` every :data:`WATCH_SECONDS`, not with inotify: on a real
cluster the spool is on shared storage, where inotify does not see another host's
writes; a ``stat`` of two small files is ~10 µs.

With ``--api`` (or a save in another account's spool) there are no files to watch: the
status is asked every :data:`POLL_SECONDS`; the API answers a live save from its
events file too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from api.service.progress import SaveStatus
from api.tables import human_bytes
from scheduler_glue.states import JobState

WATCH_SECONDS = 0.05
HEARTBEAT_SECONDS = 3.0
POLL_SECONDS = 0.25
END_POLL_SECONDS = 0.1
JOB_END_GRACE_SECONDS = 15.0  # how long a pushed save's job may take to end

StatusCall = Callable[[], list[SaveStatus]]
Signature = tuple[tuple[int, int] | None, ...]


class FileWatch:
    """Tells when any of ``files`` was created, grew or was replaced."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self._seen = self._signature()

    def _signature(self) -> Signature:
        signature: list[tuple[int, int] | None] = []
        for path in self.files:
            try:
                st = os.stat(path)
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_mtime_ns, st.st_size))
        return tuple(signature)

    def changed(self) -> bool:
        now = self._signature()
        if now == self._seen:
            return False
        self._seen = now
        return True

    def wait(self, until: float) -> bool:
        """Block until a file changes (True) or ``until`` (monotonic) passes (False)."""
        while time.monotonic() < until:
            if self.changed():
                return True
            time.sleep(WATCH_SECONDS)
        return self.changed()


def follow(status: StatusCall, statuses: list[SaveStatus], files: Sequence[Path],
           timeout: float, *, as_json: bool) -> list[SaveStatus]:
    """Follow until every save's job ended (or ``timeout``); return the last statuses.
    ``status`` asks the service; ``files`` are the saves' spool files ([] for none)."""
    deadline = time.monotonic() + timeout
    interactive = sys.stderr.isatty() and not as_json
    watch = FileWatch(files) if files else None
    shown = ""
    grace: float | None = None
    while True:
        line = "  ".join(bar(s) for s in statuses)
        if line != shown:
            click.echo(("\r" + line) if interactive else line, err=True, nl=not interactive)
            shown = line
        now = time.monotonic()
        if now > deadline or all(s.state.final for s in statuses):
            break
        if all(s.finished or s.result is not None for s in statuses):
            # Pushed (the image is usable) or failed: the job ends a moment after its
            # result; wait for that so that the table shows its final state.
            grace = grace if grace is not None else now + JOB_END_GRACE_SECONDS
            if now > grace:
                break
            time.sleep(END_POLL_SECONDS)
        elif watch is not None:
            watch.wait(min(deadline, now + HEARTBEAT_SECONDS))
        else:
            time.sleep(POLL_SECONDS)
        statuses = status()
    if interactive:
        click.echo("", err=True)
    return statuses


def bar(s: SaveStatus, width: int = 24) -> str:
    """``42 [######..........] 25% committing 75.0 MB/300.0 MB``"""
    filled = width * s.percent // 100
    detail = ""
    if s.bytes_total:
        detail = f" {human_bytes(s.bytes_done)}/{human_bytes(s.bytes_total)}"
    drawn = "#" * filled + "." * (width - filled)
    if s.state is JobState.UNKNOWN and s.reason:
        detail += f" ({s.reason})"  # e.g. accounting down: say so while waiting
    return f"{s.job_id} [{drawn}] {s.percent:3d}% {s.stage.value}{detail}"
