"""``/api/v1/sessions``: the caller's running containers that can be saved.

Two sources, joined by node: the site's session locator (:mod:`api.service.sessions`) and the
scheduler's running jobs of the caller (a container inside a job can be saved with
``job_id`` instead of ``node``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, jsonify

from api.service.saves import JOB_NAME_PREFIX
from api.web.state import flag, principal, state
from core.errors import ImgsaveError, PermissionDenied
from scheduler_glue.base import JobRecord
from scheduler_glue.states import JobState

log = logging.getLogger(__name__)

bp = Blueprint("sessions", __name__, url_prefix="/api/v1")

# Accounting lists a job in every window it overlaps, so a short window still finds
# jobs that started long ago and still run.
RUNNING_JOBS_WINDOW = timedelta(days=1)


@bp.get("/sessions")
def list_sessions() -> Response:
    """Running session containers (with their node) and running jobs of the caller."""
    caller = principal()
    all_users = flag("all_users")
    if all_users and not caller.admin:
        raise PermissionDenied("all_users needs an imgsave admin")
    st = state()
    warnings: list[str] = []
    sessions = st.locator.sessions(None if all_users else caller.user)
    try:
        jobs = running_jobs(st.site.scheduler.list_jobs(datetime.now(UTC) - RUNNING_JOBS_WINDOW),
                            None if all_users else caller.user)
    except ImgsaveError as e:
        log.warning("cannot list running jobs: %s", e.message)
        warnings.append(f"running jobs are not listed: {e.message}")
        jobs = []
    listed = []
    for session in sorted(sessions, key=lambda s: (s.owner, s.node, s.container)):
        data = session.to_dict()
        data["job_ids"] = [j.job_id for j in jobs
                           if j.node == session.node and j.user == session.owner]
        listed.append(data)
    return jsonify({
        "sessions": listed,
        "jobs": [{"job_id": j.job_id, "name": j.name, "node": j.node, "user": j.user}
                 for j in jobs],
        "warnings": warnings,
    })


def running_jobs(records: list[JobRecord], user: str | None) -> list[JobRecord]:
    """The running jobs of ``user`` (everyone's with None) that are not save jobs."""
    return [
        r for r in records
        if r.state is JobState.RUNNING and r.node
        and not r.name.startswith(JOB_NAME_PREFIX)
        and (user is None or r.user == user)
    ]
