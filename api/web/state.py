"""What every route needs: the app's shared state, the caller, the JSON body.

Routes import from here, never from :mod:`api.web.app`, so blueprints stay small and the
factory stays the only place that wires things together.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app, g, request

from api.db import Database
from api.service.sessions import SessionLocator
from api.web.auth import AccountExists, Principal, authenticate, unix_account_exists
from api.web.errors import ApiError
from core.errors import InvalidRequest
from site_configs.schema import SiteConfig

if TYPE_CHECKING:
    from api.service.site import Site

EXTENSION = "imgsave"


@dataclass
class ApiState:
    """The site, the database, the session locator and the account lookup of one app."""

    config: SiteConfig
    db: Database
    locator: SessionLocator
    site_factory: Callable[[SiteConfig], Site]
    account_exists: AccountExists = unix_account_exists
    _site: Site | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def site(self) -> Site:
        """The site's services, built once (on the first request that needs them)."""
        with self._lock:
            if self._site is None:
                self._site = self.site_factory(self.config)
            return self._site


def state() -> ApiState:
    """The state of the app serving this request."""
    value = current_app.extensions[EXTENSION]
    assert isinstance(value, ApiState)
    return value


def principal() -> Principal:
    """The authenticated caller (authenticating on first use in a request)."""
    found = g.get("principal")
    if found is None:
        st = state()
        found = authenticate(request, st.db, st.config.api, st.account_exists)
        g.principal = found
    assert isinstance(found, Principal)
    return found


def json_body() -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 400 when malformed."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       "send a JSON object with 'Content-Type: application/json'")
    raw = request.get_data(cache=True)  # over max_body_bytes: 413 from werkzeug
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return body


def flag(name: str) -> bool:
    """A boolean query parameter: 1/true/yes, 0/false/no or absent."""
    value = request.args.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"query parameter {name}={value!r} must be true or false")
