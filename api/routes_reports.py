"""``/api/v1/reports/usage``: image-build usage from accounting (admins only), as JSON
rows or as the PNG chart of ``imgsave report --plot``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.report import build_report, usage_report
from api.report_output import png_bytes
from api.state import require_admin, state
from registry.refs import check_unix_name

bp = Blueprint("reports", __name__, url_prefix="/api/v1")


def report_params() -> dict[str, Any]:
    """``by``, ``since``, ``until`` and ``user`` of an admin's request (403 otherwise)."""
    require_admin()
    user = request.args.get("user") or None
    if user is not None:
        check_unix_name(user)
    return {
        "since": request.args.get("since"),
        "until": request.args.get("until"),
        "by": request.args.get("by", "user"),
        "user": user,
        "database": state().db,
    }


@bp.get("/reports/usage")
def usage() -> Response:
    """Saves, outcomes, run and wait times and bytes pushed, grouped by ``by``."""
    rows = usage_report(state().site, **report_params())
    return jsonify({"rows": [r.to_dict() for r in rows]})


@bp.get("/reports/usage.png")
def usage_png() -> Response:
    """The same report as a stacked bar chart (PNG, 2000×1125)."""
    report = build_report(state().site, **report_params())
    return Response(png_bytes(report), mimetype="image/png")
