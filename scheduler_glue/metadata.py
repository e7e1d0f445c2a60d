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


def requester_of(owner: str, metadata: Mapping[str, str], service_account: str) -> str:
    """Who a job works for, "" if nobody may be believed.

    The scheduler's record of the job's owner decides, never the metadata alone: a job
    of the portal's ``service_account`` works for the user in the metadata the service
    itself wrote; any other job works for its owner, and metadata naming someone else
    is forged (anyone can submit a job with any ``--comment``), so the job counts for
    nobody.
    """
    claimed = metadata.get("user", "")
    if not owner:
        return ""
    if owner == service_account:
        return claimed
    if claimed and claimed != owner:
        return ""
    return owner
