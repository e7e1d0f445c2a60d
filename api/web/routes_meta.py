"""``/healthz`` and the OpenAPI description at ``/api/v1/openapi.json`` and ``.yaml``."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify

from api.web.errors import error_response
from api.web.state import state

bp = Blueprint("meta", __name__)


@cache
def openapi_text() -> str:
    """The OpenAPI document as written (YAML), from the package."""
    return resources.files("api.web").joinpath("openapi.yaml").read_text(encoding="utf-8")


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, parsed."""
    document = yaml.safe_load(openapi_text())
    assert isinstance(document, dict)
    return document


@bp.get("/api/v1/openapi.json")
def openapi_json() -> Response:
    """The API's OpenAPI 3.0 description as JSON."""
    return jsonify(openapi_document())


@bp.get("/api/v1/openapi.yaml")
def openapi_yaml() -> Response:
    """The API's OpenAPI 3.0 description as YAML."""
    return Response(openapi_text(), mimetype="application/yaml")


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers and its database does (no scheduler call)."""
    try:
        state().db.ping()
    except Exception as e:  # noqa: BLE001 - any database failure means "unhealthy"
        return error_response(503, "database_unavailable", f"database: {e}", retryable=True)
    return jsonify({"status": "ok"})
