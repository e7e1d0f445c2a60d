"""Registry auth challenges and bearer tokens (the distribution token protocol).

A registry that wants a token answers 401 with
``WWW-Authenticate: Bearer realm="https://auth/token",service="registry",scope="..."``;
the client asks the realm for a token (with basic credentials if it has any) and
retries. See distribution's ``docs/spec/auth/token.md``. Tokens are cached per scope
until shortly before they expire.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

# key=value or key="value, with commas" (scope values hold commas: "pull,push")
_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
DEFAULT_TOKEN_SECONDS = 60  # the token spec's default when expires_in is absent
EXPIRY_MARGIN_SECONDS = 10


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` header: scheme ("bearer"/"basic") and params."""

    scheme: str
    realm: str = ""
    service: str = ""
    scope: str = ""
    error: str = ""


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``WWW-Authenticate``; None when the header is empty or has no scheme."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        key = match.group(1).lower()
        value = match.group(2) if match.group(2) is not None else match.group(3)
        value = re.sub(r"\\(.)", r"\1", value)
        # distribution sends one scope param holding space-separated scopes; a repeated
        # param is joined the same way.
        params[key] = f"{params[key]} {value}" if key == "scope" and key in params else value
    return Challenge(
        scheme=scheme.lower(),
        realm=params.get("realm", ""),
        service=params.get("service", ""),
        scope=params.get("scope", ""),
        error=params.get("error", ""),
    )


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:alice/x:pull,push``: the token scope for actions on a repository."""
    return f"repository:{repository}:{','.join(actions)}"


CATALOG_SCOPE = "registry:catalog:*"


class TokenCache:
    """Bearer tokens by scope, each dropped a little before it expires. Thread-safe."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, scope: str) -> str | None:
        """The cached token for ``scope`` if it is still valid."""
        with self._lock:
            entry = self._tokens.get(scope)
            if entry is None:
                return None
            token, expires_at = entry
            if time.monotonic() >= expires_at:
                del self._tokens[scope]
                return None
            return token

    def put(self, scopes: list[str], token: str, expires_in: float | None) -> None:
        """Remember ``token`` for every scope in ``scopes`` for ``expires_in`` seconds."""
        lifetime = float(expires_in) if expires_in else DEFAULT_TOKEN_SECONDS
        expires_at = time.monotonic() + max(lifetime - EXPIRY_MARGIN_SECONDS, 1.0)
        with self._lock:
            for scope in scopes:
                self._tokens[scope] = (token, expires_at)
