"""The save spec: everything the node-side runner needs, written to the spool as JSON.

The service layer writes ``{spool}/{request_id}/spec.json``; the job script runs
``python -m builder_jobs.node_save SPEC``. The spec holds no secrets: registry
credentials are read on the node from the file the site config names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import InvalidRequest
from site_configs.schema import ImageFormat

SPEC_FILE = "spec.json"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
SCRIPT_FILE = "job.sh"
OUTPUT_FILE = "job.out"


@dataclass(frozen=True)
class SaveSpec:
    request_id: str
    user: str
    container: str
    target: str  # full reference: registry-host/namespace/name:tag
    formats: tuple[ImageFormat, ...]
    category: str
    node: str
    site_config: str  # path of the site config file the node loads
    created: str  # ISO 8601, UTC
    full: bool = False  # a full save even where an incremental one is possible (--full)

    def to_json(self) -> str:
        data = asdict(self)
        data["formats"] = [f.value for f in self.formats]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SaveSpec:
        try:
            data = json.loads(text)
            data["formats"] = tuple(ImageFormat(f) for f in data["formats"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidRequest(f"malformed save spec: {e}") from e


def spool_dir_for(spool_root: str | Path, request_id: str) -> Path:
    """The per-request spool directory; the id is ours (hex), never user text."""
    if not request_id.isalnum():
        raise InvalidRequest(f"bad request id {request_id!r}")
    return Path(spool_root) / request_id
