"""The Flask application: the REST API under ``/api/v1`` and the web portal at ``/``.

``create_app(test_config)`` follows the Flask tutorial's factory. Every error leaves
as ``{"error": {"code", "message", "retryable"}}`` with its HTTP status; a failure
nobody anticipated is logged with its traceback and still answers in that shape.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from api.db import Database, database_url, instance_dir
from api.service.sessions import make_locator
from api.web import (
    routes_images,
    routes_meta,
    routes_portal,
    routes_reports,
    routes_saves,
    routes_sessions,
    routes_warmups,
)
from api.web.auth import unix_account_exists
from api.web.errors import error_response, status_of
from api.web.state import EXTENSION, ApiState
from core.errors import ImgsaveError
from site_configs.schema import SiteConfig, get_site_config

if TYPE_CHECKING:
    from api.service.site import Site

log = logging.getLogger(__name__)

SECRET_FILE = "secret_key"
SECRET_ENV = "IMGSAVE_SECRET_KEY"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app.

    ``test_config`` may set ``SITE_CONFIG`` (a :class:`SiteConfig` or a path),
    ``SITE_FACTORY`` (config → site services), ``LOCATOR``, ``ACCOUNT_EXISTS`` (user
    name → whether the account exists; default ``pwd``), ``DATABASE_URL``,
    ``INSTANCE_DIR`` and any Flask setting such as ``SECRET_KEY``.
    """
    overrides = dict(test_config or {})
    instance = Path(overrides.pop("INSTANCE_DIR", None) or instance_dir())
    # The portal blueprint serves api/web/static; the app needs no static route of its own.
    app = Flask(__name__, instance_path=str(instance.resolve()), static_folder=None)
    config = _site_config(overrides.pop("SITE_CONFIG", None))
    factory: Callable[[SiteConfig], Site] = overrides.pop("SITE_FACTORY", None) or _real_site
    locator = overrides.pop("LOCATOR", None) or make_locator(config)
    account_exists = overrides.pop("ACCOUNT_EXISTS", None) or unix_account_exists
    db = Database(overrides.pop("DATABASE_URL", None) or database_url(config, instance))
    app.config.update(
        MAX_CONTENT_LENGTH=config.api.max_body_bytes,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="imgsave_session",
        SESSION_COOKIE_SECURE=config.api.secure_cookies,
    )
    app.config.from_prefixed_env()  # FLASK_... settings from the environment
    app.config.update(overrides)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = os.environ.get(SECRET_ENV) or _secret_key(instance)
    app.extensions[EXTENSION] = ApiState(config, db, locator, factory, account_exists)
    for module in (routes_saves, routes_images, routes_sessions, routes_reports,
                   routes_meta, routes_portal, routes_warmups):
        app.register_blueprint(module.bp)
    _register_errors(app)
    app.after_request(_security_headers)
    return app


def _site_config(value: SiteConfig | str | None) -> SiteConfig:
    if isinstance(value, SiteConfig):
        return value
    return get_site_config(value)


def _real_site(config: SiteConfig) -> Site:
    from api.service.site import Site  # the scheduler and registry are built on first use

    site = Site(config)
    # a server answers many users' polls: one scheduler query per interval for them all
    site.scheduler.share_status(config.api.status_interval_seconds)
    return site


def _secret_key(instance: Path) -> str:
    """The cookie-signing key, made once and kept (mode 0600) so restarts keep sessions."""
    path = instance / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    instance.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_urlsafe(48)
    # written whole under a private name, then linked in: a second server starting at
    # the same moment reads either nothing (and links its own) or the whole key
    fd, temporary = tempfile.mkstemp(dir=instance, prefix=".secret-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        os.link(temporary, path)
    except FileExistsError:
        return path.read_text().strip()  # another server made it first
    finally:
        os.unlink(temporary)
    return key


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ImgsaveError)
    def _imgsave_error(error: ImgsaveError) -> Response:
        status, code = status_of(error)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, error.message)
        response = error_response(status, code, error.message, error.retryable)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="imgsave"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/api/") and request.path != "/healthz":
            return error  # the portal's pages keep werkzeug's HTML errors
        code = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, code, error.description or code)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal", f"internal error ({type(error).__name__}); "
                              "the server log has the details")


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    )
    # Every response: pages carry the session's CSRF token, the API users' data; neither
    # belongs in a shared proxy or the browser's history cache (static files are small).
    response.headers["Cache-Control"] = "no-store"
    return response
