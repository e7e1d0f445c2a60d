"""Fixtures for the API tests that run without the cluster (Flask test client).

Three fakes, and why: these tests check HTTP semantics (auth, ownership, error bodies,
idempotency, limits) on every commit, so they must not need Slurm or a registry.
:class:`MemoryScheduler` stands in for the scheduler and :class:`MemoryRegistry` for
the registry; :func:`any_account` for ``pwd``, as the test users (carol, dave, erin)
have no account on this machine (test_api_auth.py checks the real lookup). Everything
else (SaveService, ImageCatalog, the spool files, the database) is the real code
(fixtures: tests/support/api_fixtures.py). The same flows run against the real cluster in
test_api_cluster.py and test_portal_browser.py.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.service.saves import SaveService
from api.web.auth import issue_token
from api.web.state import state
from core.errors import NotFound
from registry.catalog import ImageCatalog
from registry.manifests import ManifestInfo
from scheduler_glue.base import BatchJob, JobNodes, JobRecord, Scheduler
from scheduler_glue.states import JobState
from site_configs.schema import SiteConfig, load_site_config

PROXY = "10.9.8.7"
LOCAL_TOML = Path(__file__).resolve().parents[2] / "site_configs" / "local.toml"


SERVICE_ACCOUNT = "imgsave"  # local.toml's: the portal submits as it, never as root


class MemoryScheduler(Scheduler):
    """A scheduler that keeps jobs in a dict (a fake; see the module docstring). Jobs
    are submitted by the portal's service account, as ``imgsave serve`` does."""

    name = "memory"
    job_id_variable = "MEMORY_JOB_ID"  # its job scripts never run
    submitter_uid = staticmethod(lambda: 999)  # the service account's, never root

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.submitted: list[BatchJob] = []
        self._ids = itertools.count(1000)
        self.running_user_jobs: list[JobRecord] = []

    def submit(self, job: BatchJob) -> str:
        if not self.node_exists(job.node):  # as the Slurm and PBS backends check
            raise NotFound(f"node {job.node} is not a node of this cluster")
        job_id = str(next(self._ids))
        self.submitted.append(job)
        self.jobs[job_id] = JobRecord(
            job_id, JobState.PENDING, name=job.name, user=SERVICE_ACCOUNT, node=job.node,
            submit_time=datetime.now(UTC), metadata=dict(job.metadata),
        )
        return job_id

    def set_state(self, job_id: str, state: JobState) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], state=state)

    def status(self, job_ids: Iterable[str], since: datetime) -> dict[str, JobRecord]:
        return {i: self.jobs.get(i, JobRecord(i, JobState.UNKNOWN)) for i in job_ids}

    def list_jobs(self, since: datetime, until: datetime | None = None,
                  name_prefix: str = "") -> list[JobRecord]:
        jobs = [*self.jobs.values(), *self.running_user_jobs]
        return [j for j in jobs if j.name.startswith(name_prefix)]

    def cancel(self, job_id: str) -> None:
        if job_id not in self.jobs:
            raise NotFound(f"job {job_id} does not exist")
        self.set_state(job_id, JobState.CANCELLED)

    def node_of_job(self, job_id: str) -> tuple[str, str]:
        for job in self.running_user_jobs:
            if job.job_id == job_id:
                return job.node, job.user
        raise NotFound(f"job {job_id} is not running")

    def nodes_of_job(self, job_id: str) -> JobNodes:
        node, owner = self.node_of_job(job_id)
        return JobNodes(job_id, owner, "RUNNING", (node,))

    def node_exists(self, node: str) -> bool:
        return node in ("n1", "n2")


@dataclass
class MemoryRegistry:
    """Repositories → tags → manifests in memory (a fake; see the module docstring)."""

    images: dict[str, dict[str, ManifestInfo]] = field(default_factory=dict)

    def add(self, repository: str, tag: str, size: int = 1234, category: str = "cpu") -> None:
        digest = "sha256:" + hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest()
        self.images.setdefault(repository, {})[tag] = ManifestInfo(
            digest=digest, media_type="application/vnd.oci.image.manifest.v1+json",
            config_size=size, annotations={"io.imgsave.category": category},
            created="2026-01-02T03:04:05Z",
        )

    def ping(self) -> None:
        return None

    def list_repositories(self, prefix: str = "") -> list[str]:
        return [r for r in self.images if r.startswith(prefix)]

    def list_tags(self, repository: str) -> list[str]:
        return list(self.images.get(repository, {}))

    def manifest(self, repository: str, reference: str, **_: Any) -> ManifestInfo | None:
        return self.images.get(repository, {}).get(reference)

    def delete_manifest(self, repository: str, digest: str) -> None:
        tags = self.images.get(repository, {})
        for tag, info in list(tags.items()):
            if info.digest == digest:
                del tags[tag]


@dataclass
class MemorySite:
    """The parts of :class:`api.service.site.Site` the API uses, on the two fakes."""

    config: SiteConfig
    scheduler: MemoryScheduler = field(default_factory=MemoryScheduler)
    registry: MemoryRegistry = field(default_factory=MemoryRegistry)

    @property
    def saves(self) -> SaveService:
        return SaveService(self.config, self.scheduler, python="/usr/bin/python3",
                           account=SERVICE_ACCOUNT)

    @property
    def images(self) -> ImageCatalog:
        return ImageCatalog(self.config.registry, self.registry)  # type: ignore[arg-type]


def site_config(tmp_path: Path, **api: Any) -> SiteConfig:
    """local.toml with the spool in ``tmp_path`` and the given ``[api]`` keys."""
    base = load_site_config(LOCAL_TOML)
    settings = {"trusted_proxies": [PROXY], "admins": ["carol"], **api}
    data = base.model_dump(mode="json")
    data.update(spool_dir=str(tmp_path / "spool"), api=settings, database_url="")
    (tmp_path / "spool").mkdir(mode=0o700, exist_ok=True)  # the service's own spool
    return SiteConfig.model_validate(data)


def make_token(app: Flask, user: str, *, admin: bool = False, ttl_days: int = 1) -> str:
    """A fresh token for ``user`` in the app's database."""
    with app.app_context():
        _, token = issue_token(state().db, user, admin=admin, ttl_days=ttl_days)
    return token


def any_account(user: str) -> bool:
    """The account lookup of the API tests: every user exists (a FAKE of ``pwd``: see the
    module docstring)."""
    return True


def portal_login(client: FlaskClient, token: str) -> TestResponse:
    """Log in as a browser does: the login page, then its form with the page's CSRF token."""
    page = client.get("/")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return client.post("/login", data={"token": token, "csrf": found.group(1)})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def save_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"container": "jupyter-alice", "target": "torch-env:v1",
                            "formats": ["oci"], "category": "cpu", "node": "n1"}
    body.update(overrides)
    return body
