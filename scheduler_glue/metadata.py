"""Request metadata carried inside the job (Slurm ``--comment``, PBS spool file).

Encoded as ``imgsave/1 key=value;key=value`` with values percent-encoded, so the text
never contains ``|`` (sacct's delimiter), spaces or shell metacharacters.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

PREFIX = "imgsave/1 "
_SAFE = "-_.~/:@+"


def encode_metadata(metadata: Mapping[str, str]) -> str:
    parts = []
    for key, value in sorted(metadata.items()):
        if not key.isidentifier():
            raise ValueError(f"metadata key {key!r} must be an identifier")
        parts.append(f"{key}={quote(str(value), safe=_SAFE)}")
    return PREFIX + ";".join(parts)


def decode_metadata(text: str) -> dict[str, str]:
    """Inverse of :func:`encode_metadata`; text from anything else gives ``{}``."""
    text = text.strip()
    if not text.startswith(PREFIX):
        return {}
    result: dict[str, str] = {}
    for part in text[len(PREFIX) :].split(";"):
        key, sep, value = part.partition("=")
        if sep and key.isidentifier():
            result[key] = unquote(value)
    return result
