"""Annotations (pure) and the registry side of a save (real docker-registry, no podman)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from builder_jobs.annotations import SaveProvenance, annotate_manifest
from builder_jobs.image_config import ConfigRule, ContainerConfig, SavedConfig, saved_config
from builder_jobs.oci_save import RegistryTarget, fetch_manifest
from core.errors import RegistryError
from registry.manifests import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    sha256_digest,
)
from registry.oci import RegistryClient
from registry.refs import ImageRef
from tests.support.registry_server import RunningRegistry

PROVENANCE = SaveProvenance(
    created="2026-01-01T00:00:00Z",
    node="n1",
    job_id="77",
    owner="alice",
    category="gpu",
    request_id="abc",
    base_name="docker.io/library/busybox:latest",
)


def _docker_manifest() -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 10,
                "digest": "sha256:" + "a" * 64,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 20,
                    "digest": "sha256:" + "b" * 64,
                }
            ],
        }
    ).encode()


def test_provenance_annotations_skip_unknown_base_digest() -> None:
    notes = PROVENANCE.annotations()
    assert notes["io.imgsave.job-id"] == "77"
    assert notes["org.opencontainers.image.base.name"] == "docker.io/library/busybox:latest"
    assert "org.opencontainers.image.base.digest" not in notes


def test_annotate_oci_manifest_keeps_existing_annotations() -> None:
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": [],
         "annotations": {"keep": "me", "io.imgsave.owner": "mallory"}}
    ).encode()  # fmt: skip
    out = annotate_manifest(raw, OCI_MANIFEST, PROVENANCE.annotations())
    body = json.loads(out.body)
    assert out.media_type == OCI_MANIFEST
    assert body["annotations"]["keep"] == "me"
    assert body["annotations"]["io.imgsave.owner"] == "alice"  # ours win


def test_annotate_converts_docker_schema2_to_oci() -> None:
    out = annotate_manifest(_docker_manifest(), DOCKER_MANIFEST, {"k": "v"})
    body = json.loads(out.body)
    assert out.media_type == OCI_MANIFEST == body["mediaType"]
    assert body["config"]["mediaType"] == OCI_CONFIG
    assert body["layers"][0]["mediaType"] == OCI_LAYER_GZIP
    assert body["layers"][0]["digest"] == "sha256:" + "b" * 64  # same blobs
    assert body["annotations"] == {"k": "v"}


def test_annotate_index() -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert annotate_manifest(raw, "", {"k": "v"}).media_type == OCI_INDEX


@pytest.mark.parametrize(
    "raw, media_type",
    [(b"nope", OCI_MANIFEST), (b"[]", OCI_MANIFEST), (b"{}", "application/x-unknown")],
)
def test_annotate_refuses_non_manifests(raw: bytes, media_type: str) -> None:
    with pytest.raises(RegistryError):
        annotate_manifest(raw, media_type, {})


# --- against a real registry ------------------------------------------------------------


@pytest.fixture
def client(builder_registry: RunningRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(builder_registry.url) as c:
        yield c


def _push_image(client: RegistryClient, repo: str, tag: str, content: bytes) -> str:
    """Push a one-layer OCI image the way an engine would; returns the manifest digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "x": content.hex()}).encode()
    client.push_blob(repo, config, sha256_digest(config))
    client.push_blob(repo, content, sha256_digest(content))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config),
                       "digest": sha256_digest(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "size": len(content),
                        "digest": sha256_digest(content)}],
        }
    ).encode()  # fmt: skip
    return client.push_manifest(repo, tag, manifest, OCI_MANIFEST)


def _target(builder_registry: RunningRegistry, client: RegistryClient, repo: str) -> RegistryTarget:
    return RegistryTarget(client, ImageRef(builder_registry.host, repo, "v1"))


def test_annotate_replaces_and_deletes_the_unannotated_manifest(
    builder_registry: RunningRegistry, client: RegistryClient
) -> None:
    repo = "alice/annotate"
    target = _target(builder_registry, client, repo)
    target.snapshot()
    assert target.previous is None
    plain = _push_image(client, repo, "v1", b"layer-1")
    pushed = target.annotate(PROVENANCE.annotations())
    assert pushed.digest != plain
    assert client.manifest_digest(repo, "v1") == pushed.digest
    assert client.manifest_digest(repo, plain) is None
    assert pushed.new_bytes == pushed.image_bytes  # one layer: all of it is new
    stored = fetch_manifest(client, repo, "v1")
    assert stored is not None and json.loads(stored.body)["annotations"]["io.imgsave.node"] == "n1"


def test_rollback_without_a_previous_tag_leaves_no_tag(
    builder_registry: RunningRegistry, client: RegistryClient
) -> None:
    repo = "alice/rollback-new"
    target = _target(builder_registry, client, repo)
    target.snapshot()
    _push_image(client, repo, "v1", b"half-done")
    target.rollback()
    assert client.manifest_digest(repo, "v1") is None
    assert client.list_tags(repo) == []


def test_rollback_restores_the_previous_manifest(
    builder_registry: RunningRegistry, client: RegistryClient
) -> None:
    repo = "alice/rollback-old"
    old = _push_image(client, repo, "v1", b"the user's earlier save")
    target = _target(builder_registry, client, repo)
    target.snapshot()
    new = _push_image(client, repo, "v1", b"the failed save")
    target.pushed_digests.append(new)
    target.rollback()
    assert client.manifest_digest(repo, "v1") == old
    assert client.manifest_digest(repo, new) is None
    assert target.warnings == []


def test_annotate_with_the_config_rule_replaces_the_engines_config_and_deletes_it(
    builder_registry: RunningRegistry, client: RegistryClient
) -> None:
    """The engine commit path: the engine pushed a docker-style config holding the
    container's FOO_TOKEN (in ``config`` and ``container_config``) and the owner label;
    after annotate the tag's config has neither, and the engine's config blob is gone."""
    repo = "alice/config-rule"
    target = _target(builder_registry, client, repo)
    target.snapshot()
    engine_config = json.dumps({
        "architecture": "amd64", "os": "linux", "docker_version": "20.10.24",
        "config": {"Env": ["PATH=/bin", "FOO_TOKEN=s3cr3t"], "Cmd": ["sleep", "infinity"],
                   "Labels": {"imgsave.owner": "", "team": "bio"}},
        "container_config": {"Env": ["PATH=/bin", "FOO_TOKEN=s3cr3t"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    }).encode()  # fmt: skip
    old = sha256_digest(engine_config)
    client.push_blob(repo, engine_config, old)
    client.push_blob(repo, b"layer", sha256_digest(b"layer"))
    manifest = json.loads(_docker_manifest())
    manifest["config"].update(digest=old, size=len(engine_config))
    manifest["layers"][0].update(digest=sha256_digest(b"layer"), size=5)
    client.push_manifest(repo, "v1", json.dumps(manifest).encode(), DOCKER_MANIFEST)
    container = ContainerConfig(cmd=("sleep", "infinity"), env=("PATH=/bin", "FOO_TOKEN=s3cr3t"),
                                labels={"imgsave.owner": "alice", "team": "bio"})

    pushed = target.annotate(PROVENANCE.annotations(),
                             config=lambda c: saved_config(c, container, ConfigRule()))
    assert pushed.dropped_env == ("FOO_TOKEN",)
    stored = fetch_manifest(client, repo, "v1")
    assert stored is not None and stored.digest == pushed.digest
    body = json.loads(stored.body)
    assert body["config"]["mediaType"] == OCI_CONFIG and body["config"]["digest"] != old
    config = client.get_blob(repo, body["config"]["digest"])
    assert b"FOO_TOKEN" not in config and b"s3cr3t" not in config and b"imgsave" not in config
    assert json.loads(config)["config"] == {"Env": ["PATH=/bin"], "Cmd": ["sleep", "infinity"],
                                            "Labels": {"team": "bio"}}
    assert not client.blob_exists(repo, old)  # the engine's config went with its manifest
    assert target.warnings == []


def test_annotate_keeps_an_engine_config_the_rule_does_not_change(
    builder_registry: RunningRegistry, client: RegistryClient
) -> None:
    repo = "alice/config-same"
    target = _target(builder_registry, client, repo)
    target.snapshot()
    _push_image(client, repo, "v1", b"layer")
    plain = fetch_manifest(client, repo, "v1")
    assert plain is not None
    config_digest = json.loads(plain.body)["config"]["digest"]
    pushed = target.annotate({}, config=lambda c: SavedConfig(dict(c)))
    stored = fetch_manifest(client, repo, "v1")
    assert stored is not None and pushed.dropped_env == ()
    assert json.loads(stored.body)["config"]["digest"] == config_digest
    assert client.blob_exists(repo, config_digest)  # still the image's config: kept
