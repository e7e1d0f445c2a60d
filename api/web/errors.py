"""The API's errors: the one error body, the HTTP-level :class:`ApiError`, and the HTTP
status and code of every imgsave error (:func:`status_of`).

Here, below both the app and the views, so that the app's error handlers and the portal's
usage page map an error the same way without importing each other.
"""

from __future__ import annotations

from flask import Response, jsonify

from api.web.auth import Unauthorized
from core.errors import (
    CommandFailed,
    ConfigError,
    ImgsaveError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RegistryError,
    SchedulerError,
)


class ApiError(ImgsaveError):
    """An HTTP-level error with its own status and code (413, 415, 422, 409, ...)."""

    def __init__(self, status: int, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.code = code


_STATUS: list[tuple[type[ImgsaveError], int, str]] = [
    (InvalidRequest, 400, "invalid_request"),
    (Unauthorized, 401, "unauthorized"),
    (PermissionDenied, 403, "permission_denied"),
    (NotFound, 404, "not_found"),
    (CommandFailed, 502, "command_failed"),
    (ConfigError, 500, "config_error"),
]


def status_of(error: ImgsaveError) -> tuple[int, str]:
    """HTTP status and error code for an imgsave error."""
    if isinstance(error, ApiError):
        return error.status, error.code
    if isinstance(error, SchedulerError | RegistryError):
        what = "scheduler" if isinstance(error, SchedulerError) else "registry"
        return (503, f"{what}_unavailable") if error.retryable else (502, f"{what}_error")
    for kind, status, code in _STATUS:
        if isinstance(error, kind):
            return status, code
    return 500, "internal"


def error_response(status: int, code: str, message: str, retryable: bool = False) -> Response:
    """The one error body every endpoint returns."""
    response = jsonify({"error": {"code": code, "message": message, "retryable": retryable}})
    response.status_code = status
    return response
