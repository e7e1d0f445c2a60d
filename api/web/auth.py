"""Who is asking: a bearer token, a trusted proxy's ``Remote-User``, or a portal cookie.

- ``Authorization: Bearer <token>``: tokens come from ``imgsave token create USER``;
  only their SHA-256 is stored (a token is 256 random bits, so a plain hash is enough:
  there is nothing to guess that a slow hash would protect).
- ``Remote-User: <name>`` from the site's reverse proxy, believed only when the
  connection comes from an address in ``[api].trusted_proxies`` (or over the unix socket
  ``imgsave serve --unix-socket`` listens on, when that list says ``"unix"``: the socket's
  directory lets only the proxy in, which a loopback address on a shared host cannot);
  from anywhere else the request is refused and logged, as a forged identity would be.
- The portal's signed session cookie, set after either of the above; a request that
  changes something must also carry the session's ``X-CSRF-Token``.

A token, and a portal session opened with one, counts only while its user is still an
account on this machine (``pwd.getpwnam``, so LDAP through NSS too): removing a user's
account ends their API access without anyone having to revoke their tokens. The lookup
is a parameter (:data:`AccountExists`), so tests can name users this machine lacks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import pwd
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from flask import Request, session
from sqlalchemy import select, update

from api.db import ApiToken, Database, utcnow
from core.errors import ImgsaveError, InvalidRequest
from registry.refs import check_unix_name
from site_configs.schema import UNIX_SOCKET_PROXY, ApiSection

log = logging.getLogger(__name__)

TOKEN_PREFIX = "isv_"
PROXY_USER_HEADER = "Remote-User"
# Set in the WSGI environ by `imgsave serve --unix-socket` for each connection it accepts
# there; not an HTTP_* key, so no header a client sends can set it.
UNIX_SOCKET_ENVIRON = "imgsave.unix_socket"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BAD_TOKEN = "the token is unknown, expired or revoked"

AccountExists = Callable[[str], bool]


class Unauthorized(ImgsaveError):
    """No identity, or one that cannot be believed (→ 401)."""


@dataclass(frozen=True)
class Principal:
    """The authenticated user of one request."""

    user: str
    admin: bool
    via: str  # "token", "proxy" or "cookie"
    token_id: int | None = None


def unix_account_exists(user: str) -> bool:
    """Whether ``user`` is an account on this machine (``pwd``: /etc/passwd or NSS)."""
    try:
        pwd.getpwnam(user)
    except KeyError:  # also when NSS cannot answer: refusing is the safe side
        return False
    return True


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    db: Database, user: str, *, admin: bool, ttl_days: int, label: str = ""
) -> tuple[ApiToken, str]:
    """Store a new token for ``user``; return its row and the token (shown once)."""
    check_unix_name(user)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiToken(
        user=user, token_hash=hash_token(token), admin=admin, label=label[:200],
        created=now, expires=now + timedelta(days=ttl_days), revoked=None,
    )
    with db.session() as s:
        s.add(row)
    return row, token


def find_token(
    db: Database, token: str, account_exists: AccountExists = unix_account_exists
) -> ApiToken | None:
    """The usable token row for ``token`` (not expired, not revoked, its user still an
    account here), or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    with db.session() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    return row if row is not None and _usable(row, account_exists) else None


def token_usable(
    db: Database, token_id: int, account_exists: AccountExists = unix_account_exists
) -> bool:
    """Whether the token a portal session was opened with is still usable."""
    with db.session() as s:
        row = s.get(ApiToken, token_id)
    return row is not None and _usable(row, account_exists)


def _usable(row: ApiToken, account_exists: AccountExists) -> bool:
    if not row.usable():
        return False
    if not account_exists(row.user):
        log.warning("refused token %d of %r: no such account on this machine", row.id, row.user)
        return False
    return True


def revoke_tokens(db: Database, *, token_id: int | None = None, user: str | None = None) -> int:
    """Revoke one token by id, or every token of a user; return how many."""
    if token_id is None and user is None:
        raise InvalidRequest("name a token id or a user")
    query = update(ApiToken).where(ApiToken.revoked.is_(None))
    query = query.where(ApiToken.id == token_id) if token_id is not None else query
    query = query.where(ApiToken.user == user) if user is not None else query
    with db.session() as s:
        return s.execute(query.values(revoked=utcnow())).rowcount  # type: ignore[attr-defined]


def list_tokens(db: Database, user: str | None = None) -> list[ApiToken]:
    """Every token (of ``user``), newest first; hashes only, never the tokens."""
    query = select(ApiToken).order_by(ApiToken.id.desc())
    if user is not None:
        query = query.where(ApiToken.user == user)
    with db.session() as s:
        return list(s.scalars(query))


def from_trusted_proxy(request: Request, settings: ApiSection) -> bool:
    """Whether the request's connection comes from one of ``trusted_proxies``."""
    if request.environ.get(UNIX_SOCKET_ENVIRON) is True:
        return UNIX_SOCKET_PROXY in settings.trusted_proxies
    return _trusted_address(request.remote_addr, settings)


def _trusted_address(remote_addr: str | None, settings: ApiSection) -> bool:
    addresses = [p for p in settings.trusted_proxies if p != UNIX_SOCKET_PROXY]
    if not remote_addr or not addresses:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(p, strict=False) for p in addresses)


def authenticate(
    request: Request, db: Database, settings: ApiSection,
    account_exists: AccountExists = unix_account_exists,
) -> Principal:
    """The request's principal; raises :class:`Unauthorized` (401) when there is none."""
    header = request.headers.get("Authorization")
    if header is not None:
        return _bearer(header, db, settings, account_exists)
    proxy_user = request.headers.get(PROXY_USER_HEADER)
    if proxy_user is not None:
        return _proxy(proxy_user, request, settings)
    return _cookie(request, db, settings, account_exists)


def _bearer(
    header: str, db: Database, settings: ApiSection, account_exists: AccountExists
) -> Principal:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use 'Authorization: Bearer <token>'")
    row = find_token(db, token.strip(), account_exists)
    if row is None:
        raise Unauthorized(BAD_TOKEN)
    return Principal(row.user, row.admin or row.user in settings.admins, "token", row.id)


def _proxy(user: str, request: Request, settings: ApiSection) -> Principal:
    if not from_trusted_proxy(request, settings):
        log.warning("refused %s header %r from untrusted address %s",
                    PROXY_USER_HEADER, user[:64], request.remote_addr)
        raise Unauthorized(f"{PROXY_USER_HEADER} is accepted only from the site's proxy")
    try:
        check_unix_name(user)
    except InvalidRequest as e:
        raise Unauthorized(f"the proxy sent an invalid user name: {e.message}") from e
    return Principal(user, user in settings.admins, "proxy")


def _cookie(
    request: Request, db: Database, settings: ApiSection, account_exists: AccountExists
) -> Principal:
    user = session.get("user")
    if not isinstance(user, str) or not user:
        raise Unauthorized("log in, or send 'Authorization: Bearer <token>'")
    token_id = session.get("token_id")
    if session.get("via") == "proxy":
        if not from_trusted_proxy(request, settings):
            raise Unauthorized("this session was opened through the site's proxy")
    elif not isinstance(token_id, int) or not token_usable(db, token_id, account_exists):
        session.clear()
        raise Unauthorized("the token this session was opened with is expired or revoked")
    if request.method not in SAFE_METHODS:
        if not csrf_matches(request.headers.get(CSRF_HEADER), session.get("csrf")):
            raise Unauthorized(f"missing or wrong {CSRF_HEADER} header for this session")
    admin = bool(session.get("admin")) or user in settings.admins
    return Principal(user, admin, "cookie", token_id if isinstance(token_id, int) else None)


def csrf_matches(sent: object, expected: object) -> bool:
    """Whether ``sent`` is the session's CSRF token ``expected`` (both non-empty)."""
    if not isinstance(sent, str) or not isinstance(expected, str) or not sent or not expected:
        return False
    # As bytes: compare_digest refuses non-ASCII str, and a sent value may be anything.
    return hmac.compare_digest(sent.encode(), expected.encode())


def new_csrf() -> str:
    """A fresh CSRF token."""
    return secrets.token_urlsafe(32)


def open_session(principal: Principal) -> str:
    """Start a portal session for ``principal``; return its CSRF token."""
    session.clear()
    session.permanent = True
    session["user"] = principal.user
    session["admin"] = principal.admin
    session["via"] = "proxy" if principal.via == "proxy" else "token"
    if principal.token_id is not None:
        session["token_id"] = principal.token_id
    session["csrf"] = new_csrf()
    return str(session["csrf"])
