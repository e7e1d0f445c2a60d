"""The data behind the Harbor contract fake (tests/support/harbor_server.py), and its JSON.

Projects, repositories, artifacts and robot accounts as plain dataclasses the tests fill
in, plus the JSON shapes Harbor's API v2.0 gives them (``definitions/Project``,
``Artifact``, ``Tag`` in ``api/v2.0/swagger.yaml``). Not Harbor: see harbor_server.py.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

NEVER = "0001-01-01T00:00:00.000Z"  # Go's zero time, as Harbor sends it
# The permissions docs/harbor.md tells a centre to grant, as the tests' robots have them.
PROJECT_ROBOT_ACCESS = frozenset({
    "project:read", "repository:list", "repository:pull", "repository:push",
    "artifact:read", "artifact:list", "artifact:delete", "tag:list", "quota:read",
})
SYSTEM_ROBOT_ACCESS = frozenset({"project:create", "project:list", "quota:list", "quota:read"})
_ids = itertools.count(1)


@dataclass
class FakeArtifact:
    digest: str
    size: int
    tags: list[str] = field(default_factory=list)
    push_time: str = "2026-01-02T03:04:05.000Z"
    pull_time: str = NEVER
    media_type: str = "application/vnd.oci.image.config.v1+json"
    manifest_media_type: str = "application/vnd.oci.image.manifest.v1+json"
    annotations: dict[str, str] | None = None
    extra_attrs: dict[str, Any] | None = None
    immutable: bool = False
    id: int = field(default_factory=lambda: next(_ids))


@dataclass
class FakeRepository:
    name: str  # full name, "u-alice/ml/torch"
    artifacts: list[FakeArtifact] = field(default_factory=list)
    pull_count: int = 0
    id: int = field(default_factory=lambda: next(_ids))


@dataclass
class FakeProject:
    name: str
    public: bool = False
    hard_bytes: int | None = -1  # None: no quota record (per-project quota switched off)
    used_bytes: int = 0
    repositories: dict[str, FakeRepository] = field(default_factory=dict)
    project_id: int = field(default_factory=lambda: next(_ids))

    def add_image(self, path: str, artifact: FakeArtifact, pull_count: int = 0) -> FakeArtifact:
        """Put an artifact in repository ``<project>/<path>`` and count its size as used."""
        full = f"{self.name}/{path}"
        repo = self.repositories.setdefault(full, FakeRepository(full, pull_count=pull_count))
        repo.artifacts.append(artifact)
        self.used_bytes += artifact.size
        return artifact


@dataclass
class FakeRobot:
    """A robot account; ``permissions`` maps a project name, "*" or "/" to
    ``"resource:action"`` strings (Harbor's RobotPermission ``access`` list, flattened)."""

    name: str
    secret: str
    permissions: dict[str, set[str]]
    system: bool = False
    disabled: bool = False

    def can(self, project: str, permission: str) -> bool:
        return permission in self.permissions.get(project, set()) | self.permissions.get(
            "*", set()
        )


def project_robot(project: str, secret: str, name: str = "imgsave") -> FakeRobot:
    """A project-level robot (``robot$<project>+<name>``) with the documented access."""
    return FakeRobot(f"robot${project}+{name}", secret, {project: set(PROJECT_ROBOT_ACCESS)})


def system_robot(name: str, secret: str) -> FakeRobot:
    """A system-level robot covering every project, with the documented access."""
    permissions = {"*": set(PROJECT_ROBOT_ACCESS), "/": set(SYSTEM_ROBOT_ACCESS)}
    return FakeRobot(f"robot${name}", secret, permissions, system=True)


@dataclass
class HarborState:
    """Everything the fake serves; tests change it directly (under ``lock``)."""

    projects: dict[str, FakeProject] = field(default_factory=dict)
    robots: dict[str, FakeRobot] = field(default_factory=dict)
    default_storage_limit: int = -1
    fail_status: int | None = None  # answer every request with this (a Harbor half down)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_project(self, name: str, **values: Any) -> FakeProject:
        project = FakeProject(name, **values)
        self.projects[name] = project
        return project

    def add_robot(self, robot: FakeRobot) -> FakeRobot:
        self.robots[robot.name] = robot
        return robot


def project_json(project: FakeProject) -> dict[str, Any]:
    return {
        "project_id": project.project_id,
        "name": project.name,
        "owner_id": 1,
        "owner_name": "admin",
        "repo_count": len(project.repositories),
        "chart_count": 0,
        "deleted": False,
        "creation_time": "2026-01-01T00:00:00.000Z",
        "update_time": "2026-01-01T00:00:00.000Z",
        "metadata": {"public": "true" if project.public else "false"},
    }


def artifact_json(
    project: FakeProject, repo: FakeRepository, artifact: FakeArtifact, with_tag: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": artifact.id,
        "type": "IMAGE",
        "media_type": artifact.media_type,
        "manifest_media_type": artifact.manifest_media_type,
        "project_id": project.project_id,
        "repository_id": repo.id,
        "digest": artifact.digest,
        "size": artifact.size,
        "push_time": artifact.push_time,
        "pull_time": artifact.pull_time,
        "addition_links": {},
    }
    # swagger fields without x-omitempty: false are left out when empty
    if artifact.extra_attrs:
        body["extra_attrs"] = artifact.extra_attrs
    if artifact.annotations:
        body["annotations"] = artifact.annotations
    if with_tag and artifact.tags:
        body["tags"] = [
            {
                "id": artifact.id * 100 + i,
                "repository_id": repo.id,
                "artifact_id": artifact.id,
                "name": tag,
                "push_time": artifact.push_time,
                "pull_time": NEVER,
                "immutable": artifact.immutable,
                "signed": False,
            }
            for i, tag in enumerate(artifact.tags)
        ]
    return body


def find_artifact(repo: FakeRepository, reference: str) -> FakeArtifact | None:
    for artifact in repo.artifacts:
        if reference == artifact.digest or reference in artifact.tags:
            return artifact
    return None
