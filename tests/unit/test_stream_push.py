"""Streamed layer upload against a real docker-registry: hashes, codecs, failures."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from builder_jobs.streaming.codecs import Codec, PigzCodec, ZlibGzipCodec, ZstdCodec, codec_for
from builder_jobs.streaming.layer_push import _Buffer, push_layer
from builder_jobs.streaming.overlay_layer import layer_entries, tar_chunks
from core.errors import ConfigError
from registry.manifests import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from registry.oci import RegistryClient
from tests.support.registry_server import RunningRegistry

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="needs docker-registry"
)


def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    for i in range(40):
        (root / "pkg" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 200)
    (root / "pkg" / "blob.so").write_bytes(os.urandom(2 * 1024 * 1024))
    return root


def _tar(root: Path) -> bytes:
    return b"".join(tar_chunks(layer_entries(str(root))))


CODECS: list[Codec] = [ZstdCodec(), ZlibGzipCodec()]
if shutil.which("pigz"):
    CODECS.append(PigzCodec(str(shutil.which("pigz"))))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
def test_layer_lands_in_the_registry_with_both_digests(
    codec: Codec, tmp_path: Path, builder_registry: RunningRegistry
) -> None:
    tree = _tree(tmp_path / "upper")
    repo = f"alice/layer-{uuid.uuid4().hex[:8]}"
    read_done = threading.Event()
    sent: list[int] = []
    with RegistryClient(builder_registry.url) as client:
        pushed = push_layer(
            client,
            repo,
            tar_chunks(layer_entries(str(tree)), chunk_size=256 * 1024),
            codec,
            on_read_done=read_done.set,
            progress=sent.append,
        )
        blob = client.get_blob(repo, pushed.digest)  # checks the digest too
    expected_tar = _tar(tree)
    if codec.media_type == OCI_LAYER_ZSTD:
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    else:
        assert codec.media_type == OCI_LAYER_GZIP
        tar = gzip.decompress(blob)
    assert tar == expected_tar
    assert pushed.diff_id == "sha256:" + hashlib.sha256(expected_tar).hexdigest()
    assert pushed.size == len(blob) and pushed.tar_size == len(expected_tar)
    assert read_done.is_set() and sent[-1] == len(blob)
    assert 0 < pushed.read_seconds <= pushed.seconds
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert len(archive.getmembers()) == 42


def test_a_failing_read_raises_its_own_error_and_cancels_the_upload(
    builder_registry: RunningRegistry,
) -> None:
    def broken_tar() -> Iterator[bytes]:
        for _ in range(8):  # enough that compressed bytes reach the registry first
            yield os.urandom(1024 * 1024)
        raise PermissionError(13, "Permission denied", "/var/lib/containers/x")

    repo = f"alice/broken-{uuid.uuid4().hex[:8]}"
    with RegistryClient(builder_registry.url) as client:
        # not a RegistryError "unreachable": the read failed, not the network
        with pytest.raises(PermissionError):
            push_layer(client, repo, broken_tar(), ZstdCodec())
        assert client.list_tags(repo) == []
    assert list(builder_registry.storage.rglob(f"{repo}/_uploads/*"))  # it had started
    # The half upload was cancelled (DELETE): distribution 2.8 removes its data and
    # leaves only an empty hash-state directory behind.
    assert list(builder_registry.storage.rglob(f"{repo}/_uploads/*/data")) == []
    assert list(builder_registry.storage.rglob(f"{repo}/_uploads/*/startedat")) == []


def test_codec_names() -> None:
    assert isinstance(codec_for("zstd", 3), ZstdCodec) and codec_for("zstd", 3).level == 3  # type: ignore[attr-defined]
    gzip_codec = codec_for("gzip")
    assert gzip_codec.media_type == OCI_LAYER_GZIP
    assert isinstance(gzip_codec, PigzCodec if shutil.which("pigz") else ZlibGzipCodec)
    with pytest.raises(ConfigError, match="valid: gzip, zstd"):
        codec_for("lz4")


def test_pigz_failure_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "pigz"
    fake.write_text("#!/bin/sh\necho 'pigz: out of cheese' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(Exception, match="out of cheese"):
        list(PigzCodec(str(fake)).compress(iter([b"data"] * 10)))


def test_a_one_byte_buffer_still_uploads_everything(
    tmp_path: Path, builder_registry: RunningRegistry
) -> None:
    tree = _tree(tmp_path / "upper")
    with RegistryClient(builder_registry.url) as client:
        pushed = push_layer(
            client, "alice/tight", tar_chunks(layer_entries(str(tree))), ZstdCodec(), buffer_bytes=1
        )
        blob = client.get_blob("alice/tight", pushed.digest)
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == _tar(tree)


def test_buffer_blocks_when_full() -> None:
    buffer = _Buffer(limit=10)
    assert buffer.put(b"a" * 8, 8)
    done = threading.Event()

    def put_more() -> None:
        if buffer.put(b"b" * 8, 8):
            done.set()

    thread = threading.Thread(target=put_more)
    thread.start()
    thread.join(0.2)
    assert not done.is_set()  # 8 + 8 > 10: waits for the uploader
    assert buffer.get() == b"a" * 8
    thread.join(2)
    assert done.is_set() and buffer.get() == b"b" * 8
    blocked = threading.Thread(target=lambda: buffer.put(b"c" * 20, 20) and buffer.put(b"d", 1))
    blocked.start()
    buffer.close()
    blocked.join(2)
    assert not blocked.is_alive()
