"""``/api/v1/saves``: submit (SAVE), follow (CHK), list and cancel saves."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.reports.report import parse_day
from api.service.progress import SaveStatus
from api.service.save_request import SaveRequest, SubmittedSave
from api.service.saves import SaveService, new_request_id
from api.web import idempotency
from api.web.errors import ApiError
from api.web.state import flag, json_body, principal, state
from core.errors import ImgsaveError, InvalidRequest, NotFound, PermissionDenied
from site_configs.schema import ImageFormat

bp = Blueprint("saves", __name__, url_prefix="/api/v1")

FIELDS = ("container", "target", "formats", "category", "node", "job_id", "full")
MAX_FIELD_LENGTH = 1024
MAX_JOB_IDS = 200


@bp.post("/saves")
def submit_save() -> tuple[Response, int] | Response:
    """SAVE: submit a save job (``?dry_run=1``: only check the request)."""
    caller = principal()
    body = json_body()
    checking = flag("dry_run")
    save = parse_save_body(body, caller.user, require=not checking)
    saves = state().site.saves
    if checking:
        return jsonify(dry_run(saves, save, admin=caller.admin))
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return _accepted(saves.submit(save, admin=caller.admin))
    db = state().db
    idempotency.check_key(key)
    digest = idempotency.body_hash(body)
    claimed = idempotency.claim(db, caller.user, key, digest, new_request_id(),
                                saves.submitted_as)
    existing = claimed.row
    if not claimed.mine and existing is not None:
        if existing.body_hash != digest:
            raise ApiError(422, "idempotency_key_reused",
                           f"{idempotency.HEADER} {key!r} was used with a different request")
        if not existing.job_id:
            raise ApiError(409, "idempotency_in_progress",
                           f"a request with {idempotency.HEADER} {key!r} is still being "
                           "submitted; retry in a moment", retryable=True)
        response = _accepted_body(existing.job_id, existing.request_id, existing.target,
                                  existing.node)
        response.headers["Idempotent-Replayed"] = "true"
        return response, 202
    try:
        submitted = saves.submit(save, admin=caller.admin, request_id=claimed.request_id)
    except BaseException:
        idempotency.release(db, caller.user, key)
        raise
    idempotency.complete(db, caller.user, key, submitted.job_id, submitted.request_id,
                         str(submitted.target), submitted.node)
    return _accepted(submitted)


@bp.get("/saves")
def list_saves() -> Response:
    """The caller's saves, finished ones included (``?job_ids=1,2``: just those)."""
    caller = principal()
    saves = state().site.saves
    ids = request.args.get("job_ids")
    if ids is not None:
        wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
        if len(wanted) > MAX_JOB_IDS:
            raise InvalidRequest(f"ask for at most {MAX_JOB_IDS} job ids at once")
        found = saves.status(wanted, caller.user, admin=caller.admin)
    else:
        all_users = flag("all_users")
        if all_users and not caller.admin:
            raise PermissionDenied("all_users needs an imgsave admin")
        now = datetime.now(UTC)
        since = parse_day(request.args.get("since"), now - timedelta(days=7))
        if since > now:
            raise InvalidRequest("since is in the future")
        found = saves.queue(caller.user, since=since, admin=all_users)
    return jsonify({"saves": [s.to_dict() for s in _newest_first(found)]})


@bp.get("/saves/<job_id>")
def get_save(job_id: str) -> Response:
    """CHK: one save's state, stage, progress, digest and failure reason."""
    caller = principal()
    (status,) = state().site.saves.status([job_id], caller.user, admin=caller.admin)
    return jsonify(status.to_dict())


@bp.delete("/saves/<job_id>")
def cancel_save(job_id: str) -> Response:
    """Cancel a queued or running save."""
    caller = principal()
    state().site.saves.cancel(job_id, caller.user, admin=caller.admin)
    return jsonify({"job_id": job_id, "cancelled": True})


def parse_save_body(body: dict[str, Any], user: str, *, require: bool = True) -> SaveRequest:
    """A :class:`SaveRequest` from a POST /saves body; 400 for wrong fields or types.

    ``require=False`` (a dry run) lets empty container and target through, so the
    service's own checks report them next to the other fields.
    """
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                             f"use {', '.join(FIELDS)}")
    formats = body.get("formats", ["oci"])
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise InvalidRequest("formats must be a list such as [\"oci\"] or [\"oci\", \"sif\"]")
    try:
        parsed = tuple(ImageFormat(f) for f in formats)
    except ValueError as e:
        raise InvalidRequest(f"formats {formats!r}: each must be oci or sif") from e
    return SaveRequest(
        user=user,
        container=_text(body, "container", required=require),
        target=_text(body, "target", required=require),
        formats=parsed,
        category=_text(body, "category") or "cpu",
        node=_text(body, "node"),
        job_id=_text(body, "job_id"),
        full=_full(body),
    )


def _full(body: dict[str, Any]) -> bool:
    value = body.get("full", False)
    if not isinstance(value, bool):
        raise InvalidRequest("full must be true or false")
    return value


def dry_run(saves: SaveService, save: SaveRequest, *, admin: bool) -> dict[str, object]:
    """Check ``save`` as submit would, without submitting; errors keyed by field.

    Each field is checked on its own, beside known-good values for the others, with
    the service's own ``validate`` (the portal shows these inline; no rule is copied).
    """
    config = saves.config
    good = SaveRequest(user=save.user, container="c", target="image:v1",
                       formats=tuple(config.formats[:1]), category=next(iter(config.categories),
                                                                         ""), node="n")
    trials = {
        "container": replace(good, container=save.container),
        "target": replace(good, target=save.target),
        "formats": replace(good, formats=save.formats),
        "category": replace(good, category=save.category),
        "node": replace(good, node=save.node, job_id=save.job_id),
    }
    errors: dict[str, str] = {}
    for field_name, trial in trials.items():
        try:
            saves.validate(trial)
        except (InvalidRequest, PermissionDenied) as e:
            errors[field_name] = e.message
    target = ""
    if not errors:
        target = str(saves.validate(save)[0])
        try:
            node = saves.resolve_node(save, admin=admin)
            if not saves.scheduler.node_exists(node):  # submit has the backend check it
                raise NotFound(f"node {node!r} is not a node of this cluster")
        except ImgsaveError as e:
            errors["job_id" if save.job_id else "node"] = e.message
    return {"valid": not errors, "errors": errors, "target": target}


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string")
    if required and not value:
        raise InvalidRequest(f"{name} is required")
    if len(value) > MAX_FIELD_LENGTH:
        raise InvalidRequest(f"{name} is longer than {MAX_FIELD_LENGTH} characters")
    return value


def _accepted(submitted: SubmittedSave) -> tuple[Response, int]:
    return _accepted_body(submitted.job_id, submitted.request_id, str(submitted.target),
                          submitted.node), 202


def _accepted_body(job_id: str, request_id: str, target: str, node: str) -> Response:
    status_url = url_for("saves.get_save", job_id=job_id)
    response = jsonify({"job_id": job_id, "request_id": request_id, "target": target,
                        "node": node, "status_url": status_url})
    response.headers["Location"] = status_url
    return response


def _newest_first(statuses: list[SaveStatus]) -> list[SaveStatus]:
    def key(s: SaveStatus) -> tuple[float, int]:
        when = s.submit_time.timestamp() if s.submit_time else float("inf")
        return when, int(s.job_id) if s.job_id.isdigit() else 0

    return sorted(statuses, key=key, reverse=True)
