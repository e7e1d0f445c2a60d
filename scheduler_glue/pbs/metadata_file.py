"""The request metadata of a PBS job, in a file beside its job script.

PBS has no free-text job field that survives into history and the accounting log, and
``qsub -v`` cannot carry arbitrary text, so ``submit`` writes the metadata
(``imgsave/1 key=value;...``, :mod:`scheduler_glue.metadata`) to ``<script dir>/metadata``
before ``qsub``, and status reads it back from the script path PBS keeps.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from scheduler_glue.metadata import decode_metadata, encode_metadata

METADATA_FILE = "metadata"


def write_metadata_file(script: Path, metadata: Mapping[str, str]) -> Path:
    """Write ``<script dir>/metadata`` atomically; return its path."""
    path = script.parent / METADATA_FILE
    tmp = path.with_name(f".{METADATA_FILE}.{os.getpid()}.tmp")
    tmp.write_text(encode_metadata(metadata) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


MAX_METADATA_BYTES = 64 * 1024


def read_metadata_file(script: Path | None) -> dict[str, str]:
    """Metadata stored beside ``script``; ``{}`` when there is none or it is unreadable.

    The file is in the job owner's spool and may be read by root (the node's privileged
    entry asks whose job it is): never through a symlink, only a regular file, bounded.
    Whose the job is comes from ``Job_Owner``, never from this file."""
    if script is None:
        return {}
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(script.parent / METADATA_FILE, flags)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return {}
            return decode_metadata(fh.read(MAX_METADATA_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}
