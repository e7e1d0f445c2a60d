"""A warm-up on one node: its spec in the spool, and the typed per-image results.

A warm-up puts saved images on nodes before a job needs them (docs/warmup.md). The
service writes one :class:`WarmupSpec` per node into the submitting account's spool,
``{spool}/{request_id}/warmup.json``; the node's privileged entry pulls each image and
reports one :class:`ImageResult` per image, then a :class:`WarmupResult`. The spec holds
no secrets and is never trusted by the entry: what to pull comes from the scheduler's
record of the job (its metadata), checked again there.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.errors import InvalidRequest

WARMUP_SPEC_FILE = "warmup.json"
IMAGES_FILE = "images.jsonl"  # one ImageResult per line, as each image finishes
WARMUP_RESULT_FILE = "warmup-result.json"
# the metadata key that marks a batch job as a warm-up (the node entry dispatches on it)
KIND_KEY = "kind"
KIND_WARMUP = "warmup"
# images in the job's metadata: one string, separated by this (never in a reference)
IMAGE_SEPARATOR = " "
# a node warms at most this many images per job (the job's metadata must stay small)
MAX_IMAGES_PER_NODE = 32


class ImageOutcome(enum.Enum):
    PULLED = "pulled"
    PRESENT = "already present"
    FAILED = "failed"


@dataclass(frozen=True)
class ImageResult:
    """What became of one image on one node."""

    image: str  # the reference as the user gave it, resolved to the site registry
    outcome: ImageOutcome
    digest: str = ""
    bytes: int = 0  # the image's size in the registry (config + layers, compressed)
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["outcome"] = ImageOutcome(values["outcome"])
        return cls(**values)


@dataclass(frozen=True)
class WarmupResult:
    """The node's whole answer: ok when no image failed."""

    ok: bool
    node: str = ""
    images: list[ImageResult] = field(default_factory=list)
    error: str = ""  # the warm-up as a whole was refused or could not start
    started_at: float | None = None
    ended_at: float | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["images"] = [i.to_dict() for i in self.images]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WarmupResult:
        data = json.loads(text)
        data["images"] = [ImageResult.from_dict(i) for i in data.get("images", [])]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class WarmupSpec:
    request_id: str
    warmup_id: str  # the warm-up this node's job belongs to (one id for all its nodes)
    user: str
    node: str
    images: tuple[str, ...]
    site_config: str
    created: str

    def to_json(self) -> str:
        data = asdict(self)
        data["images"] = list(self.images)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WarmupSpec:
        try:
            data = json.loads(text)
            data["images"] = tuple(data["images"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidRequest(f"malformed warm-up spec: {e}") from e


def stream_line(kind: str, payload: dict[str, Any]) -> str:
    """One line of the entry's stdout: ``{"warmup_image": {...}}`` or ``{"warmup_result": ...}``."""
    return json.dumps({kind: payload}, sort_keys=True)


def parse_warmup_line(line: str) -> ImageResult | WarmupResult | None:
    """One line the entry printed; None for anything else (a log line)."""
    try:
        data = json.loads(line)
        if isinstance(data, dict) and isinstance(data.get("warmup_image"), dict):
            return ImageResult.from_dict(data["warmup_image"])
        if isinstance(data, dict) and isinstance(data.get("warmup_result"), dict):
            return WarmupResult.from_json(json.dumps(data["warmup_result"]))
    except (ValueError, KeyError, TypeError):
        pass
    return None
