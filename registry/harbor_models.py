"""What Harbor's API v2.0 returns, as typed values: projects, repositories, artifacts, quotas.

Pure functions on decoded JSON, so they are tested without a server. Field names follow
the ``definitions`` of Harbor's published ``api/v2.0/swagger.yaml`` (``Project``,
``Repository``, ``Artifact``, ``Tag``, ``Quota``, ``ProjectSummary``). Harbor leaves
empty lists out or sends ``null``, and sends Go's zero time
(``0001-01-01T00:00:00.000Z``) for "never"; both become empty values here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.errors import RegistryError
from registry.manifests import CREATED_ANNOTATION
from registry.oras import SIF_CONFIG_MEDIA_TYPE

UNLIMITED = -1  # Harbor's quota value for "no limit" (pkg/quota/types.UNLIMITED)
STORAGE = "storage"  # the quota resource imgsave checks (bytes)
CATEGORY_ANNOTATION = "io.imgsave.category"
_ZERO_TIME = re.compile(r"0001-01-01T00:00:00(\.0+)?Z")
# Harbor project robots are "<prefix><project>+<name>", system robots "<prefix><name>";
# the prefix is the Harbor setting robot_name_prefix, "robot$" unless changed.
_ROBOT = re.compile(r"(?P<prefix>[^$+]*\$)(?:(?P<project>[a-z0-9][a-z0-9._-]*)\+)?(?P<name>.+)")


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RobotName:
    """A Harbor robot account name split into its parts; ``project`` is "" for a
    system-level robot (which may reach every project it was granted)."""

    full: str
    prefix: str
    project: str
    name: str

    @property
    def is_project_robot(self) -> bool:
        return bool(self.project)


def parse_robot_name(username: str) -> RobotName | None:
    """``robot$u-alice+imgsave`` → project robot of ``u-alice``; None for a plain user."""
    match = _ROBOT.fullmatch(username)
    if not match:
        return None
    return RobotName(username, match["prefix"], match["project"] or "", match["name"])


@dataclass(frozen=True)
class HarborProject:
    """A Harbor project (``definitions/Project``)."""

    project_id: int
    name: str
    public: bool = False
    owner_name: str = ""
    repo_count: int = 0
    creation_time: str = ""


@dataclass(frozen=True)
class HarborRepository:
    """A repository (``definitions/Repository``); ``name`` includes the project
    ("u-alice/ml/torch"), as Harbor returns it. Harbor counts pulls per repository."""

    name: str
    project_id: int = 0
    artifact_count: int = 0
    pull_count: int = 0
    creation_time: str = ""
    update_time: str = ""

    @property
    def project(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class HarborTag:
    """One tag on an artifact (``definitions/Tag``)."""

    name: str
    push_time: str = ""
    pull_time: str = ""
    immutable: bool = False


@dataclass(frozen=True)
class HarborArtifact:
    """An artifact (``definitions/Artifact``): one manifest and every tag on it.

    ``media_type`` is what Harbor stores there: the *config* media type (so a SIF
    pushed the way apptainer expects has :data:`SIF_CONFIG_MEDIA_TYPE`);
    ``manifest_media_type`` is the manifest's. ``size`` is Harbor's number (manifest,
    config and layers). Harbor v2.0 has no per-artifact pull count: ``pull_time`` is
    the last pull, and ``repository_pull_count`` is the repository's count when the
    artifact was listed through its repository (None otherwise).
    """

    repository: str
    digest: str
    tags: tuple[HarborTag, ...] = ()
    size: int = 0
    push_time: str = ""
    pull_time: str = ""
    media_type: str = ""
    manifest_media_type: str = ""
    artifact_type: str = ""
    annotations: Mapping[str, str] = field(default_factory=_empty)
    extra_attrs: Mapping[str, Any] = field(default_factory=_empty)
    repository_pull_count: int | None = None

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(tag.name for tag in self.tags)

    @property
    def created(self) -> str:
        """The image's creation time: annotation, else config (``extra_attrs``), else push."""
        created = self.annotations.get(CREATED_ANNOTATION) or self.extra_attrs.get("created")
        return str(created) if created else self.push_time

    @property
    def format(self) -> str:
        return "sif" if self.media_type == SIF_CONFIG_MEDIA_TYPE else "oci"


@dataclass(frozen=True)
class ProjectQuota:
    """A project's storage quota in bytes; ``hard_bytes`` is -1 when unlimited.

    ``source`` says where it was read: ``"quotas"`` (``GET /quotas``), ``"summary"``
    (``GET /projects/{name}/summary``) or ``"none"`` (Harbor keeps no quota for the
    project: per-project quotas are switched off, so nothing limits it).
    """

    project_id: int
    project_name: str
    hard_bytes: int
    used_bytes: int
    source: str = "quotas"

    @property
    def unlimited(self) -> bool:
        return self.hard_bytes == UNLIMITED

    @property
    def free_bytes(self) -> int | None:
        """Bytes left before the quota is hit (never negative); None when unlimited."""
        return None if self.unlimited else max(self.hard_bytes - self.used_bytes, 0)

    def allows(self, expected_bytes: int) -> bool:
        """Whether ``expected_bytes`` more still fit under the hard limit."""
        return self.unlimited or self.used_bytes + expected_bytes <= self.hard_bytes


@dataclass(frozen=True)
class HarborImage:
    """One ``repository:tag`` of a user, with the fields the OCI catalog lists
    (registry/catalog.py ``ImageInfo``) plus what Harbor adds."""

    repository: str
    tag: str
    digest: str
    size_bytes: int
    created: str
    format: str
    category: str
    reference: str
    push_time: str = ""
    pull_time: str = ""
    repository_pull_count: int | None = None
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Exactly the keys of the OCI catalog's ``ImageInfo.to_dict()``."""
        return {
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "created": self.created,
            "format": self.format,
            "category": self.category,
            "reference": self.reference,
        }


# --- parsers ------------------------------------------------------------------------


def parse_project(item: object) -> HarborProject:
    """A ``Project`` object from ``GET /projects``."""
    body = _object(item, "project")
    metadata = _mapping(body.get("metadata"))
    return HarborProject(
        project_id=_int(body.get("project_id"), "project_id"),
        name=_text(body.get("name")),
        public=str(metadata.get("public", "false")).lower() == "true",
        owner_name=_text(body.get("owner_name")),
        repo_count=_int(body.get("repo_count", 0), "repo_count"),
        creation_time=_time(body.get("creation_time")),
    )


def parse_repository(item: object) -> HarborRepository:
    """A ``Repository`` object from ``GET /projects/{p}/repositories``."""
    body = _object(item, "repository")
    name = _text(body.get("name"))
    if not name:
        raise RegistryError("Harbor returned a repository without a name")
    return HarborRepository(
        name=name,
        project_id=_int(body.get("project_id", 0), "project_id"),
        artifact_count=_int(body.get("artifact_count", 0), "artifact_count"),
        pull_count=_int(body.get("pull_count", 0), "pull_count"),
        creation_time=_time(body.get("creation_time")),
        update_time=_time(body.get("update_time")),
    )


def parse_artifact(
    item: object, repository: str, repository_pull_count: int | None = None
) -> HarborArtifact:
    """An ``Artifact`` object (listed ``with_tag=true``) of ``repository`` (full name)."""
    body = _object(item, "artifact")
    digest = _text(body.get("digest"))
    if not digest.startswith("sha256:") and not digest.startswith("sha512:"):
        raise RegistryError(f"Harbor returned an artifact of {repository} without a digest")
    tags = tuple(
        HarborTag(
            name=_text(tag.get("name")),
            push_time=_time(tag.get("push_time")),
            pull_time=_time(tag.get("pull_time")),
            immutable=bool(tag.get("immutable", False)),
        )
        for tag in (body.get("tags") or [])
        if isinstance(tag, dict) and tag.get("name")
    )
    annotations = _mapping(body.get("annotations"))
    return HarborArtifact(
        repository=repository,
        digest=digest,
        tags=tags,
        size=_int(body.get("size", 0), "size"),
        push_time=_time(body.get("push_time")),
        pull_time=_time(body.get("pull_time")),
        media_type=_text(body.get("media_type")),
        manifest_media_type=_text(body.get("manifest_media_type")),
        artifact_type=_text(body.get("type")),
        annotations=MappingProxyType({str(k): str(v) for k, v in annotations.items()}),
        extra_attrs=MappingProxyType(dict(_mapping(body.get("extra_attrs")))),
        repository_pull_count=repository_pull_count,
    )


def parse_quota(item: object, project: HarborProject, source: str = "quotas") -> ProjectQuota:
    """A ``Quota`` (``/quotas``) or ``ProjectSummaryQuota`` (``summary.quota``) object.

    Older Harbor versions also list a ``count`` resource; only ``storage`` is read.
    A quota without a ``storage`` hard limit is unlimited.
    """
    body = _object(item, "quota")
    hard = _mapping(body.get("hard"))
    used = _mapping(body.get("used"))
    return ProjectQuota(
        project_id=project.project_id,
        project_name=project.name,
        hard_bytes=_int(hard.get(STORAGE, UNLIMITED), "hard.storage"),
        used_bytes=_int(used.get(STORAGE, 0), "used.storage"),
        source=source,
    )


def image_entries(artifact: HarborArtifact, host: str) -> list[HarborImage]:
    """One :class:`HarborImage` per tag of ``artifact`` (untagged artifacts give none)."""
    return [
        HarborImage(
            repository=artifact.repository,
            tag=tag.name,
            digest=artifact.digest,
            size_bytes=artifact.size,
            created=artifact.created,
            format=artifact.format,
            category=artifact.annotations.get(CATEGORY_ANNOTATION, ""),
            reference=f"{host}/{artifact.repository}:{tag.name}",
            push_time=tag.push_time or artifact.push_time,
            pull_time=tag.pull_time or artifact.pull_time,
            repository_pull_count=artifact.repository_pull_count,
            tags=artifact.tag_names,
        )
        for tag in artifact.tags
    ]


def _object(item: object, what: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise RegistryError(f"Harbor returned a {what} that is not a JSON object: {item!r:.100}")
    return item


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RegistryError(f"Harbor returned a non-numeric {what}: {value!r:.50}")
    return int(value)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _time(value: object) -> str:
    text = _text(value)
    return "" if _ZERO_TIME.fullmatch(text) else text
