"""Warm-ups: put saved images on many nodes at once (docs/warmup.md).

A warm-up is one batch job per node, each pinned to its node, all sharing one warm-up
id. :class:`WarmupService` checks every image (the user's own namespace in the site
registry, :mod:`builder_jobs.warmup_rules`) and every node before submitting anything,
writes each node's spec and job script into the submitting account's spool, submits,
and records the warm-up in ``{spool}/warmups/<id>.json``. Status joins the scheduler's
record of each node's job with the per-image results the node wrote into the spool.
The node's privileged entry checks everything again from the scheduler's record.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from api.service.spool import own_spool, remove_tree, submit_lock, write_private
from builder_jobs.events import read_spool_text
from builder_jobs.spec import OUTPUT_FILE, SCRIPT_FILE, spool_dir_for
from builder_jobs.warmup_job import read_images, read_warmup_result, render_warmup_script
from builder_jobs.warmup_rules import checked_images
from builder_jobs.warmup_spec import (
    IMAGE_SEPARATOR,
    KIND_KEY,
    KIND_WARMUP,
    WARMUP_SPEC_FILE,
    ImageOutcome,
    ImageResult,
    WarmupSpec,
)
from core.errors import ImgsaveError, InvalidRequest, NotFound, PermissionDenied
from scheduler_glue.base import BatchJob, JobRecord, Scheduler
from scheduler_glue.states import JobState
from site_configs.schema import SiteConfig, current_account

log = logging.getLogger(__name__)

WARMUPS_DIR = "warmups"
# not "imgsave...": save listings (queue, reports) select jobs by that prefix
JOB_NAME_PREFIX = "imgwarm"


def _warmup_id_ok(text: str) -> bool:
    return len(text) == 12 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class NodeWarmup:
    """One node of a warm-up, as status shows it."""

    node: str
    job_id: str
    state: JobState
    images_total: int
    images: list[ImageResult] = field(default_factory=list)
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state.final or bool(self.error and not self.job_id)

    @property
    def ok(self) -> bool:
        return (self.state is JobState.COMPLETED and not self.error
                and len(self.images) == self.images_total
                and all(i.outcome is not ImageOutcome.FAILED for i in self.images))

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "job_id": self.job_id, "state": self.state.label,
                "images_total": self.images_total, "error": self.error,
                "images": [i.to_dict() for i in self.images]}  # fmt: skip


@dataclass(frozen=True)
class Warmup:
    warmup_id: str
    user: str
    created: str
    nodes: list[NodeWarmup]

    @property
    def finished(self) -> bool:
        return all(n.finished for n in self.nodes)

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {"warmup_id": self.warmup_id, "user": self.user, "created": self.created,
                "finished": self.finished, "ok": self.ok,
                "nodes": [n.to_dict() for n in self.nodes]}  # fmt: skip


class WarmupService:
    """Submit and follow warm-ups for one site, as one Unix account (as SaveService)."""

    def __init__(self, config: SiteConfig, scheduler: Scheduler, *, python: str = "",
                 account: str = "") -> None:
        import sys

        self.config = config
        self.scheduler = scheduler
        self.python = python or config.node_python or sys.executable
        self.account = account or current_account()
        self.spool = config.spool_for(self.account)

    @property
    def portal_mode(self) -> bool:
        return self.account == self.config.service_account

    def nodes_of_job(self, job_id: str, user: str, *, admin: bool = False) -> list[str]:
        """The nodes of ``user``'s pending or running job (NotFound, PermissionDenied)."""
        if not self.scheduler.is_job_id(job_id):
            raise InvalidRequest(f"job id {job_id!r} is not a job id")
        found = self.scheduler.nodes_of_job(job_id)
        if found.owner != user and not admin:
            raise PermissionDenied(f"job {job_id} is not yours")
        return list(found.nodes)

    def submit(self, user: str, plan: Mapping[str, Sequence[str]]) -> Warmup:
        """Check the whole plan, then submit one job per node; a node whose submit is
        refused is reported in its row, the others still run."""
        self.scheduler.check_submitter()
        if not self.portal_mode and user != self.account:
            raise PermissionDenied(f"you are {self.account}: you can warm up only as yourself")
        if not plan:
            raise InvalidRequest("name at least one node to warm up")
        checked = {node: checked_images(self.config, user, images)
                   for node, images in plan.items()}  # fmt: skip
        for node in checked:
            self.scheduler.check_node(node)  # every node before any job
        spool = own_spool(self.spool)
        warmup_id = uuid.uuid4().hex[:12]
        created = datetime.now(UTC).isoformat(timespec="seconds")
        rows: dict[str, dict[str, Any]] = {}
        with submit_lock(spool, user if self.portal_mode else ""):
            for node, images in checked.items():
                rows[node] = self._submit_node(spool, warmup_id, user, node, images, created)
        (spool / WARMUPS_DIR).mkdir(mode=0o700, exist_ok=True)
        index = {"warmup_id": warmup_id, "user": user, "created": created, "nodes": rows}
        write_private(spool / WARMUPS_DIR / f"{warmup_id}.json", json.dumps(index, indent=2),
                      0o600)  # fmt: skip
        return self.status(warmup_id, user)

    def _submit_node(self, spool: Path, warmup_id: str, user: str, node: str,
                     images: tuple[str, ...], created: str) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        workdir = spool_dir_for(spool, request_id)
        spec = WarmupSpec(request_id=request_id, warmup_id=warmup_id, user=user, node=node,
                          images=images, site_config=self.config.source_path, created=created)
        workdir.mkdir(mode=0o700)
        workdir.chmod(0o700)
        write_private(workdir / WARMUP_SPEC_FILE, spec.to_json(), 0o600)
        script = workdir / SCRIPT_FILE
        write_private(script, render_warmup_script(
            workdir / WARMUP_SPEC_FILE, self.python, request_id,
            job_id_variable=self.scheduler.job_id_variable,
            node_variable=self.scheduler.node_variable), 0o700)  # fmt: skip
        job = BatchJob(
            name=f"{JOB_NAME_PREFIX}-{user}", script=script, node=node,
            output_path=workdir / OUTPUT_FILE,
            metadata={KIND_KEY: KIND_WARMUP, "request_id": request_id, "user": user,
                      "warmup_id": warmup_id, "node": node,
                      "images": IMAGE_SEPARATOR.join(images)},
            partition=self.config.scheduler.partition, qos=self.config.scheduler.qos,
            account=self.config.scheduler.account,
            time_limit_minutes=self.config.scheduler.time_limit_minutes, workdir=workdir,
        )  # fmt: skip
        row: dict[str, Any] = {"request_id": request_id, "images": list(images), "job_id": ""}
        try:
            row["job_id"] = self.scheduler.submit(job)
        except ImgsaveError as e:
            remove_tree(workdir)
            row["error"] = f"not submitted: {e.message}"
            log.warning("warm-up %s: node %s: %s", warmup_id, node, e.message)
        return row

    def _index(self, warmup_id: str) -> dict[str, Any]:
        if not _warmup_id_ok(warmup_id):
            raise InvalidRequest(f"{warmup_id!r} is not a warm-up id (12 hex digits)")
        text = read_spool_text(self.spool / WARMUPS_DIR / f"{warmup_id}.json")
        if text is None:
            raise NotFound(f"warm-up {warmup_id} is not a warm-up of yours")
        try:
            data: dict[str, Any] = json.loads(text)
        except ValueError as e:
            raise NotFound(f"warm-up {warmup_id}: its record is unreadable") from e
        return data

    def status(self, warmup_id: str, user: str, *, admin: bool = False) -> Warmup:
        """Each node's job state and images, from the scheduler and the spool."""
        index = self._index(warmup_id)
        if index.get("user") != user and not admin:
            raise NotFound(f"warm-up {warmup_id} is not a warm-up of yours")
        rows: dict[str, dict[str, Any]] = index.get("nodes", {})
        job_ids = [r["job_id"] for r in rows.values() if r.get("job_id")]
        since = datetime.fromisoformat(index["created"]) - timedelta(minutes=5)
        records = self.scheduler.status(job_ids, since) if job_ids else {}
        nodes = [self._node(node, row, records.get(row.get("job_id", "")))
                 for node, row in sorted(rows.items())]  # fmt: skip
        return Warmup(warmup_id, index["user"], index["created"], nodes)

    def _node(self, node: str, row: Mapping[str, Any], record: JobRecord | None) -> NodeWarmup:
        total = len(row.get("images", []))
        if not row.get("job_id"):
            return NodeWarmup(node, "", JobState.FAILED, total, error=row.get("error", ""))
        workdir = spool_dir_for(self.spool, row["request_id"])
        state = record.state if record is not None else JobState.UNKNOWN
        result = read_warmup_result(workdir)
        images = result.images if result is not None and result.images else read_images(workdir)
        error = result.error if result is not None else ""
        if not error and state.final and not state.succeeded and result is None:
            error = f"the job ended {state.label} without a result" + (
                f" ({record.reason})" if record is not None and record.reason else "")
        return NodeWarmup(node, row["job_id"], state, total, images, error)
