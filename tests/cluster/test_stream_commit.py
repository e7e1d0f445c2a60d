"""Streaming commit for real: podman (host storage) and a real docker-registry.

A container from a busybox base gets every kind of change an overlay upper dir can
hold; the streamed image, pulled back into podman, must give the same file tree as the
running container and as ``podman commit`` + push + pull of the same container: paths,
types, modes, owners, file contents, mtimes, symlink targets, hard-link groups, device
numbers and the ``security.capability`` xattr.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from builder_jobs.engines import Podman
from builder_jobs.events import ProgressEvent, Stage
from builder_jobs.streaming.commit import ImageTooLarge, StreamResult, stream_commit
from core.errors import CommandFailed, RegistryError
from registry.manifests import OCI_LAYER_ZSTD
from registry.oci import RegistryClient
from registry.refs import ImageRef
from registry.retry import RetryPolicy
from tests.support.builder_fixtures import PODMAN, ULIMITS, needs_podman, podman
from tests.support.cutting_proxy import CuttingProxy, cutting_proxy
from tests.support.flaky_proxy import FlakyProxy, flaky_proxy
from tests.support.registry_server import RunningRegistry

pytestmark = [pytest.mark.podman, needs_podman]

BASE = "localhost/imgsave-stream-base:test"
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep
ENGINE = Podman(command=tuple(PODMAN), tls_verify=False)
FAST_RETRY = RetryPolicy(attempts=3, wait_seconds=0.5)  # bounded, and quick for tests
LONG_DIR = "/opt/" + "d" * 120
LONG_FILE = LONG_DIR + "/" + "f" * 140

# Changes go through the container's own overlay mount: podman exec, and for what
# busybox cannot do (xattrs, mknod), the host through the container's merged dir.
CHANGES = r"""
set -e
pkg=/home/jovyan/.local/lib/site-packages/pkg
mkdir -p /opt/app/lib /opt/app/empty $pkg
i=0
while [ $i -lt 30 ]; do echo "def f(): return $i" > $pkg/m$i.py; i=$((i+1)); done
head -c 3000000 /dev/urandom > /opt/app/lib/big.so
: > /opt/app/empty.txt
echo 'print("main")' > /opt/app/main.py
echo changed >> /etc/motd
rm /opt/gone/x
rm -rf /opt/removed-dir
rm -rf /opt/base && mkdir /opt/base && echo n > /opt/base/n
mv /opt/rename-me /opt/renamed
chmod 600 /etc/keep
chmod 4755 /opt/app/main.py
mkdir -m 1777 /opt/app/scratch
echo owned > /opt/app/owned && chown 123:456 /opt/app/owned
ln -s ../app/main.py /opt/app/sym
ln -s /nowhere /opt/app/dangling && chown -h 7:8 /opt/app/dangling
ln /opt/app/main.py /opt/app/hard
mkfifo /opt/app/fifo
echo old > /opt/app/old.txt && touch -d '2001-02-03 04:05:06' /opt/app/old.txt
echo unicode > '/opt/app/café ünï.txt'
cp /bin/busybox /opt/app/ping
mkdir -p "$1" && echo long > "$2"
"""


def _base_rootfs(root: Path) -> None:
    for d in ("bin", "etc", "tmp", "opt/base/sub", "opt/gone", "opt/removed-dir/deep",
              "opt/rename-me"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(  # noqa: S603
        ["/usr/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    files = {
        "etc/motd": "base motd\n", "etc/keep": "keep\n", "opt/base/a": "a\n",
        "opt/base/sub/b": "b\n", "opt/gone/x": "x\n", "opt/gone/y": "y\n",
        "opt/removed-dir/deep/z": "z\n", "opt/rename-me/r": "r\n",
    }  # fmt: skip
    for name, text in files.items():
        (root / name).write_text(text)


@pytest.fixture(scope="module")
def stream_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base image: busybox-static plus files the test changes, deletes and replaces."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return BASE
    root = tmp_path_factory.mktemp("stream-rootfs")
    _base_rootfs(root)
    tar = subprocess.run(  # noqa: S603, S607
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], capture_output=True, check=True
    )
    subprocess.run(  # noqa: S603
        [*PODMAN, "import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV BASE=yes",
         "-", BASE],
        input=tar.stdout, capture_output=True, check=True,
    )  # fmt: skip
    return BASE


@contextmanager
def _container(image: str, *, start: bool = True) -> Iterator[str]:
    name = f"imgsave-stream-{uuid.uuid4().hex[:10]}"
    verb = ["run", "-d"] if start else ["create"]
    podman(*verb, *ULIMITS, "--name", name, image, "sleep", "infinity", timeout=180)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def _mounted(container: str) -> Path:
    return Path(podman("mount", container).stdout.strip())


def _tree(root: Path) -> dict[str, dict[str, Any]]:
    """Everything a layer carries about each path under ``root`` (root itself aside)."""
    tree: dict[str, dict[str, Any]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            info: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "owner": (st.st_uid, st.st_gid),
            }
            if stat.S_ISREG(st.st_mode):
                info["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                info["mtime"] = int(st.st_mtime)
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = os.listxattr(path, follow_symlinks=False)
            info["xattrs"] = {
                k: os.getxattr(path, k, follow_symlinks=False).hex()
                for k in sorted(xattrs)
                if k == "security.capability" or k.startswith("user.")
            }
            tree[rel] = info
    for paths in inodes.values():
        if len(paths) > 1:
            for rel in paths:
                tree[rel]["hardlinks"] = sorted(paths)
    return tree


def _image_tree(image: str) -> dict[str, dict[str, Any]]:
    with _container(image, start=False) as name:
        try:
            return _tree(_mounted(name))
        finally:
            podman("umount", name, check=False)


def _pull(reference: str) -> None:
    podman("pull", "-q", "--tls-verify=false", reference, timeout=300)


def _engine_save(container: str, reference: str) -> None:
    local = f"localhost/imgsave-stream-engine:{uuid.uuid4().hex[:8]}"
    podman(*ENGINE.commit(container, local)[len(PODMAN) :], timeout=300)
    for argv in ENGINE.push(local, reference):
        podman(*argv[len(PODMAN) :], timeout=300)
    podman("rmi", local)  # the pull below must fetch the pushed layers


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)} != {b.get(k)}" for k in keys if a.get(k) != b.get(k)]


def _stream(
    container: str,
    registry: RunningRegistry,
    repository: str,
    tag: str,
    retry: RetryPolicy | None = None,
    **kwargs: Any,
) -> StreamResult:
    target = ImageRef(registry.host, repository, tag)
    with RegistryClient(registry.url, retry=retry) as client:
        return stream_commit(container, target, client, ENGINE, **kwargs)


@pytest.fixture
def cleanup_images() -> Iterator[Callable[[str], str]]:
    images: list[str] = []

    def add(reference: str) -> str:
        images.append(reference)
        return reference

    yield add
    if images:
        podman("rmi", "-f", *images, check=False)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_streamed_image_has_the_same_tree_as_the_container_and_an_engine_commit(
    compression: str,
    stream_base: str,
    builder_registry: RunningRegistry,
    cleanup_images: Callable[[str], str],
) -> None:
    repo = f"alice/stream-{uuid.uuid4().hex[:8]}"
    streamed = cleanup_images(f"{builder_registry.host}/{repo}:streamed")
    engine = cleanup_images(f"{builder_registry.host}/{repo}:engine")
    events: list[ProgressEvent] = []
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", CHANGES, "sh", LONG_DIR, LONG_FILE)
        merged = _mounted(container)
        os.setxattr(merged / "opt/app/ping", "security.capability", CAPABILITY)
        os.setxattr(merged / "opt/app/owned", "user.origin", b"pip \xff install")
        # the container's device cgroup refuses mknod: make the device from outside
        os.mknod(merged / "opt/app/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        running = _tree(merged)
        result = _stream(container, builder_registry, repo, "streamed",
                         compression=compression, events=events.append)  # fmt: skip
        _engine_save(container, engine)
        assert podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip() == "running"
    _pull(streamed)
    _pull(engine)

    streamed_tree, engine_tree = _image_tree(streamed), _image_tree(engine)

    assert _diff(running, streamed_tree) == []
    assert _diff(engine_tree, streamed_tree) == []
    # the changes really are in there (not three empty trees)
    assert "opt/gone/x" not in streamed_tree and "opt/gone/y" in streamed_tree
    assert sorted(k for k in streamed_tree if k.startswith("opt/base")) == [
        "opt/base",
        "opt/base/n",
    ]
    assert "opt/renamed/r" in streamed_tree and "opt/rename-me" not in streamed_tree
    assert "opt/removed-dir" not in streamed_tree
    assert streamed_tree["opt/app/ping"]["xattrs"] == {"security.capability": CAPABILITY.hex()}
    assert streamed_tree["opt/app/hard"]["hardlinks"] == ["opt/app/hard", "opt/app/main.py"]
    assert streamed_tree["opt/app/main.py"]["mode"] == "0o4755"
    assert streamed_tree["opt/app/null"]["rdev"] == (1, 3)
    assert streamed_tree[LONG_FILE.lstrip("/")]["type"] == stat.S_IFREG

    run = podman("run", "--rm", streamed, "sh", "-c", "cat /etc/motd /opt/base/n; echo $BASE")
    assert run.stdout == "base motd\nchanged\nn\nyes\n"

    assert result.method == "streaming" and result.digest.startswith("sha256:")
    assert 0 < result.pause_seconds < result.seconds["total"]
    assert result.files >= 30 and result.changed_files == ()
    assert result.layer_size < result.tar_size
    assert {e.stage for e in events} >= {Stage.LOCATING, Stage.COMMITTING, Stage.PUSHING}
    _check_registry_image(builder_registry, repo, result, compression)


def _check_registry_image(
    registry: RunningRegistry, repo: str, result: StreamResult, compression: str
) -> None:
    with RegistryClient(registry.url) as client:
        info = client.manifest(repo, "streamed")
        assert info is not None and info.digest == result.digest
        assert info.total_size == result.image_bytes
        new = info.layers[-1]
        assert (new.digest, new.size) == (result.layer_digest, result.layer_size)
        assert new.media_type.endswith("+" + compression)
        assert (compression == "zstd") == (new.media_type == OCI_LAYER_ZSTD)
        config = json.loads(client.get_blob(repo, info.config_digest))
    assert config["rootfs"]["diff_ids"][-1] == result.diff_id
    assert len(config["rootfs"]["diff_ids"]) == len(info.layers) == 2
    assert config["history"][-1]["created_by"] == "imgsave streaming commit"
    # the container's settings by the one rule (builder_jobs/image_config.py), inspected
    # by stream_commit itself here: its command, not the base's /bin/sh; the base's env
    assert config["config"]["Cmd"] == ["sleep", "infinity"]
    assert "BASE=yes" in config["config"]["Env"]
    assert "imgsave.owner" not in config["config"].get("Labels", {})
    assert config["architecture"] and config["os"] == "linux"


def test_a_local_base_reaches_the_registry_and_leaves_no_helper_tag(
    stream_base: str, builder_registry: RunningRegistry
) -> None:
    """The base goes up with the engine's push under a helper tag, which is removed once
    the image is pushed: the user's repository shows only their tags. A second save
    pushes the base's manifest again, but every layer is already there (the registry
    access log of the local cluster shows no re-upload: tests/cluster/test_save_e2e.py)."""
    repo = f"alice/cache-{uuid.uuid4().hex[:8]}"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "echo 1 > /opt/one")
        first = _stream(container, builder_registry, repo, "v1")
        podman("exec", container, "sh", "-c", "echo 2 > /opt/two")
        second = _stream(container, builder_registry, repo, "v2")
    assert first.base_pushed and first.base_repository == repo
    assert second.base_repository == repo
    with RegistryClient(builder_registry.url) as client:
        assert sorted(client.list_tags(repo)) == ["v1", "v2"]
        v1, v2 = client.manifest(repo, "v1"), client.manifest(repo, "v2")
        assert v1 is not None and v2 is not None
        assert v1.layers[0].digest == v2.layers[0].digest  # one base layer, shared
        assert client.blob_exists(repo, v2.layers[0].digest)


def test_a_base_pulled_from_the_registry_is_mounted_not_pushed(
    tmp_path: Path, builder_registry: RunningRegistry, cleanup_images: Callable[[str], str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    root = tmp_path / "rootfs"
    _base_rootfs(root)
    (root / "etc" / "flavour").write_text(suffix)  # an image id of its own
    local = cleanup_images(f"localhost/imgsave-stream-pulled:{suffix}")
    tar = subprocess.run(  # noqa: S603, S607
        ["tar", "-C", str(root), "-c", "."], capture_output=True, check=True
    )
    subprocess.run(  # noqa: S603
        [*PODMAN, "import", "-", local], input=tar.stdout, capture_output=True, check=True
    )
    published = cleanup_images(f"{builder_registry.host}/library/base-{suffix}:1")
    podman("push", "-q", "--tls-verify=false", local, f"docker://{published}")
    podman("rmi", local)
    _pull(published)  # now it has a RepoDigest in the registry, as a site image does
    repo = f"alice/mounted-{suffix}"
    with _container(published) as container:
        podman("exec", container, "sh", "-c", "echo mine > /opt/mine")
        result = _stream(container, builder_registry, repo, "v1")
    assert not result.base_pushed and result.base_layers_mounted == 1
    assert result.base_repository == f"library/base-{suffix}"
    with RegistryClient(builder_registry.url) as client:
        assert client.list_tags(repo) == ["v1"]  # no cache tag: nothing was pushed
    saved = cleanup_images(f"{builder_registry.host}/{repo}:v1")
    _pull(saved)
    assert podman("run", "--rm", saved, "cat", "/opt/mine", "/etc/flavour").stdout == (
        f"mine\n{suffix}"
    )


def test_a_stopped_container_streams_without_a_pause(
    stream_base: str, builder_registry: RunningRegistry, cleanup_images: Callable[[str], str]
) -> None:
    repo = f"alice/stopped-{uuid.uuid4().hex[:8]}"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "echo kept > /opt/kept")
        podman("stop", "-t", "0", container)
        result = _stream(container, builder_registry, repo, "v1", compression="gzip")
    assert result.pause_seconds == 0 and result.seconds["pause"] == 0
    saved = cleanup_images(f"{builder_registry.host}/{repo}:v1")
    _pull(saved)
    assert podman("run", "--rm", saved, "cat", "/opt/kept").stdout == "kept\n"


def test_a_container_the_user_paused_is_saved_and_stays_paused(
    stream_base: str, builder_registry: RunningRegistry, cleanup_images: Callable[[str], str]
) -> None:
    # The save pauses beside its inspect; only a pause it made itself is undone.
    repo = f"alice/user-paused-{uuid.uuid4().hex[:8]}"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "echo frozen > /opt/frozen")
        podman("pause", container)
        try:
            result = _stream(container, builder_registry, repo, "v1")
            state = podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
        finally:
            podman("unpause", container, check=False)
    assert state == "paused" and result.pause_seconds == 0
    saved = cleanup_images(f"{builder_registry.host}/{repo}:v1")
    _pull(saved)
    assert podman("run", "--rm", saved, "cat", "/opt/frozen").stdout == "frozen\n"


def test_a_failed_base_push_fails_the_save_and_the_container_runs_on(
    stream_base: str, builder_registry: RunningRegistry, tmp_path: Path
) -> None:
    # The base is looked up (here: pushed once, as the repository is new) while the
    # layer streams; its failure is the save's error, and nothing is tagged.
    repo = f"alice/no-base-{uuid.uuid4().hex[:8]}"
    missing = tmp_path / "no-such-auth.json"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "head -c 2000000 /dev/urandom > /opt/data")
        with pytest.raises(CommandFailed) as caught:
            _stream(container, builder_registry, repo, "v1", authfile=str(missing))
        state = podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
    assert "push" in caught.value.argv and str(missing) in caught.value.argv
    assert state == "running"
    with RegistryClient(builder_registry.url) as client:
        assert client.list_tags(repo) == []


def test_a_registry_that_dies_mid_upload_fails_the_save_and_the_container_runs_on(
    stream_base: str, builder_registry: RunningRegistry
) -> None:
    repo = f"alice/dies-{uuid.uuid4().hex[:8]}"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "head -c 30000000 /dev/urandom > /opt/big")
        with cutting_proxy(builder_registry, cut_after=40 << 20) as proxy:
            # the base reaches the repository first (its one-off push, through the proxy)
            _stream(container, _as_registry(proxy), repo, "v0")
            assert not proxy.cut.is_set()
            started = time.monotonic()
            with pytest.raises(RegistryError) as caught:
                _stream(container, _as_registry(proxy), repo, "v1", retry=FAST_RETRY)
            assert proxy.cut.is_set()  # it died in the middle of the layer's upload
            took = time.monotonic() - started
        state = podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
    assert state == "running"
    assert caught.value.retryable and "unreachable" in caught.value.message
    # the chunk's PATCH once, then the upload's state asked for: the bounded attempts
    assert f"gave up after {FAST_RETRY.attempts} attempts" in caught.value.message
    assert took < 60
    with RegistryClient(builder_registry.url) as client:
        tags = client.list_tags(repo)
    assert "v0" in tags and "v1" not in tags  # (a helper tag may stay: nobody to ask)


def test_a_registry_down_for_a_moment_mid_upload_costs_a_resent_chunk_not_the_save(
    stream_base: str, builder_registry: RunningRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    repo = f"alice/blip-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.WARNING)
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "head -c 30000000 /dev/urandom > /opt/big")
        with flaky_proxy(builder_registry.host) as proxy:
            _stream(container, _as_registry(proxy), repo, "v0")  # the base, once
            proxy.outage(_nth_patch(2), seconds=1.0)  # the layer's second chunk
            result = _stream(container, _as_registry(proxy), repo, "v1",
                             retry=RetryPolicy(attempts=5, wait_seconds=3.0))  # fmt: skip
        state = podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
    assert state == "running"
    assert proxy.dropped_matching("PATCH ") == 1 and proxy.dropped_matching("GET ") >= 1
    retries = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert len(retries) == len(proxy.dropped)  # each dropped request retried once
    with RegistryClient(builder_registry.url) as client:
        assert client.manifest_digest(repo, "v1") == result.digest
        assert client.blob_exists(repo, result.layer_digest)


def test_a_registry_that_stays_down_fails_in_bounded_time_and_a_resubmit_succeeds(
    stream_base: str, builder_registry: RunningRegistry
) -> None:
    repo = f"alice/down-{uuid.uuid4().hex[:8]}"
    uploads = f"GET /v2/{repo}/blobs/uploads/"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "head -c 30000000 /dev/urandom > /opt/big")
        with flaky_proxy(builder_registry.host) as proxy:
            _stream(container, _as_registry(proxy), repo, "v0")
            proxy.outage(_nth_patch(2))  # and never back
            started = time.monotonic()
            with pytest.raises(RegistryError) as caught:
                _stream(container, _as_registry(proxy), repo, "v1", retry=FAST_RETRY)
            took = time.monotonic() - started
            assert proxy.dropped_matching("PATCH ") == 1
            assert proxy.dropped_matching(uploads) == FAST_RETRY.attempts
            assert podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip() == (
                "running"
            )
            with RegistryClient(builder_registry.url) as client:
                assert "v1" not in client.list_tags(repo)
            proxy.recover()  # the resubmit goes through a working path
            result = _stream(container, _as_registry(proxy), repo, "v1", retry=FAST_RETRY)
    error = caught.value
    assert error.retryable and proxy.url in error.message and "unreachable" in error.message
    assert f"gave up after {FAST_RETRY.attempts} attempts" in error.message
    assert took < 30
    with RegistryClient(builder_registry.url) as client:
        assert client.manifest_digest(repo, "v1") == result.digest


def _nth_patch(n: int) -> Callable[[str], bool]:
    seen = [0]

    def trigger(line: str) -> bool:
        seen[0] += line.startswith("PATCH ")
        return seen[0] == n

    return trigger


def _as_registry(proxy: CuttingProxy | FlakyProxy) -> RunningRegistry:
    return RunningRegistry(proxy.url, proxy.host, Path("/nonexistent"), Path("/nonexistent"))


def test_an_image_over_the_size_limit_stops_the_read_and_unpauses(
    stream_base: str, builder_registry: RunningRegistry
) -> None:
    repo = f"alice/too-big-{uuid.uuid4().hex[:8]}"
    base_size = int(podman("image", "inspect", "-f", "{{.Size}}", stream_base).stdout)
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "head -c 4000000 /dev/urandom > /opt/big")
        with pytest.raises(ImageTooLarge, match="over this site's limit") as caught:
            _stream(container, builder_registry, repo, "v1", max_image_bytes=base_size + 10**6)
        state = podman("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
    assert state == "running"
    assert caught.value.limit == base_size + 10**6 and not caught.value.retryable
    with RegistryClient(builder_registry.url) as client:
        assert client.list_tags(repo) == []  # neither v1 nor the base's helper tag
