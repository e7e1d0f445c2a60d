"""``/api/v1/warmups``: put the caller's saved images on nodes, and follow the warm-up.

``POST`` takes ``{"images": [...], "nodes": "n[1-4]"}``, ``{"images": [...], "job_id": "J"}``
or ``{"plan": {"n1": [...], "n2": [...]}}``; the answer is the warm-up with one row per
node (202). ``GET /warmups/<id>`` is its progress: each node's job state and, per image,
pulled / already present / failed (and why), bytes and seconds (docs/warmup.md).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api.service.warmup_plan import MAX_NODES, expand_nodes, same_images
from api.service.warmups import WarmupService
from api.web.state import json_body, principal, state
from core.errors import InvalidRequest

bp = Blueprint("warmups", __name__, url_prefix="/api/v1")

FIELDS = ("images", "nodes", "job_id", "plan")


def _service() -> WarmupService:
    site = state().site
    # the API runs as the portal's service account and submits for the caller
    return WarmupService(site.config, site.scheduler, account=site.config.service_account)


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{what} must be a list of strings")
    return list(value)


def parse_warmup_body(body: dict[str, Any], service: WarmupService, user: str,
                      admin: bool) -> dict[str, list[str]]:
    """The plan (node -> images) a request body asks for; InvalidRequest if malformed."""
    extra = sorted(set(body) - set(FIELDS))
    if extra:
        raise InvalidRequest(f"unknown fields: {', '.join(extra)}")
    given = [k for k in ("nodes", "job_id", "plan") if body.get(k)]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of nodes, job_id or plan")
    if "plan" in given:
        plan = body["plan"]
        if body.get("images") or not isinstance(plan, dict) or len(plan) > MAX_NODES:
            raise InvalidRequest("plan must be an object of node -> [images], without images")
        result: dict[str, list[str]] = {}
        for nodes, images in plan.items():  # a key may be a hostlist: "n[1-2]"
            for node in expand_nodes(nodes):
                have = result.setdefault(node, [])
                have.extend(i for i in _strings(images, f"plan[{nodes!r}]") if i not in have)
        return result
    images = _strings(body.get("images"), "images")
    if "nodes" in given:
        if not isinstance(body["nodes"], str):
            raise InvalidRequest("nodes must be a hostlist string such as \"n[1-4]\"")
        return same_images(expand_nodes(body["nodes"]), images)
    job_id = body["job_id"]
    if not isinstance(job_id, str):
        raise InvalidRequest("job_id must be a string")
    return same_images(service.nodes_of_job(job_id, user, admin=admin), images)


@bp.post("/warmups")
def submit_warmup() -> tuple[Response, int]:
    """Submit a warm-up: one job per node."""
    caller = principal()
    service = _service()
    plan = parse_warmup_body(json_body(), service, caller.user, caller.admin)
    return jsonify(service.submit(caller.user, plan).to_dict()), 202


@bp.get("/warmups/<warmup_id>")
def warmup_status(warmup_id: str) -> Response:
    """A warm-up's progress, per node and image."""
    caller = principal()
    return jsonify(_service().status(warmup_id, caller.user, admin=caller.admin).to_dict())
