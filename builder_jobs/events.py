"""Typed progress events and the result of a save, as written to the spool.

The node appends one JSON line per :class:`ProgressEvent` to ``events.jsonl`` and
writes ``result.json`` once at the end; the service reads both.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
    INTERNAL = "internal"


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
    seconds: dict[str, float] = field(default_factory=dict)
    failure: FailureKind | None = None
    error: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["failure"] = self.failure.value if self.failure else None
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SaveResult:
        data = json.loads(text)
        data["failure"] = FailureKind(data["failure"]) if data.get("failure") else None
        return cls(**data)


class EventLog:
    """Appends events to ``events.jsonl``; readers see whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: ProgressEvent) -> None:
        line = event.to_json() + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self) -> list[ProgressEvent]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
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
    """Write ``result.json`` atomically (readers never see half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(result.to_json())
    os.replace(tmp, path)


def read_result(path: Path) -> SaveResult | None:
    try:
        return SaveResult.from_json(path.read_text())
    except FileNotFoundError:
        return None
