"""The node entry point for real: podman commits and pushes to a real docker-registry.

``python -m builder_jobs.node_save SPEC`` runs as a subprocess, as the job script runs
it (no scheduler: $IMGSAVE_NODE and $IMGSAVE_JOB_ID, which the job script exports, are
set by hand).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from builder_jobs import annotations as ann
from builder_jobs.events import EventLog, FailureKind, Stage, read_result
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE
from registry.oci import RegistryClient
from tests.support.builder_fixtures import (
    needs_podman,
    podman,
    registry_tags,
    run_node_save,
    write_site_config,
    write_spec,
)
from tests.support.registry_server import RunningRegistry

pytestmark = [pytest.mark.podman, needs_podman]

NODE_ENV = {"IMGSAVE_NODE": "n7", "IMGSAVE_JOB_ID": "4242"}
MakeContainer = Callable[[str], str]


def _repo(user: str = "alice") -> str:
    return f"{user}/saved-{uuid.uuid4().hex[:8]}"


def _stages(spec_path: Path) -> list[Stage]:
    return [e.stage for e in EventLog(spec_path.parent / EVENTS_FILE).read()]


def _temp_image_exists(spec_path: Path) -> bool:
    request_id = spec_path.parent.name
    result = podman("image", "exists", f"localhost/imgsave-tmp:{request_id}", check=False)
    return result.returncode == 0


def _revisions(builder_registry: RunningRegistry, repository: str) -> list[str]:
    """Manifest revisions the registry still links for the repository (on its disk)."""
    root = builder_registry.storage / "docker/registry/v2/repositories" / repository
    revisions = root / "_manifests/revisions/sha256"
    return sorted(p.name for p in revisions.iterdir() if (p / "link").exists())


def test_save_push_pull_run(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    container = make_session_container("alice")
    podman("exec", container, "sh", "-c", "echo hi > /root/added.txt")
    repo = _repo()
    target = f"{builder_registry.host}/{repo}:v1"
    site = write_site_config(tmp_path, builder_registry.url)
    spec_path = write_spec(
        tmp_path, user="alice", container=container, target=target, site_config=site
    )

    done = run_node_save(spec_path, NODE_ENV)

    assert done.returncode == 0, done.stderr
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.ok
    assert result.reference == target
    assert result.digest.startswith("sha256:")
    assert result.commit_method == "engine-commit"
    assert 0 < result.size_bytes < result.image_bytes
    assert {"locating", "committing", "pushing"} <= set(result.seconds)
    assert _stages(spec_path) == [
        Stage.LOCATING, Stage.COMMITTING, Stage.PUSHING, Stage.PUSHING, Stage.DONE,
    ]  # fmt: skip
    assert not _temp_image_exists(spec_path)
    assert registry_tags(builder_registry, repo) == ["v1"]
    # Only the annotated manifest is left: the un-annotated one was deleted.
    assert _revisions(builder_registry, repo) == [result.digest.split(":", 1)[1]]

    with RegistryClient(builder_registry.url) as client:
        manifest = client.manifest(repo, "v1")
    assert manifest is not None and manifest.digest == result.digest
    notes = manifest.annotations
    assert notes[ann.NODE] == "n7"
    assert notes[ann.JOB_ID] == "4242"
    assert notes[ann.OWNER] == "alice"
    assert notes[ann.CATEGORY] == "cpu"
    assert notes[ann.REQUEST_ID] == spec_path.parent.name
    assert notes[ann.BASE_NAME] == "localhost/imgsave-base:latest"
    assert notes[ann.BASE_DIGEST].startswith("sha256:")
    assert notes[ann.CREATED].endswith("Z")

    try:
        podman("pull", "--tls-verify=false", target)
        run = podman("run", "--rm", "--network", "none", target, "cat", "/root/added.txt")
        assert run.stdout == "hi\n"
        labels = podman("image", "inspect", "--format", "{{json .Labels}}", target).stdout
        # imgsave's owner label is not in the image (the config rule), so containers
        # others start from it are not "theirs"
        assert "imgsave.owner" not in (json.loads(labels) or {})
    finally:
        podman("rmi", "-f", target, check=False)


def test_wrong_owner_is_refused_and_nothing_is_pushed(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    container = make_session_container("bob")
    repo = _repo()
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{builder_registry.host}/{repo}:v1",
        site_config=write_site_config(tmp_path, builder_registry.url),
    )

    done = run_node_save(spec_path, NODE_ENV)

    assert done.returncode == 1
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.NOT_OWNER
    assert "imgsave.owner=alice" in result.error
    for text in (done.stderr, result.error, (spec_path.parent / EVENTS_FILE).read_text()):
        assert "bob" not in text  # never reveal the real owner
    assert done.stderr.strip() == result.error and "\n" not in done.stderr.strip()
    assert registry_tags(builder_registry, repo) == []
    assert _stages(spec_path) == [Stage.LOCATING, Stage.CLEANING, Stage.FAILED]


@pytest.mark.parametrize("env, node", [(NODE_ENV, "n7"), ({}, "n1")])
def test_missing_container_message(
    builder_registry: RunningRegistry, tmp_path: Path, env: dict[str, str], node: str
) -> None:
    name = f"no-such-{uuid.uuid4().hex[:8]}"
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=name,
        target=f"{builder_registry.host}/{_repo()}:v1",
        site_config=write_site_config(tmp_path, builder_registry.url),
        node="n1",
    )

    done = run_node_save(spec_path, env)

    assert done.returncode == 1
    assert done.stderr == f"container {name} not found on {node}\n"
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.CONTAINER_NOT_FOUND
    assert result.error == f"container {name} not found on {node}"


def test_registry_down_fails_with_registry_kind(
    make_session_container: MakeContainer, tmp_path: Path
) -> None:
    from tests.support.registry_server import free_port

    closed = f"127.0.0.1:{free_port()}"
    container = make_session_container("alice")
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{closed}/{_repo()}:v1",
        site_config=write_site_config(tmp_path, f"http://{closed}"),
    )

    done = run_node_save(spec_path, NODE_ENV)

    assert done.returncode == 1
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.REGISTRY
    assert "unreachable" in result.error and closed in result.error
    assert not _temp_image_exists(spec_path)
    assert _stages(spec_path) == [Stage.LOCATING, Stage.CLEANING, Stage.FAILED]


def test_refused_push_leaves_no_tag_and_no_temp_image(
    builder_pull_only_registry: RunningRegistry,
    make_session_container: MakeContainer,
    tmp_path: Path,
) -> None:
    """The registry answers reads but refuses pushes: the commit happened, then cleanup."""
    container = make_session_container("alice")
    repo = _repo()
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{builder_pull_only_registry.host}/{repo}:v1",
        site_config=write_site_config(tmp_path, builder_pull_only_registry.url),
    )

    done = run_node_save(spec_path, NODE_ENV)

    assert done.returncode == 1, done.stdout
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.REGISTRY
    assert result.error.startswith(f"registry: {builder_pull_only_registry.host}/{repo}:v1: ")
    assert not _temp_image_exists(spec_path)
    assert _stages(spec_path) == [
        Stage.LOCATING, Stage.COMMITTING, Stage.PUSHING, Stage.CLEANING, Stage.FAILED,
    ]  # fmt: skip
    assert not (
        builder_pull_only_registry.storage / "docker/registry/v2/repositories" / repo
    ).exists()


def test_target_outside_users_namespace_is_refused(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    container = make_session_container("alice")
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{builder_registry.host}/bob/stolen:v1",
        site_config=write_site_config(tmp_path, builder_registry.url),
    )

    done = run_node_save(spec_path, NODE_ENV)

    assert done.returncode == 1
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.INVALID
    assert registry_tags(builder_registry, "bob/stolen") == []


def test_unreadable_spec_exits_2(tmp_path: Path) -> None:
    spec_path = tmp_path / "req" / "spec.json"
    spec_path.parent.mkdir()
    spec_path.write_text("{not json")

    done = run_node_save(spec_path)

    assert done.returncode == 2
    assert "malformed save spec" in done.stderr
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.INVALID


def test_image_over_the_size_limit_is_not_pushed(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    container = make_session_container("alice")
    repo = _repo()
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{builder_registry.host}/{repo}:v1",
        site_config=write_site_config(tmp_path, builder_registry.url, max_image_bytes=1000),
    )

    done = run_node_save(spec_path, NODE_ENV)

    assert done.returncode == 1
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.SIZE_LIMIT
    assert "over this site's limit of 1000" in result.error
    assert not _temp_image_exists(spec_path)
    assert registry_tags(builder_registry, repo) == []
