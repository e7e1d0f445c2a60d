"""``Idempotency-Key``: a retried POST /saves returns the save it already made.

The key is claimed (a row with no job yet) *before* submitting, inside the database's
unique constraint on (user, key), so two concurrent requests with one key can never
both submit: the second sees the claim and gets 409 (retry shortly) or, once the first
has finished, the same job. A different body under a used key is a client bug → 422.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
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


def claim(db: Database, user: str, key: str, digest: str) -> IdempotencyKey | None:
    """Claim ``key`` for a new submission: None if claimed now, else the existing row."""
    for _ in range(2):
        try:
            with db.session() as s:
                s.add(IdempotencyKey(user=user, key=key, body_hash=digest, created=utcnow()))
            return None
        except IntegrityError:
            existing = _find(db, user, key)
            if existing is None:
                continue  # released between our insert and our read: try again
            if existing.job_id or utcnow() - existing.created < STALE_CLAIM:
                return existing
            release(db, user, key)
    existing = _find(db, user, key)
    return existing


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
