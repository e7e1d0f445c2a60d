"""HarborClient against the contract fake of Harbor's API v2.0 (tests/support/harbor_server.py).

Harbor cannot run here; the fake follows the published swagger and the Harbor source
behaviours its docstring lists. What these tests prove is that the client speaks that
contract: paths, double encoding, paging, errors, auth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from core.errors import ConfigError, NotFound, PermissionDenied, RegistryError
from registry.auth import Credentials
from registry.harbor import HarborClient
from registry.oras import SIF_CONFIG_MEDIA_TYPE
from site_configs.schema import RegistrySection
from tests.support.harbor_server import (
    FakeArtifact,
    FakeRobot,
    HarborState,
    RunningHarbor,
    project_robot,
    running_harbor,
    system_robot,
)
from tests.support.registry_server import free_port

ALICE_ROBOT = "robot$u-alice+imgsave"
SYSTEM_ROBOT = "robot$imgsave-svc"
SECRET = "Robot-Secret-1"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


@pytest.fixture
def state() -> HarborState:
    state = HarborState()
    state.add_robot(project_robot("u-alice", SECRET))
    state.add_robot(system_robot("imgsave-svc", SECRET))
    alice = state.add_project("u-alice", hard_bytes=10_000)
    alice.add_image("torch-env", FakeArtifact(digest(1), 1000, ["v1"]), pull_count=3)
    state.add_project("u-bob", hard_bytes=-1)
    return state


@pytest.fixture
def harbor(state: HarborState) -> Iterator[RunningHarbor]:
    with running_harbor(state) as running:
        yield running


def client(harbor: RunningHarbor, user: str = ALICE_ROBOT, secret: str = SECRET,
           rule: str = "u-{user}") -> HarborClient:
    section = RegistrySection.model_validate(
        {"kind": "harbor", "url": harbor.url, "auth": "basic", "namespace": rule}
    )
    return HarborClient.from_section(section, Credentials(user, secret))


def requested(harbor: RunningHarbor, method: str = "GET") -> list[str]:
    return [raw for m, raw, _ in harbor.state.requests if m == method]


# --- listing ---------------------------------------------------------------------------


def test_list_images_of_a_user(harbor: RunningHarbor) -> None:
    with client(harbor) as harbor_client:
        images = harbor_client.list_images("alice")
    assert [(i.repository, i.tag, i.digest) for i in images] == [
        ("u-alice/torch-env", "v1", digest(1))
    ]
    image = images[0]
    assert image.size_bytes == 1000
    assert image.reference == f"{harbor.host}/u-alice/torch-env:v1"
    assert image.repository_pull_count == 3
    assert image.pull_time == ""  # never pulled
    assert image.push_time == "2026-01-02T03:04:05.000Z"
    # every API request carried the robot's credentials
    assert {who for _, _, who in harbor.state.requests} == {ALICE_ROBOT}


def test_paging_over_several_pages(harbor: RunningHarbor, state: HarborState) -> None:
    alice = state.projects["u-alice"]
    for n in range(2, 232):  # 231 repositories: pages of 100, 100, 31
        alice.add_image(f"env-{n:03d}", FakeArtifact(digest(n), 10, [f"t{n}"]))
    big = alice.add_image("many", FakeArtifact(digest(5000), 1, ["a0"]))
    for n in range(1, 150):  # 150 artifacts in one repository: 2 pages
        alice.add_image("many", FakeArtifact(digest(5000 + n), 1, [f"a{n}"]))
    with client(harbor) as harbor_client:
        repos = harbor_client.list_repositories("u-alice")
        artifacts = harbor_client.list_artifacts("u-alice/many")
    assert len(repos) == 232 and len({r.name for r in repos}) == 232
    assert len(artifacts) == 150 and artifacts[0].digest == big.digest
    pages = [parse_qs(urlsplit(r).query) for r in requested(harbor) if "/repositories?" in r]
    assert [(p["page"], p["page_size"]) for p in pages] == [
        (["1"], ["100"]), (["2"], ["100"]), (["3"], ["100"])
    ]
    artifact_pages = [r for r in requested(harbor) if "/many/artifacts" in r]
    assert len(artifact_pages) == 2
    assert all("with_tag=true" in r for r in artifact_pages)  # kept across the Link


def test_repository_with_slashes(harbor: RunningHarbor, state: HarborState) -> None:
    state.projects["u-alice"].add_image(
        "ml/vision/torch", FakeArtifact(digest(7), 77, ["v2"]), pull_count=1
    )
    with client(harbor) as harbor_client:
        images = harbor_client.list_images("alice")
        artifact = harbor_client.get_artifact("u-alice/ml/vision/torch", "v2")
        deleted = harbor_client.delete_image("alice", "u-alice/ml/vision/torch", "v2")
    assert ("u-alice/ml/vision/torch", "v2") in [(i.repository, i.tag) for i in images]
    assert artifact is not None and artifact.digest == digest(7)
    assert deleted == digest(7)
    paths = [urlsplit(r).path for r in requested(harbor) + requested(harbor, "DELETE")]
    assert "/api/v2.0/projects/u-alice/repositories/ml%252Fvision%252Ftorch/artifacts" in paths
    assert any(p.endswith("ml%252Fvision%252Ftorch/artifacts/" + digest(7)) for p in paths)


def test_artifact_with_several_tags(harbor: RunningHarbor, state: HarborState) -> None:
    state.projects["u-alice"].add_image(
        "jupyter",
        FakeArtifact(
            digest(8), 500, ["v1", "v1.0", "latest"],
            annotations={"io.imgsave.category": "gpu",
                         "org.opencontainers.image.created": "2026-02-03T04:05:06Z"},
        ),
    )
    with client(harbor) as harbor_client:
        images = [i for i in harbor_client.list_images("alice") if i.repository.endswith("jupyter")]
        (artifact,) = harbor_client.list_artifacts("u-alice/jupyter")
    assert [i.tag for i in images] == ["latest", "v1", "v1.0"]
    assert {i.digest for i in images} == {digest(8)}
    assert all(i.tags == ("v1", "v1.0", "latest") for i in images)
    assert images[0].category == "gpu" and images[0].created == "2026-02-03T04:05:06Z"
    assert artifact.tag_names == ("v1", "v1.0", "latest")


def test_sif_images_are_marked(harbor: RunningHarbor, state: HarborState) -> None:
    state.projects["u-alice"].add_image(
        "sif/env", FakeArtifact(digest(9), 900, ["v1"], media_type=SIF_CONFIG_MEDIA_TYPE)
    )
    with client(harbor) as harbor_client:
        formats = {i.repository: i.format for i in harbor_client.list_images("alice")}
    assert formats == {"u-alice/sif/env": "sif", "u-alice/torch-env": "oci"}


def test_group_projects_list_only_the_users_namespace(
    harbor: RunningHarbor, state: HarborState
) -> None:
    phys = state.add_project("g-phys")
    phys.add_image("alice/env", FakeArtifact(digest(20), 1, ["v1"]))
    phys.add_image("alice2/env", FakeArtifact(digest(21), 1, ["v1"]))
    phys.add_image("shared", FakeArtifact(digest(22), 1, ["v1"]))
    with client(harbor, SYSTEM_ROBOT, rule="g-{group}/{user}") as harbor_client:
        assert harbor_client.project_name("alice", "phys") == "g-phys"
        images = harbor_client.list_images("alice", group="phys")
    assert [i.repository for i in images] == ["g-phys/alice/env"]


def test_empty_project(harbor: RunningHarbor) -> None:
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        assert harbor_client.list_images("bob") == []
        assert harbor_client.list_artifacts("u-bob/nothing") == []


# --- deleting --------------------------------------------------------------------------


def test_delete_image_deletes_the_artifact(harbor: RunningHarbor, state: HarborState) -> None:
    alice = state.projects["u-alice"]
    alice.add_image("torch-env", FakeArtifact(digest(2), 200, ["v2", "stable"]))
    with client(harbor) as harbor_client:
        deleted = harbor_client.delete_image("alice", "u-alice/torch-env", "v2")
        left = [(i.tag, i.digest) for i in harbor_client.list_images("alice")]
        assert harbor_client.get_artifact("u-alice/torch-env", "stable") is None
    assert deleted == digest(2)
    assert left == [("v1", digest(1))]  # "stable" went with its artifact, v1 stayed
    assert alice.used_bytes == 1000
    # deleted by digest, so a tag moved in between cannot take another image along
    assert [urlsplit(r).path.rsplit("/", 1)[1] for r in requested(harbor, "DELETE")] == [
        digest(2)
    ]


def test_delete_image_outside_the_namespace_is_refused(harbor: RunningHarbor) -> None:
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        with pytest.raises(PermissionDenied, match="outside your namespace"):
            harbor_client.delete_image("alice", "u-bob/torch-env", "v1")
    assert requested(harbor, "DELETE") == []


def test_delete_missing_image(harbor: RunningHarbor) -> None:
    with client(harbor) as harbor_client:
        with pytest.raises(NotFound, match="does not exist"):
            harbor_client.delete_image("alice", "torch-env", "v9")
        with pytest.raises(NotFound, match="not found"):
            harbor_client.delete_artifact("u-alice/torch-env", digest(99))


def test_delete_immutable_artifact(harbor: RunningHarbor, state: HarborState) -> None:
    state.projects["u-alice"].add_image(
        "frozen", FakeArtifact(digest(30), 5, ["v1"], immutable=True)
    )
    with client(harbor) as harbor_client:
        with pytest.raises(RegistryError, match="immutable") as caught:
            harbor_client.delete_image("alice", "frozen", "v1")
    assert not caught.value.retryable


# --- projects --------------------------------------------------------------------------


def test_get_project_picks_the_exact_name(harbor: RunningHarbor, state: HarborState) -> None:
    state.add_project("u-al")
    state.add_project("u-alice2")
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        project = harbor_client.get_project("u-al")
        missing = harbor_client.get_project("u-nobody")
    assert project is not None and project.name == "u-al"
    assert missing is None


def test_project_hidden_from_the_robot(harbor: RunningHarbor, state: HarborState) -> None:
    state.add_robot(FakeRobot("robot$imgsave-ro", SECRET, {"u-bob": {"repository:list"}},
                              system=True))
    with client(harbor, "robot$imgsave-ro") as harbor_client:
        with pytest.raises(PermissionDenied, match="not a member"):
            harbor_client.get_project("u-alice")


def test_ensure_project_creates_once(harbor: RunningHarbor, state: HarborState) -> None:
    state.default_storage_limit = 50_000
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        created = harbor_client.ensure_project("u-carol")
        again = harbor_client.ensure_project("u-carol")
        quota = harbor_client.project_quota("u-carol")
    assert created == again and created.name == "u-carol" and not created.public
    assert len(requested(harbor, "POST")) == 1
    assert (quota.hard_bytes, quota.used_bytes) == (50_000, 0)


def test_project_robot_cannot_create_projects(harbor: RunningHarbor, state: HarborState) -> None:
    state.add_robot(project_robot("u-dave", SECRET))
    with client(harbor, "robot$u-dave+imgsave") as harbor_client:
        with pytest.raises(PermissionDenied, match="Only system level robot"):
            harbor_client.ensure_project("u-dave")


def test_project_robot_is_kept_to_its_project(harbor: RunningHarbor) -> None:
    with client(harbor) as harbor_client:
        with pytest.raises(PermissionDenied, match="belongs to Harbor project u-alice"):
            harbor_client.list_images("bob")
    assert harbor.state.requests == []  # refused before asking Harbor


def test_missing_project_is_not_found(harbor: RunningHarbor) -> None:
    # Harbor answers 403 for a missing project; the client asks HEAD to tell the two apart.
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        with pytest.raises(NotFound, match="u-zoe does not exist"):
            harbor_client.list_images("zoe")
        with pytest.raises(NotFound, match="u-zoe does not exist"):
            harbor_client.check_quota("zoe", 1)
    assert ("HEAD", "/api/v2.0/projects?project_name=u-zoe", SYSTEM_ROBOT) in (
        harbor.state.requests
    )


def test_denied_project_stays_denied(harbor: RunningHarbor, state: HarborState) -> None:
    state.add_robot(FakeRobot("robot$imgsave-ro", SECRET, {"u-bob": {"repository:list"}},
                              system=True))
    with client(harbor, "robot$imgsave-ro") as harbor_client:
        with pytest.raises(PermissionDenied, match="denied list repositories of project u-alice"):
            harbor_client.list_repositories("u-alice")


# --- auth and failures -----------------------------------------------------------------


def test_wrong_robot_secret(harbor: RunningHarbor) -> None:
    with client(harbor, secret="Not-The-Secret-42") as harbor_client:
        with pytest.raises(PermissionDenied, match="did not accept the credentials") as caught:
            harbor_client.list_images("alice")
        with pytest.raises(PermissionDenied, match="robot secret"):
            harbor_client.check_quota("alice", 1)
    assert not caught.value.retryable
    assert "Not-The-Secret-42" not in caught.value.message and SECRET not in caught.value.message


def test_disabled_robot(harbor: RunningHarbor, state: HarborState) -> None:
    state.robots[ALICE_ROBOT].disabled = True
    with client(harbor) as harbor_client:
        with pytest.raises(PermissionDenied, match="did not accept"):
            harbor_client.project_exists("u-alice")


def test_robot_credentials_from_a_private_file(harbor: RunningHarbor, tmp_path: Path) -> None:
    path = tmp_path / "harbor-robot.json"
    path.write_text(json.dumps({"auths": {harbor.host: {"username": ALICE_ROBOT,
                                                        "password": SECRET}}}))
    os.chmod(path, 0o600)
    section = RegistrySection.model_validate(
        {"kind": "harbor", "url": harbor.url, "auth": "basic", "namespace": "u-{user}",
         "credentials_file": str(path)}
    )
    with HarborClient.from_section(section) as harbor_client:
        assert harbor_client.robot is not None and harbor_client.robot.project == "u-alice"
        # the OCI side (pushes) shares the URL and the robot credentials
        assert harbor_client.registry.base_url == harbor.url
        assert harbor_client.registry.credentials == Credentials(ALICE_ROBOT, SECRET)
        assert len(harbor_client.list_images("alice")) == 1
    os.chmod(path, 0o644)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        HarborClient.from_section(section)


def test_only_for_harbor_sites(harbor: RunningHarbor) -> None:
    section = RegistrySection.model_validate({"kind": "oci", "url": harbor.url})
    with pytest.raises(ConfigError, match="needs 'harbor'"):
        HarborClient.from_section(section, Credentials(ALICE_ROBOT, SECRET))


def test_harbor_down_is_retryable() -> None:
    section = RegistrySection.model_validate(
        {"kind": "harbor", "url": f"http://127.0.0.1:{free_port()}", "namespace": "u-{user}",
         "timeout_seconds": 5}
    )
    with HarborClient.from_section(section, Credentials(ALICE_ROBOT, SECRET)) as harbor_client:
        with pytest.raises(RegistryError, match="unreachable") as caught:
            harbor_client.list_images("alice")
    assert caught.value.retryable


@pytest.mark.parametrize("status", [502, 503, 500])
def test_harbor_behind_a_failing_proxy_is_retryable(
    harbor: RunningHarbor, state: HarborState, status: int
) -> None:
    state.fail_status = status
    with client(harbor) as harbor_client:
        with pytest.raises(RegistryError, match=f"HTTP {status}") as caught:
            harbor_client.check_quota("alice", 1)
    assert caught.value.retryable


def test_links_to_another_host_are_not_followed(harbor: RunningHarbor) -> None:
    with client(harbor) as harbor_client:
        with pytest.raises(RegistryError, match="another host"):
            harbor_client.api.request("GET", "http://198.51.100.7/api/v2.0/projects", "x")


def test_redirect_is_reported_not_followed(harbor: RunningHarbor, state: HarborState) -> None:
    state.fail_status = 301  # e.g. a proxy sending http:// to https://
    with client(harbor) as harbor_client:
        with pytest.raises(RegistryError, match="set registry.url") as caught:
            harbor_client.project_exists("u-alice")
    assert not caught.value.retryable
