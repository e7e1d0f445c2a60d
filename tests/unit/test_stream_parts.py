"""Streaming commit's pure parts, on output captured from real podman 4.3 on this VM.

``tests/captures/stream/``: ``podman container inspect`` of a running container,
``podman image inspect`` of an imported and of a pulled image, and the container's
line of ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from builder_jobs.engines import Docker, Nerdctl, Podman
from builder_jobs.streaming.base_image import base_cache_tag, candidates, parse_image_inspect
from builder_jobs.streaming.commit import image_config, image_manifest, stream_commit
from builder_jobs.streaming.overlay_layer import StreamingUnavailable
from builder_jobs.streaming.overlay_storage import check_overlay_mount, parse_overlay_container
from registry.manifests import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    parse_manifest,
    sha256_digest,
)
from registry.oci import RegistryClient
from registry.refs import ImageRef

FIXTURES = Path(__file__).resolve().parents[1] / "captures" / "stream"
UPPER = (
    "/var/lib/containers/storage/overlay/"
    "a248e9222a8e62748fb7455d90f59227160926e54e62c2167021106c5e975a01/diff"
)


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_container_inspect_gives_the_upper_dir_and_state() -> None:
    info = parse_overlay_container(_fixture("podman_container_inspect_overlay.json"))
    assert info.upper_dir == UPPER
    assert info.name == "sc-exp" and info.running and not info.paused
    assert info.image_id == "9448a0f2de7769c2146505204f9a40222260ded900dba7da5f2b5a0033cda34e"
    assert info.image_name == "localhost/imgsave-stream-base:exp"


def test_dockers_overlay2_inspect_gives_the_upper_dir_and_image() -> None:
    """Real ``docker container inspect`` (docker 20.10, overlay2) of a session container."""
    text = (FIXTURES.parent / "engines" / "docker_container_inspect_overlay2.json").read_text()
    info = parse_overlay_container(text)
    assert info.name == "jupyter-alice-dk" and info.running and not info.paused
    assert info.upper_dir.startswith("/var/lib/docker/overlay2/")
    assert info.upper_dir.endswith("/diff")
    assert info.image_id.startswith("9f1872570cce") and ":" not in info.image_id
    assert info.image_name == "localhost/imgsave-base:latest"  # Config.Image


@pytest.mark.parametrize(
    ("graph_driver", "reason"),
    [
        ({"Name": "vfs", "Data": {}}, "storage driver is 'vfs'"),
        ({"Name": "btrfs"}, "not overlay"),
        ({"Name": "overlay", "Data": {"LowerDir": "/x"}}, "no UpperDir"),
    ],
)
def test_other_storage_is_unavailable_with_a_reason(
    graph_driver: dict[str, object], reason: str
) -> None:
    data = json.loads(_fixture("podman_container_inspect_overlay.json"))
    data[0]["GraphDriver"] = graph_driver
    with pytest.raises(StreamingUnavailable, match=reason) as caught:
        parse_overlay_container(json.dumps(data))
    assert caught.value.reason and not caught.value.retryable


def test_a_paused_container_is_seen_as_paused() -> None:
    data = json.loads(_fixture("podman_container_inspect_overlay.json"))
    data[0]["State"].update(Status="paused", Paused=True)
    assert parse_overlay_container(json.dumps(data)).paused


def test_kernel_overlay_mount_is_accepted() -> None:
    check_overlay_mount(UPPER, _fixture("mountinfo_overlay_container.txt"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda line: line.replace(" - overlay ", " - fuse.fuse-overlayfs "), "fuse"),
        (lambda line: line.replace(",uuid=on", ",uuid=on,metacopy=on"), "metacopy=on"),
        (lambda line: line.replace(",uuid=on", ",redirect_dir=on"), "redirect_dir=on"),
        (lambda line: line.replace(",uuid=on", ",userxattr"), "userxattr"),
        (lambda line: line.replace("upperdir=", "upperdir=/elsewhere"), "not visible"),
    ],
)
def test_overlay_mounts_that_do_not_hold_the_whole_diff_are_refused(
    change: Callable[[str], str], reason: str
) -> None:
    line = _fixture("mountinfo_overlay_container.txt")
    with pytest.raises(StreamingUnavailable, match=reason):
        check_overlay_mount(UPPER, change(line))


def test_only_podman_and_docker_stream(tmp_path: Path) -> None:
    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("nothing may run")

    nerdctl = Nerdctl(command=("nerdctl",))
    client = RegistryClient("http://127.0.0.1:9")
    target = ImageRef("127.0.0.1:9", "alice/x", "v1")
    with pytest.raises(StreamingUnavailable, match="podman, docker and containerd, not nerdctl"):
        stream_commit("c", target, client, nerdctl, runner=never)  # type: ignore[arg-type]
    assert Docker(command=("docker",)).streams_overlay
    with pytest.raises(ValueError, match="needs a tag"):
        stream_commit("c", ImageRef("h", "alice/x"), client, Podman(command=("podman",)))


def test_image_inspect_gives_diff_ids_and_repo_digests() -> None:
    imported = parse_image_inspect(_fixture("podman_image_inspect_imported.json"))
    assert imported.id.startswith("9448a0f2")
    assert imported.diff_ids == (
        "sha256:c510a5e4e2404bf5818c45047272c8dfd7ac8c0c8692442e1db85fd932e96bab",
    )
    pulled = parse_image_inspect(_fixture("podman_image_inspect_pulled.json"), "x:1")
    assert pulled.name == "x:1"
    assert "127.0.0.1:5077/alice/base@sha256:" in pulled.repo_digests[0]


def test_base_candidates_are_on_the_target_registry_then_the_cache_tag() -> None:
    pulled = parse_image_inspect(
        _fixture("podman_image_inspect_pulled.json"), "127.0.0.1:5077/alice/base:exp"
    )
    found = candidates(pulled, "127.0.0.1:5077", "bob/saved")
    assert found == [
        ("alice/base", "sha256:bc4609b155c4788083c76389f39725b9193327d5af503080819561e8ef8a3271"),
        ("alice/base", "sha256:eb00d5f7ed9dcc9cafaa22de66e42071cdc7bdbfc6e0b5e2ac846fa458ce375b"),
        ("alice/base", "exp"),
        ("bob/saved", "imgsave-base-9448a0f2de7769c2"),
    ]
    # localhost/... names and other registries are never asked
    assert candidates(pulled, "harbor.example.org", "bob/saved") == [
        ("bob/saved", base_cache_tag(pulled.id))
    ]


def test_config_is_the_base_config_plus_one_layer_and_history() -> None:
    base = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
        "history": [{"created_by": "import"}],
    }
    config = image_config(base, "sha256:" + "2" * 64, "2026-01-02T03:04:05Z")
    assert config["rootfs"]["diff_ids"] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    assert config["history"][-1] == {
        "created": "2026-01-02T03:04:05Z",
        "created_by": "imgsave streaming commit",
    }
    assert config["config"] == base["config"] and config["created"] == "2026-01-02T03:04:05Z"
    assert base["rootfs"]["diff_ids"] == ["sha256:" + "1" * 64]  # type: ignore[index]


def test_manifest_is_oci_with_docker_layer_types_converted() -> None:
    config = Descriptor("sha256:" + "c" * 64, 321, OCI_CONFIG)
    layers = [
        Descriptor("sha256:" + "a" * 64, 10, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Descriptor("sha256:" + "b" * 64, 20, OCI_LAYER_ZSTD),
    ]
    raw = image_manifest(config, layers, {"io.imgsave.owner": "alice"})
    info = parse_manifest(raw, sha256_digest(raw))
    assert info.media_type == OCI_MANIFEST
    assert [layer.media_type for layer in info.layers] == [OCI_LAYER_GZIP, OCI_LAYER_ZSTD]
    assert info.total_size == 351
    assert dict(info.annotations) == {"io.imgsave.owner": "alice"}
    assert "annotations" not in json.loads(image_manifest(config, layers, {}))
