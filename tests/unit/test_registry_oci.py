"""RegistryClient against a real docker-registry (distribution 2.8) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.errors import InvalidRequest, NotFound, RegistryError
from registry.manifests import (
    CREATED_ANNOTATION,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    sha256_digest,
)
from registry.oci import RegistryClient
from site_configs.schema import RegistrySection
from tests.support.registry_server import (
    REGISTRY_BINARY,
    RunningRegistry,
    free_port,
    running_registry,
)

pytestmark = pytest.mark.skipif(
    not os.access(REGISTRY_BINARY, os.X_OK) or shutil.which("docker-registry") is None,
    reason="Debian's docker-registry is not installed (scripts/cluster.sh installs it)",
)


@dataclass(frozen=True)
class SampleImage:
    config: bytes
    layers: tuple[bytes, ...]
    manifest: bytes
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(
    seed: str,
    *,
    layers: int = 2,
    created: str = "2026-01-02T03:04:05Z",
    annotated: bool = False,
    media_type: str = OCI_MANIFEST,
) -> SampleImage:
    """A small image whose bytes depend on ``seed`` (layers need not be real tars here)."""
    config = json.dumps(
        {"created": created, "architecture": "amd64", "os": "linux", "seed": seed}
    ).encode()
    blobs = tuple(f"{seed} layer {i} ".encode() * (100 + i) for i in range(layers))
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(b), "size": len(b)} for b in blobs
        ],
    }
    if annotated:
        body["annotations"] = {CREATED_ANNOTATION: "2030-12-31T00:00:00Z", "x": "y"}
    return SampleImage(config, blobs, json.dumps(body).encode(), media_type)


def push_image(client: RegistryClient, repo: str, tag: str, image: SampleImage) -> str:
    for blob in image.blobs():
        client.push_blob(repo, blob, sha256_digest(blob))
    return client.push_manifest(repo, tag, image.manifest, image.media_type)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def client(registry: RunningRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.url, timeout=10) as c:
        yield c


def test_ping(client: RegistryClient) -> None:
    client.ping()


def test_push_then_read_back(client: RegistryClient) -> None:
    image = make_image("push")
    digest = push_image(client, "alice/torch-env", "v1", image)
    assert digest == image.digest
    assert "v1" in client.list_tags("alice/torch-env")
    info = client.manifest("alice/torch-env", "v1")
    assert info is not None
    assert info.digest == image.digest
    assert info.media_type == OCI_MANIFEST
    assert info.config_digest == sha256_digest(image.config)
    assert [layer.digest for layer in info.layers] == [sha256_digest(b) for b in image.layers]
    assert info.layers[0] == (sha256_digest(image.layers[0]), len(image.layers[0]), OCI_LAYER_GZIP)
    assert info.total_size == sum(len(b) for b in image.blobs())
    assert info.created == "2026-01-02T03:04:05Z"  # from the config blob
    assert client.manifest_digest("alice/torch-env", "v1") == image.digest
    by_digest = client.manifest("alice/torch-env", image.digest)
    assert by_digest is not None and by_digest.digest == image.digest
    assert client.get_blob("alice/torch-env", sha256_digest(image.config)) == image.config


def test_created_annotation_wins(client: RegistryClient) -> None:
    image = make_image("annotated", annotated=True)
    push_image(client, "alice/annotated", "v1", image)
    info = client.manifest("alice/annotated", "v1")
    assert info is not None
    assert info.created == "2030-12-31T00:00:00Z"
    assert info.annotations["x"] == "y"


def test_docker_v2_manifest(client: RegistryClient) -> None:
    image = make_image("docker", media_type=DOCKER_MANIFEST)
    push_image(client, "alice/dockerish", "v1", image)
    info = client.manifest("alice/dockerish", "v1")
    assert info is not None and info.media_type == DOCKER_MANIFEST
    assert info.digest == image.digest


def test_index_manifest(client: RegistryClient) -> None:
    child = make_image("child")
    child_digest = push_image(client, "alice/multi", "amd64", child)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": child_digest, "size": len(child.manifest)}
            ],
        }
    ).encode()
    client.push_manifest("alice/multi", "v1", index, OCI_INDEX)
    info = client.manifest("alice/multi", "v1")
    assert info is not None and info.is_index
    assert info.manifests[0].digest == child_digest
    assert info.total_size == 0 and info.layers == ()


def test_absent_things_are_none_or_empty(client: RegistryClient) -> None:
    assert client.list_tags("nobody/nothing") == []
    assert client.manifest("nobody/nothing", "v1") is None
    assert client.manifest_digest("nobody/nothing", "v1") is None
    assert client.blob_exists("nobody/nothing", sha256_digest(b"absent")) is False
    with pytest.raises(NotFound):
        client.get_blob("nobody/nothing", sha256_digest(b"absent"))


def test_push_blob_skips_existing(client: RegistryClient) -> None:
    blob = b"same bytes twice"
    assert client.push_blob("alice/skip", blob, sha256_digest(blob)) is True
    assert client.push_blob("alice/skip", blob, sha256_digest(blob)) is False
    assert client.blob_exists("alice/skip", sha256_digest(blob))


def test_chunked_push(client: RegistryClient) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(5)] + [b"", b"tail"]
    whole = b"".join(chunks)
    digest = sha256_digest(whole)
    assert client.push_blob("alice/chunked", iter(chunks), digest) is True
    assert client.get_blob("alice/chunked", digest) == whole


def test_chunked_push_wrong_digest_cancels(client: RegistryClient) -> None:
    wrong = sha256_digest(b"something else")
    with pytest.raises(InvalidRequest, match="but it was pushed as"):
        client.push_blob("alice/chunked-bad", iter([b"abc", b"def"]), wrong)
    assert client.blob_exists("alice/chunked-bad", wrong) is False


def test_monolithic_push_wrong_digest_refused(client: RegistryClient) -> None:
    with pytest.raises(InvalidRequest, match="does not match digest"):
        client.push_blob("alice/bad", b"abc", sha256_digest(b"abd"))


def test_manifest_digest_must_match_reference(client: RegistryClient) -> None:
    with pytest.raises(InvalidRequest, match="manifest digest is"):
        client.push_manifest("alice/x", sha256_digest(b"other"), b"{}", OCI_MANIFEST)


def test_manifest_needs_its_blobs(client: RegistryClient) -> None:
    image = make_image("orphan")
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        client.push_manifest("alice/orphan", "v1", image.manifest, OCI_MANIFEST)


def test_list_repositories_with_prefix_and_pages(
    client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for repo in ("carol/a", "carol/b/c", "carol2/x", "dave/y"):
        push_image(client, repo, "v1", make_image(repo, layers=1))
    monkeypatch.setattr("registry.oci.PAGE_SIZE", 2)  # force several Link pages
    everything = client.list_repositories()
    assert {"carol/a", "carol/b/c", "carol2/x", "dave/y"} <= set(everything)
    assert len(everything) == len(set(everything))
    assert client.list_repositories("carol") == ["carol/a", "carol/b/c"]
    assert client.list_repositories("carol/b/") == ["carol/b/c"]


def test_mount_blob_across_repositories(client: RegistryClient) -> None:
    image = make_image("base")
    push_image(client, "alice/base", "v1", image)
    layer = sha256_digest(image.layers[0])
    assert client.blob_exists("alice/derived", layer) is False
    assert client.mount_blob("alice/derived", layer, "alice/base") is True
    assert client.blob_exists("alice/derived", layer) is True
    absent = sha256_digest(b"never pushed")
    assert client.mount_blob("alice/derived", absent, "alice/base") is False
    assert client.blob_exists("alice/derived", absent) is False


def test_delete_by_digest(client: RegistryClient) -> None:
    image = make_image("del-digest")
    digest = push_image(client, "alice/del", "v1", image)
    client.delete_manifest("alice/del", digest)
    assert client.manifest("alice/del", digest) is None
    assert client.manifest("alice/del", "v1") is None
    with pytest.raises(NotFound):
        client.delete_manifest("alice/del", digest)


def test_delete_by_tag(client: RegistryClient) -> None:
    image = make_image("del-tag")
    digest = push_image(client, "alice/del2", "v1", image)
    assert client.delete_tag_or_digest("alice/del2", "v1") == digest
    assert client.manifest("alice/del2", "v1") is None
    with pytest.raises(NotFound, match="alice/del2:v1 does not exist"):
        client.delete_tag_or_digest("alice/del2", "v1")
    digest2 = push_image(client, "alice/del2", "v2", make_image("del-tag-2"))
    assert client.delete_tag_or_digest("alice/del2", digest2) == digest2


def test_delete_disabled(tmp_path: Path) -> None:
    with running_registry(tmp_path, delete_enabled=False) as running:
        with RegistryClient(running.url) as client:
            digest = push_image(client, "alice/keep", "v1", make_image("keep"))
            with pytest.raises(RegistryError, match="deletion is disabled on the registry"):
                client.delete_tag_or_digest("alice/keep", "v1")
            assert client.manifest("alice/keep", digest) is not None


def test_registry_down_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = RegistryClient(url, timeout=5)
    started = time.monotonic()
    with pytest.raises(RegistryError) as err:
        client.list_tags("alice/x")
    assert time.monotonic() - started < 5
    assert err.value.retryable is True
    assert err.value.message == f"registry at {url} is unreachable: Connection refused"


def test_unknown_host_is_retryable() -> None:
    client = RegistryClient("http://no-such-host.invalid:5000", timeout=5)
    with pytest.raises(RegistryError, match="is unreachable") as err:
        client.ping()
    assert err.value.retryable is True


def test_names_are_validated_before_any_request() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(InvalidRequest, match="part '..'"):
        client.list_tags("alice/../bob")
    with pytest.raises(InvalidRequest, match="tag 'v1/x' is invalid"):
        client.manifest("alice/x", "v1/x")
    with pytest.raises(InvalidRequest, match="digest 'sha256:zz' is invalid"):
        client.blob_exists("alice/x", "sha256:zz")


def test_from_section(registry: RunningRegistry) -> None:
    section = RegistrySection.model_validate(
        {"url": registry.url, "tls_verify": False, "timeout_seconds": 7}
    )
    with RegistryClient.from_section(section) as client:
        assert client.timeout == 7 and client.session.verify is False
        client.ping()
