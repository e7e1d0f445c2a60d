"""Harbor API v2.0 JSON → typed values, robot names, paths: pure functions, no server."""

from __future__ import annotations

import pytest

from core.errors import NotFound, RegistryError
from registry.harbor_http import next_link, repository_path
from registry.harbor_models import (
    HarborArtifact,
    HarborProject,
    ProjectQuota,
    image_entries,
    parse_artifact,
    parse_project,
    parse_quota,
    parse_repository,
    parse_robot_name,
)
from registry.oras import SIF_CONFIG_MEDIA_TYPE

DIGEST = "sha256:" + "a" * 64

# An artifact as Harbor 2.x lists it with_tag=true (fields from definitions/Artifact).
ARTIFACT = {
    "id": 7,
    "type": "IMAGE",
    "media_type": "application/vnd.oci.image.config.v1+json",
    "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
    "project_id": 3,
    "repository_id": 9,
    "digest": DIGEST,
    "size": 123456,
    "push_time": "2026-01-02T03:04:05.000Z",
    "pull_time": "0001-01-01T00:00:00.000Z",
    "extra_attrs": {"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z"},
    "annotations": {"io.imgsave.category": "gpu"},
    "references": None,
    "tags": [
        {"id": 1, "name": "v1", "push_time": "2026-01-02T03:04:05.000Z",
         "pull_time": "2026-01-03T00:00:00.000Z", "immutable": False, "signed": False},
        {"id": 2, "name": "latest", "push_time": "2026-01-02T03:04:06.000Z",
         "pull_time": "0001-01-01T00:00:00.000Z", "immutable": True, "signed": False},
    ],
}


@pytest.mark.parametrize(
    ("name", "project", "robot_name"),
    [
        ("robot$u-alice+imgsave", "u-alice", "imgsave"),
        ("robot$imgsave-svc", "", "imgsave-svc"),
        ("harbor-robot$g-phys.lab+push", "g-phys.lab", "push"),  # robot_name_prefix changed
    ],
)
def test_robot_names(name: str, project: str, robot_name: str) -> None:
    robot = parse_robot_name(name)
    assert robot is not None
    assert (robot.project, robot.name, robot.is_project_robot) == (
        project,
        robot_name,
        bool(project),
    )


def test_plain_user_is_no_robot() -> None:
    assert parse_robot_name("alice") is None


def test_artifact_fields_and_zero_times() -> None:
    artifact = parse_artifact(ARTIFACT, "u-alice/ml/torch", repository_pull_count=4)
    assert artifact.digest == DIGEST
    assert artifact.tag_names == ("v1", "latest")
    assert artifact.tags[1].immutable and artifact.tags[1].pull_time == ""
    assert artifact.size == 123456
    assert artifact.pull_time == ""  # Go's zero time = never pulled
    assert artifact.push_time == "2026-01-02T03:04:05.000Z"
    assert artifact.created == "2026-01-01T00:00:00Z"  # from the image config
    assert artifact.format == "oci"
    assert artifact.repository_pull_count == 4
    assert artifact.extra_attrs["architecture"] == "amd64"


def test_artifact_without_tags_or_annotations() -> None:
    bare = {k: v for k, v in ARTIFACT.items() if k not in ("tags", "annotations", "extra_attrs")}
    artifact = parse_artifact({**bare, "tags": None}, "u-alice/x")
    assert artifact.tags == ()
    assert dict(artifact.annotations) == {}
    assert artifact.created == artifact.push_time
    assert image_entries(artifact, "harbor.example.org") == []


def test_sif_artifact_format() -> None:
    sif = parse_artifact({**ARTIFACT, "media_type": SIF_CONFIG_MEDIA_TYPE}, "u-alice/x")
    assert sif.format == "sif"


def test_artifact_without_digest_is_an_error() -> None:
    with pytest.raises(RegistryError, match="without a digest"):
        parse_artifact({**ARTIFACT, "digest": ""}, "u-alice/x")


def test_image_entries_one_per_tag() -> None:
    artifact = parse_artifact(ARTIFACT, "u-alice/ml/torch", repository_pull_count=4)
    images = image_entries(artifact, "harbor.example.org")
    assert [i.tag for i in images] == ["v1", "latest"]
    assert {i.digest for i in images} == {DIGEST}
    first = images[0]
    assert first.reference == "harbor.example.org/u-alice/ml/torch:v1"
    assert first.category == "gpu"
    assert first.pull_time == "2026-01-03T00:00:00.000Z"
    assert first.tags == ("v1", "latest")
    assert list(first.to_dict()) == [
        "repository", "tag", "digest", "size_bytes", "created", "format", "category", "reference",
    ]


def test_project_and_repository() -> None:
    project = parse_project(
        {"project_id": 3, "name": "u-alice", "owner_name": "admin", "repo_count": 2,
         "metadata": {"public": "false"}, "creation_time": "2026-01-01T00:00:00.000Z"}
    )
    assert project == HarborProject(3, "u-alice", False, "admin", 2, "2026-01-01T00:00:00.000Z")
    repo = parse_repository({"id": 1, "project_id": 3, "name": "u-alice/ml/torch",
                             "artifact_count": 2, "pull_count": 17})
    assert (repo.project, repo.pull_count, repo.artifact_count) == ("u-alice", 17, 2)


def test_quota_shapes() -> None:
    project = HarborProject(3, "u-alice")
    # /quotas item; older Harbor also sends a "count" resource
    quota = parse_quota(
        {"id": 9, "ref": {"id": 3, "name": "u-alice", "owner_name": "admin"},
         "hard": {"storage": 1000, "count": -1}, "used": {"storage": 400, "count": 3}},
        project,
    )
    assert (quota.hard_bytes, quota.used_bytes, quota.free_bytes) == (1000, 400, 600)
    assert quota.allows(600) and not quota.allows(601)
    unlimited = parse_quota({"hard": {"storage": -1}, "used": {"storage": 10**15}}, project)
    assert unlimited.unlimited and unlimited.free_bytes is None and unlimited.allows(10**18)


def test_quota_already_over_the_limit() -> None:
    quota = ProjectQuota(3, "u-alice", hard_bytes=100, used_bytes=150)
    assert quota.free_bytes == 0 and not quota.allows(0)


def test_non_numeric_size_is_an_error() -> None:
    with pytest.raises(RegistryError, match="non-numeric size"):
        parse_artifact({**ARTIFACT, "size": "big"}, "u-alice/x")


def test_repository_path_encodes_slashes_twice() -> None:
    assert repository_path("u-alice/torch") == "/projects/u-alice/repositories/torch"
    assert repository_path("u-alice/ml/torch") == "/projects/u-alice/repositories/ml%252Ftorch"
    assert repository_path("g/a/b/c") == "/projects/g/repositories/a%252Fb%252Fc"
    with pytest.raises(NotFound):
        repository_path("no-project")


def test_next_link_in_harbors_format() -> None:
    # lib/link.go joins links with " , " and base.go puts relative URLs in them
    header = (
        '</api/v2.0/projects/p/repositories?page=1&page_size=100>; rel="prev" , '
        '</api/v2.0/projects/p/repositories?page=3&page_size=100>; rel="next"'
    )
    assert next_link(header) == "/api/v2.0/projects/p/repositories?page=3&page_size=100"
    assert next_link('</x?page=1>; rel="prev"') is None
    assert next_link("") is None


def test_artifact_dataclass_defaults_are_empty() -> None:
    artifact = HarborArtifact("u-alice/x", DIGEST)
    assert artifact.tags == () and dict(artifact.extra_attrs) == {} and artifact.format == "oci"
