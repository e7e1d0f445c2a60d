"""Typed progress events and the result of a save, as written to the spool.

The node appends one JSON line per :class:`ProgressEvent` to ``events.jsonl`` and
writes ``result.json`` once at the end; the service reads both. The privileged entry
never writes into a spool: it sends the same events and result as JSON lines on its
stdout (:class:`EventStream`), and the job's unprivileged half, running as the spool's
owner, writes them (:mod:`builder_jobs.job_side`).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Protocol

from builder_jobs.spec import RESULT_FILE

log = logging.getLogger(__name__)
# Spool files are their owner's only (the service reads its own; root reads all).
FILE_MODE = 0o600


class Stage(enum.Enum):
    QUEUED = "queued"
    LOCATING = "locating"
    COMMITTING = "committing"
    EXPORTING = "exporting"
    SQUASHING = "squashing"
    PUSHING = "pushing"
    CLEANING = "cleaning"
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Stage.DONE, Stage.FAILED)


class FailureKind(enum.Enum):
    CONTAINER_NOT_FOUND = "container_not_found"
    NOT_OWNER = "not_owner"
    ENGINE = "engine"
    REGISTRY = "registry"
    SIZE_LIMIT = "size_limit"
    INVALID = "invalid"
    BUSY = "busy"  # another save of the same container is running
    NO_SPACE = "no_space"  # a filesystem the save writes to is full (the node's, the spool's)
    INTERNAL = "internal"


# The save job's exit status when its owner's spool is full and it could not write its
# result there: the scheduler's record alone then says why (api/service/progress.py). 75 is
# EX_TEMPFAIL (sysexits.h); the privileged entry only ever exits 0, 1 or 2.
SPOOL_FULL_EXIT = 75


@dataclass(frozen=True)
class ProgressEvent:
    stage: Stage
    time: float = field(default_factory=time.time)
    bytes_done: int | None = None
    bytes_total: int | None = None
    message: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["stage"] = self.stage.value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> ProgressEvent:
        data = json.loads(line)
        data["stage"] = Stage(data["stage"])
        return cls(**data)


@dataclass(frozen=True)
class SaveResult:
    ok: bool
    reference: str = ""
    digest: str = ""
    size_bytes: int = 0  # compressed bytes of the new content pushed
    image_bytes: int = 0  # total size of the image (config + all layers)
    sif_path: str = ""
    sif_digest: str = ""
    commit_method: str = ""
    commit_note: str = ""  # e.g. why the streaming commit was not possible
    # env var names (never values) left out of the image config as secret-looking
    dropped_env: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failure: FailureKind | None = None
    error: str = ""
    # When the save job's half on the node started and ended (Unix time, the node's
    # clock), stamped by builder_jobs.job_side: the job's own measure of its run, which
    # reports prefer to accounting's (a slurmctld restart moves accounting's end).
    started_at: float | None = None
    ended_at: float | None = None
    # The streaming commit's chain (docs/incremental-save.md): layers imgsave has added
    # over the base image (1 for a full save, 0 when not streamed), whether this save
    # built on the earlier one, why not when it could have, and the bytes it uploaded
    # (new layer, config, manifest; 0 when the engine pushed and did not say).
    incremental: bool = False
    chain_layers: int = 0
    full_reason: str = ""
    bytes_pushed: int = 0

    @property
    def save_kind(self) -> str:
        """"incremental (n layers, x MB new)", "full" or "" (not an OCI streaming save)."""
        if not self.ok or not self.chain_layers:
            return ""
        if not self.incremental:
            return "full"
        return (f"incremental ({self.chain_layers} layers, "
                f"{self.size_bytes / 1e6:.1f} MB new)")  # fmt: skip

    @property
    def job_seconds(self) -> float | None:
        """How long the save job ran on its node, or None when not measured."""
        if self.started_at is None or self.ended_at is None:
            return None
        seconds = self.ended_at - self.started_at
        return round(seconds, 3) if seconds >= 0 else None

    def to_json(self) -> str:
        data = asdict(self)
        data["failure"] = self.failure.value if self.failure else None
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SaveResult:
        data = json.loads(text)
        data["failure"] = FailureKind(data["failure"]) if data.get("failure") else None
        known = {f.name for f in fields(cls)}
        # a newer node's result may carry more: read what this version knows
        return cls(**{k: v for k, v in data.items() if k in known})


class EventSink(Protocol):
    """Where a save reports: its progress events, then its result once."""

    def emit(self, event: ProgressEvent) -> None: ...

    def finish(self, result: SaveResult) -> None: ...


class EventStream:
    """Events and the result as JSON lines on a stream (the privileged entry's stdout):
    ``{"event": {...}}`` per event, ``{"result": {...}}`` once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def emit(self, event: ProgressEvent) -> None:
        self._line({"event": json.loads(event.to_json())})

    def finish(self, result: SaveResult) -> None:
        self._line({"result": json.loads(result.to_json())})

    def _line(self, data: dict[str, object]) -> None:
        try:
            self.stream.write(json.dumps(data, sort_keys=True) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the job's half is gone (killed): the save still cleans up


def parse_stream_line(line: str) -> ProgressEvent | SaveResult | None:
    """One line of an :class:`EventStream`; None for anything else (a log line)."""
    try:
        data = json.loads(line)
        if isinstance(data, dict) and isinstance(data.get("event"), dict):
            return ProgressEvent.from_json(json.dumps(data["event"]))
        if isinstance(data, dict) and isinstance(data.get("result"), dict):
            return SaveResult.from_json(json.dumps(data["result"]))
    except (ValueError, KeyError, TypeError):
        pass
    return None


class EventLog:
    """Appends events to ``events.jsonl``; readers see whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def finish(self, result: SaveResult) -> None:
        write_result(self.path.with_name(RESULT_FILE), result)

    def emit(self, event: ProgressEvent) -> None:
        line = event.to_json() + "\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self) -> list[ProgressEvent]:
        text = read_spool_text(self.path)
        if text is None:
            return []
        events = []
        for line in text.splitlines():
            if line.strip():
                try:
                    events.append(ProgressEvent.from_json(line))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line is skipped, not fatal
        return events


def write_result(path: Path, result: SaveResult) -> None:
    """Write ``result.json`` atomically (readers never see half a file), mode 0600."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        fh.write(result.to_json())
    os.replace(tmp, path)


def read_result(path: Path) -> SaveResult | None:
    """The result in ``path``; None if absent, unreadable or not a result (a planted
    link, a torn or foreign file): status then comes from the scheduler alone."""
    text = read_spool_text(path)
    if text is None:
        return None
    try:
        return SaveResult.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        log.info("ignoring %s: not a save result (%s)", path, e)
        return None


MAX_SPOOL_FILE_BYTES = 16 * 1024**2


def read_spool_text(path: Path) -> str | None:
    """A spool file's text, never through a symlink and never a special file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        # the owner's own business (a link they made); status then comes from the
        # scheduler alone; or another account's private spool (a CLI-mode save read by
        # the service). Not even info: a report over many saves would print a line each.
        log.debug("cannot read %s: %s", path, e.strerror)
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            log.info("ignoring %s: not a regular file", path)
            return None
        return fh.read(MAX_SPOOL_FILE_BYTES).decode("utf-8", errors="replace")
