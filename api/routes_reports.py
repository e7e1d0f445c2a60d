"""``/api/v1/reports/usage``: image-build usage from accounting (admins only)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.report import usage_report
from api.state import require_admin, state
from registry.refs import check_unix_name

bp = Blueprint("reports", __name__, url_prefix="/api/v1")


@bp.get("/reports/usage")
def usage() -> Response:
    """Saves, outcomes, run and wait times and bytes pushed, grouped by ``by``."""
    require_admin()
    user = request.args.get("user") or None
    if user is not None:
        check_unix_name(user)
    rows = usage_report(
        state().site,
        since=request.args.get("since"),
        until=request.args.get("until"),
        by=request.args.get("by", "user"),
        user=user,
        database=state().db,
    )
    return jsonify({"rows": [r.to_dict() for r in rows]})
