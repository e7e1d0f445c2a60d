"""``/api/v1/reports/usage``: image-build usage from accounting (an admin's of everyone,
anyone else's of their own saves), as the JSON document or the PNG chart of ``imgsave
report``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.reports.report import build_report
from api.reports.report_output import png_bytes
from api.web.state import principal, state
from core.errors import PermissionDenied
from registry.refs import check_unix_name

bp = Blueprint("reports", __name__, url_prefix="/api/v1")


def report_params() -> dict[str, Any]:
    """``by``, ``since``, ``until`` and ``user`` of the request: admins see every user's
    saves (or ``user``'s), everyone else only their own (403 for another ``user``)."""
    caller = principal()
    user = request.args.get("user") or None
    if user is not None:
        check_unix_name(user)
    if not caller.admin:
        if user not in (None, caller.user):
            raise PermissionDenied("only an imgsave admin sees another user's saves")
        user = caller.user
    return {
        "since": request.args.get("since"),
        "until": request.args.get("until"),
        "by": request.args.get("by", "user"),
        "user": user,
        "database": state().db,
    }


@bp.get("/reports/usage")
def usage() -> Response:
    """Saves, outcomes, run and wait times and bytes pushed, grouped by ``by``: the
    document ``imgsave report --format json`` prints."""
    return jsonify(build_report(state().site, **report_params()).to_dict())


@bp.get("/reports/usage.png")
def usage_png() -> Response:
    """The same report as a stacked bar chart (PNG, 2000×1125)."""
    report = build_report(state().site, **report_params())
    return Response(png_bytes(report), mimetype="image/png")
