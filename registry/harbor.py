"""Harbor: per-user (or per-group) projects, artifacts and quotas on top of the OCI client.

A :class:`HarborClient` holds a :class:`~registry.oci.RegistryClient` (pushes and
pulls go through the OCI distribution API as for any registry, ``client.registry``)
and adds what only Harbor's API v2.0 knows: projects, artifacts with their tags, size,
push time and pull counts, artifact deletion, and the project's storage quota, which
:meth:`HarborClient.check_quota` reads *before* a save job is submitted.

The project of a user is the first path component of their namespace: with the
site rule ``"u-{user}"`` alice's images live in project ``u-alice``; with
``"g-{group}/{user}"`` in project ``g-physics`` under ``g-physics/alice/``.
Endpoints and models are those of Harbor's ``api/v2.0/swagger.yaml``; see
:mod:`registry.harbor_http` for paths, paging and errors, docs/harbor.md for the setup.
"""

from __future__ import annotations

import logging

from core.errors import (
    ConfigError,
    ImgsaveError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RegistryError,
)
from core.runner import Runner, run_command
from registry.auth import Credentials, load_credentials
from registry.harbor_http import (
    HarborApi,
    json_body,
    project_path,
    reference_path,
    repository_path,
)
from registry.harbor_models import (
    UNLIMITED,
    HarborArtifact,
    HarborImage,
    HarborProject,
    HarborRepository,
    ProjectQuota,
    image_entries,
    parse_artifact,
    parse_project,
    parse_quota,
    parse_repository,
    parse_robot_name,
)
from registry.oci import RegistryClient
from registry.refs import check_reference, check_repository, host_of, target_for_user
from registry.refs import user_namespace as namespace_for
from site_configs.schema import RegistrySection

log = logging.getLogger(__name__)

KIND = "harbor"  # registry.kind of a Harbor site (its entry in registry.kinds.KINDS)

ARTIFACT_PARAMS = {"with_tag": "true", "with_label": "false", "with_scan_overview": "false"}


class QuotaExceeded(ImgsaveError):
    """A save would take the user's Harbor project over its storage quota.

    Not retryable: the same save fails the same way until images are deleted or the
    quota is raised.
    """

    retryable = False


class HarborClient:
    """One Harbor: the OCI client for images plus Harbor's API for everything else."""

    def __init__(self, registry: RegistryClient, namespace_rule: str = "{user}") -> None:
        self.registry = registry
        self.api = HarborApi(registry)
        self.namespace_rule = namespace_rule
        self.host = host_of(registry.base_url)
        creds = registry.credentials
        self.robot = parse_robot_name(creds.username) if creds else None

    @classmethod
    def from_section(
        cls,
        section: RegistrySection,
        credentials: Credentials | None = None,
        *,
        runner: Runner = run_command,
    ) -> HarborClient:
        """The site's Harbor; credentials from the section (0600 file or helper) if not given."""
        if section.kind != KIND:
            raise ConfigError(
                f"registry.kind is {section.kind!r}, but the Harbor client needs {KIND!r}"
            )
        if credentials is None:
            credentials = load_credentials(section, runner=runner)
        return cls(RegistryClient.from_section(section, credentials), section.namespace)

    def __enter__(self) -> HarborClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.registry.close()

    # --- names --------------------------------------------------------------------------

    def namespace(self, user: str, group: str = "") -> str:
        """The user's repository prefix from the site rule ("u-alice", "g-phys/alice")."""
        return namespace_for(user, self.namespace_rule, group)

    def project_name(self, user: str, group: str = "") -> str:
        """The Harbor project that holds the user's images: the namespace's first part."""
        return self.namespace(user, group).split("/", 1)[0]

    # --- projects -----------------------------------------------------------------------

    def project_exists(self, project: str) -> bool:
        """``HEAD /projects?project_name=``: whether the project exists (any visibility).

        Harbor answers this only to a logged-in account, so a 401 here means the
        credentials were not accepted.
        """
        self._check_robot_reaches(project)
        response = self.api.request(
            "HEAD",
            "/projects",
            f"check that project {project} exists",
            params={"project_name": project},
            ok=(200, 404),
        )
        return response.status_code == 200

    def get_project(self, project: str) -> HarborProject | None:
        """The project named ``project``, or None if Harbor has no such project.

        ``GET /projects?name=`` matches names *fuzzily* and lists only projects the
        account may see, so the exact name is picked out, and a project that exists
        but stays hidden is a :class:`PermissionDenied`, not None.
        """
        if not self.project_exists(project):
            return None
        for item in self.api.paged(
            "/projects", f"look up project {project}", {"name": project, "with_detail": "false"}
        ):
            found = parse_project(item)
            if found.name == project:
                return found
        raise PermissionDenied(
            f"Harbor project {project} exists, but {self.api.who} is not a member of it; "
            "give the robot account access to the project (docs/harbor.md)"
        )

    def ensure_project(
        self, project: str, *, storage_limit_bytes: int | None = None
    ) -> HarborProject:
        """The project, created private first if missing (a rerun finds it and is a no-op).

        Creating needs a *system-level* robot with ``project: create``; Harbor refuses
        project robots. ``storage_limit_bytes`` sets the new project's quota (Harbor
        ignores it unless the account is an administrator, and uses the default).
        """
        found = self.get_project(project)
        if found is not None:
            return found
        body: dict[str, object] = {"project_name": project, "metadata": {"public": "false"}}
        if storage_limit_bytes is not None:
            body["storage_limit"] = storage_limit_bytes
        self.api.request(
            "POST", "/projects", f"create project {project}", json_body=body, ok=(201, 409)
        )
        created = self.get_project(project)
        if created is None:
            raise RegistryError(
                f"Harbor at {self.api.base_url} created project {project}, but does not list it"
            )
        log.info("Harbor project %s ready (id %d)", project, created.project_id)
        return created

    # --- repositories and artifacts -----------------------------------------------------

    def list_repositories(self, project: str, prefix: str = "") -> list[HarborRepository]:
        """Repositories of ``project``, all pages; with ``prefix`` (a namespace such as
        "g-phys/alice") only it and the repositories under it, never "g-phys/alice2/...".
        """
        self._check_robot_reaches(project)
        base = prefix.strip("/")
        what = f"list repositories of project {project}"
        try:
            items = list(self.api.paged(f"{project_path(project)}/repositories", what))
        except PermissionDenied as denied:
            raise self._missing_or(project, denied) from denied
        repos = [parse_repository(item) for item in items]
        return [r for r in repos if not base or r.name == base or r.name.startswith(base + "/")]

    def list_artifacts(
        self, repository: str, *, repository_pull_count: int | None = None
    ) -> list[HarborArtifact]:
        """Artifacts of ``repository`` (full name, "u-alice/ml/torch") with their tags;
        [] when the repository does not exist."""
        check_repository(repository)
        project = repository.split("/", 1)[0]
        self._check_robot_reaches(project)
        what = f"list artifacts of {repository}"
        try:
            items = list(
                self.api.paged(f"{repository_path(repository)}/artifacts", what, ARTIFACT_PARAMS)
            )
        except NotFound:
            return []
        except PermissionDenied as denied:
            raise self._missing_or(project, denied) from denied
        return [parse_artifact(item, repository, repository_pull_count) for item in items]

    def get_artifact(self, repository: str, reference: str) -> HarborArtifact | None:
        """The artifact a tag or digest names in ``repository``, or None if absent."""
        check_repository(repository)
        check_reference(reference)
        self._check_robot_reaches(repository.split("/", 1)[0])
        what = f"get artifact {repository}:{reference}"
        response = self.api.request(
            "GET",
            f"{repository_path(repository)}/artifacts/{reference_path(reference)}",
            what,
            params=ARTIFACT_PARAMS,
            ok=(200, 404),
        )
        if response.status_code == 404:
            return None
        return parse_artifact(json_body(response, what), repository)

    def delete_artifact(self, repository: str, reference: str) -> None:
        """Delete an artifact by tag or digest: the manifest and *every* tag on it.

        :class:`NotFound` if absent; Harbor's garbage collection frees the blobs later.
        """
        check_repository(repository)
        check_reference(reference)
        self._check_robot_reaches(repository.split("/", 1)[0])
        self.api.request(
            "DELETE",
            f"{repository_path(repository)}/artifacts/{reference_path(reference)}",
            f"delete artifact {repository}:{reference}",
        )

    # --- quotas -------------------------------------------------------------------------

    def project_quota(self, project: str) -> ProjectQuota:
        """The project's storage quota (hard limit, used bytes).

        ``GET /quotas?reference=project&reference_id=<id>`` needs the system-level
        permission ``quota: list``; a project robot gets 403 there, so the quota is
        then read from ``GET /projects/{name}/summary`` (project permission
        ``quota: read``). No quota record at all means unlimited.
        """
        found = self.get_project(project)
        if found is None:
            raise NotFound(f"Harbor project {project} does not exist at {self.api.base_url}")
        params = {"reference": "project", "reference_id": str(found.project_id)}
        try:
            items = list(self.api.paged("/quotas", f"read the quota of project {project}", params))
        except PermissionDenied as denied:
            return self._quota_from_summary(found, denied)
        for item in items:
            ref = item.get("ref") if isinstance(item, dict) else None
            if not isinstance(ref, dict) or ref.get("id") in (None, found.project_id):
                return parse_quota(item, found)
        return ProjectQuota(found.project_id, found.name, UNLIMITED, 0, source="none")

    def check_quota(self, user: str, expected_bytes: int, *, group: str = "") -> None:
        """Refuse, before any job runs, a save that cannot fit in the user's project.

        Raises :class:`QuotaExceeded` when used + ``expected_bytes`` > hard limit
        (a hard limit of -1 is unlimited). ``expected_bytes`` is what the push adds;
        Harbor counts a blob once per project, so a layer already there costs nothing.
        """
        if expected_bytes < 0:
            raise InvalidRequest(f"expected image size must be >= 0 bytes, not {expected_bytes}")
        quota = self.project_quota(self.project_name(user, group))
        if quota.allows(expected_bytes):
            log.debug("quota of %s allows %d more bytes", quota.project_name, expected_bytes)
            return
        raise QuotaExceeded(
            f"saving this image needs about {_size(expected_bytes)}, but Harbor project "
            f"{quota.project_name} has used {_size(quota.used_bytes)} of its "
            f"{_size(quota.hard_bytes)} quota ({_size(quota.free_bytes or 0)} free); delete "
            "images you no longer need, or ask the centre to raise the project's quota"
        )

    # --- catalog (what the plain OCI path offers) ---------------------------------------

    def list_images(self, user: str, *, group: str = "") -> list[HarborImage]:
        """Every ``repository:tag`` in the user's namespace, one entry per tag.

        :class:`NotFound` when the user's project does not exist.
        """
        namespace = self.namespace(user, group)
        project = namespace.split("/", 1)[0]
        images: list[HarborImage] = []
        for repo in self.list_repositories(project, prefix=namespace):
            if repo.name == namespace:
                continue  # the namespace itself is no image of the user ("g-phys")
            for artifact in self.list_artifacts(repo.name, repository_pull_count=repo.pull_count):
                images.extend(image_entries(artifact, self.host))
        return sorted(images, key=lambda image: (image.repository, image.tag))

    def delete_image(self, user: str, repository: str, tag: str, *, group: str = "") -> str:
        """Delete the user's ``repository:tag`` and return the digest deleted.

        ``repository`` may be short ("torch") or full ("u-alice/torch"); a name
        outside the user's namespace is a :class:`PermissionDenied`. As on the OCI
        path, the whole artifact goes, with any other tag on the same digest.
        """
        ref = target_for_user(f"{repository}:{tag}", user, self.namespace_rule, self.host, group)
        artifact = self.get_artifact(ref.repository, ref.tag)
        if artifact is None:
            raise NotFound(f"image {ref.name} does not exist")
        self.delete_artifact(ref.repository, artifact.digest)
        log.info("deleted %s (%s) for %s", ref.name, artifact.digest, user)
        return artifact.digest

    # --- helpers ------------------------------------------------------------------------

    def _check_robot_reaches(self, project: str) -> None:
        # A project robot is confined to its project; say so instead of Harbor's 403.
        if self.robot and self.robot.is_project_robot and self.robot.project != project:
            raise PermissionDenied(
                f"robot account {self.robot.full!r} belongs to Harbor project "
                f"{self.robot.project} and cannot reach project {project}; use that "
                "project's own robot, or a system-level robot (docs/harbor.md)"
            )

    def _missing_or(self, project: str, denied: PermissionDenied) -> ImgsaveError:
        # Harbor answers 403 (401 if anonymous) for a project that does not exist,
        # because its permission check runs first (handler/base.go RequireProjectAccess).
        if not self.project_exists(project):
            return NotFound(
                f"Harbor project {project} does not exist at {self.api.base_url}; the centre "
                "creates one per user or group (docs/harbor.md)"
            )
        return denied

    def _quota_from_summary(self, project: HarborProject, denied: PermissionDenied) -> ProjectQuota:
        summary = self.api.get_json(
            f"{project_path(project.name)}/summary", f"read the summary of project {project.name}"
        )
        quota = summary.get("quota") if isinstance(summary, dict) else None
        if not isinstance(quota, dict):
            raise PermissionDenied(
                f"{self.api.who} may not read the storage quota of Harbor project "
                f"{project.name}: grant the robot 'quota: read' on the project, or the "
                f"system-level 'quota: list' ({denied.message})"
            ) from denied
        return parse_quota(quota, project, source="summary")


def _size(count: int) -> str:
    """Bytes for people: "512 B", "3.2 MiB", "1.5 GiB"."""
    if count == UNLIMITED:
        return "unlimited"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns
