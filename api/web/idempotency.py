"""``Idempotency-Key``: a retried POST /saves returns the save it already made.

The key is claimed (a row with no job yet) *before* submitting, inside the database's
unique constraint on (user, key), so two concurrent requests with one key can never
both submit, even on two servers sharing the database: the second sees the claim and
gets 409 (retry shortly) or, once the first has finished, the same job. A different body
under a used key is a client bug → 422.

A claim names its claimant (host, pid, process start time) and the request id its save
will have. A server killed mid-request leaves its claim behind; the next request with
the key finds the claimant gone (on this host at once, from another host after
:data:`STALE_CLAIM`) and takes the claim over: if the save was already submitted (the
spool's index names it) that save is the answer, else it is submitted now. Nothing is
lost and nothing is made twice, except for a kill in the instant between the scheduler
accepting the job and the index being written (docs/faults.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from api.db import Database, IdempotencyKey, utcnow
from core.errors import InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# A claim this old without a job: the process that made it died mid-submit.
STALE_CLAIM = timedelta(minutes=10)


def check_key(key: str) -> str:
    """Return ``key`` if it is 1-255 printable ASCII characters, else raise."""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(32 < ord(c) < 127 for c in key):
        raise InvalidRequest(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters without spaces"
        )
    return key


def body_hash(body: dict[str, Any]) -> str:
    """A hash of the request body that ignores key order and whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# what a save submitted under a claim became: job id, request id, target, node
Submitted = tuple[str, str, str, str]


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` found: ``mine`` (submit as ``request_id``), or an earlier row:
    a finished save (``row.job_id``) or a claim still being submitted elsewhere."""

    mine: bool
    request_id: str
    row: IdempotencyKey | None = None


@cache
def this_claimant() -> str:
    """This server process: host, pid and the pid's start time (a reused pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def claimant_alive(claimant: str) -> bool | None:
    """Whether the process named by ``claimant`` still runs; None if it is on another
    host (this one cannot tell)."""
    host, _, rest = claimant.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return _start_ticks(int(pid)) == ticks


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
    except (OSError, IndexError):
        return ""


def claim(db: Database, user: str, key: str, digest: str, request_id: str,
          submitted_as: Callable[[str], Submitted | None] = lambda _: None) -> Claim:
    """Claim ``key`` to submit save ``request_id``. An abandoned claim (its server died)
    is taken over: ``submitted_as(request_id)`` says whether its save was submitted
    (job id, target, node), and then that save is the answer."""
    for _ in range(3):
        try:
            with db.session() as s:
                s.add(IdempotencyKey(user=user, key=key, body_hash=digest, created=utcnow(),
                                     request_id=request_id, claimant=this_claimant()))
            return Claim(True, request_id)
        except IntegrityError:
            existing = _find(db, user, key)
            if existing is None:
                continue  # released between our insert and our read: try again
            if existing.job_id or existing.body_hash != digest or not _abandoned(existing):
                return Claim(False, existing.request_id, existing)
            earlier = submitted_as(existing.request_id) if existing.request_id else None
            if earlier is not None:
                complete(db, user, key, *earlier)
                return Claim(False, existing.request_id, _find(db, user, key))
            release(db, user, key)
    existing = _find(db, user, key)
    return Claim(False, existing.request_id if existing else "", existing)


def _abandoned(row: IdempotencyKey) -> bool:
    alive = claimant_alive(row.claimant) if row.claimant else None
    if alive is not None:
        return not alive
    return utcnow() - row.created >= STALE_CLAIM


def complete(db: Database, user: str, key: str, job_id: str, request_id: str,
             target: str, node: str) -> None:
    """Record the job the claimed key produced."""
    with db.session() as s:
        row = s.scalars(_query(user, key)).one()
        row.job_id, row.request_id, row.target, row.node = job_id, request_id, target, node


def release(db: Database, user: str, key: str) -> None:
    """Drop a claim whose submission failed, so a retry may submit."""
    with db.session() as s:
        s.execute(delete(IdempotencyKey).where(
            IdempotencyKey.user == user, IdempotencyKey.key == key, IdempotencyKey.job_id == ""
        ))


def _find(db: Database, user: str, key: str) -> IdempotencyKey | None:
    with db.session() as s:
        return s.scalars(_query(user, key)).first()


def _query(user: str, key: str) -> Any:
    return select(IdempotencyKey).where(IdempotencyKey.user == user, IdempotencyKey.key == key)
