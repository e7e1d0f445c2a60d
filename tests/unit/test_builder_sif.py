"""SIF output: argv and manifest (pure), then real saves with podman, squashfs-tools,
siftool and a real docker-registry. Apptainer/Singularity are not installable here, so
the spython build path is not exercised (the mksquashfs + siftool path is)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder_jobs.events import EventLog, FailureKind, Stage, read_result
from builder_jobs.failures import SaveFailed
from builder_jobs.sif import (
    mksquashfs_argv,
    oras_ref,
    sif_file_name,
    siftool_argvs,
)
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE
from builder_jobs.user_files import write_as_user
from registry.manifests import OCI_MANIFEST
from registry.oci import RegistryClient
from registry.oras import SIF_CONFIG_MEDIA_TYPE, SIF_LAYER_MEDIA_TYPE, oras_manifest
from registry.refs import ImageRef
from site_configs.schema import Compression, ImageFormat
from tests.support.builder_fixtures import (
    needs_podman,
    podman,
    registry_tags,
    run_node_save,
    shared_sif_root,
    write_site_config,
    write_spec,
)
from tests.support.registry_server import RunningRegistry

MakeContainer = Callable[[str], str]
REF = ImageRef("127.0.0.1:5000", "alice/torch-env", "v1")
GOLDEN_MANIFEST = (
    Path(__file__).resolve().parents[1] / "captures" / "golden" / "oras_sif_manifest.json"
)


# --- pure --------------------------------------------------------------------------------


def test_names_and_oras_tag() -> None:
    assert sif_file_name(REF) == "torch-env_v1.sif"
    assert oras_ref(REF, alongside_oci=False) == REF
    assert oras_ref(REF, alongside_oci=True).tag == "v1-sif"
    with pytest.raises(SaveFailed):
        oras_ref(ImageRef("h", "a/b", "x" * 126), alongside_oci=True)


def test_oras_manifest_is_apptainers_layout() -> None:
    """Byte for byte what Apptainer's NewImageFromSIF + Go's json.Marshal produce."""
    digest = "sha256:13e1552aaf6aa3916353730be52e06ec214ae8f8a89062cec1f33990b553a6c9"
    raw = oras_manifest(digest, 29814784, "ubuntu_latest.sif")
    assert raw == GOLDEN_MANIFEST.read_bytes().strip()
    body = json.loads(raw)
    assert body["mediaType"] == OCI_MANIFEST
    assert body["config"] == {
        "mediaType": SIF_CONFIG_MEDIA_TYPE,
        "size": 2,
        # sha256 of "{}", as in Apptainer's emptyConfigDigest
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    }
    (layer,) = body["layers"]
    assert layer["mediaType"] == SIF_LAYER_MEDIA_TYPE
    assert layer["annotations"] == {"org.opencontainers.image.title": "ubuntu_latest.sif"}


def test_squash_and_sif_argv() -> None:
    assert mksquashfs_argv(Path("/w/root"), Path("/w/o.sqfs"), Compression.ZSTD, 4) == [
        "mksquashfs", "/w/root", "/w/o.sqfs", "-comp", "zstd", "-noappend",
        "-processors", "4", "-quiet", "-no-progress",
    ]  # fmt: skip
    assert "-processors" not in mksquashfs_argv(Path("r"), Path("o"), Compression.GZIP, 0)
    assert siftool_argvs(Path("o.sif"), Path("o.sqfs"), "x86_64") == [
        ["siftool", "new", "o.sif"],
        ["siftool", "add", "--datatype", "4", "--parttype", "2", "--partfs", "1",
         "--partarch", "2", "o.sif", "o.sqfs"],
    ]  # fmt: skip
    assert siftool_argvs(Path("a"), Path("b"), "aarch64")[1][9] == "4"


def test_write_as_user_takes_only_plain_names(tmp_path: Path) -> None:
    sif = tmp_path / "built.sif"
    sif.write_bytes(b"SIF")
    for bad in ("../escape.sif", "a/b.sif", ".hidden.sif"):
        with pytest.raises(SaveFailed):
            write_as_user(sif, str(tmp_path / "{user}"), "alice", bad)
    with pytest.raises(SaveFailed):
        write_as_user(sif, "relative/{user}", "alice", "x_v1.sif")
    with pytest.raises(SaveFailed):
        write_as_user(sif, str(tmp_path / "{user}"), "no-such-user-here", "x_v1.sif")
    assert not (tmp_path / "alice").exists()


def _shared_dir() -> Path:
    """A directory every test user can reach (pytest's tmp_path is root's, 0700)."""
    base = Path(tempfile.mkdtemp(prefix="imgsave-userfiles-", dir="/tmp"))
    base.chmod(0o755)
    return base


def test_the_user_owns_the_file_and_its_directory() -> None:
    """Written by a child with alice's uid and groups (the job's root never writes)."""
    alice = pwd.getpwnam("alice")  # created by scripts/cluster.sh
    base = _shared_dir()
    try:
        users = base / "users"
        users.mkdir()
        os.chown(users, alice.pw_uid, alice.pw_gid)  # like her home: hers to write
        sif = base / "built.sif"
        sif.write_bytes(b"SIF")
        final = write_as_user(sif, str(users / "{user}"), "alice", "x_v1.sif")
        assert final == users / "alice" / "x_v1.sif" and final.read_bytes() == b"SIF"
        info, dir_info = final.stat(), final.parent.stat()
        assert (info.st_uid, dir_info.st_uid) == (alice.pw_uid, alice.pw_uid)
        assert stat.S_IMODE(dir_info.st_mode) == 0o700
    finally:
        shutil.rmtree(base)


def test_a_symlink_to_a_root_directory_gets_the_kernels_refusal() -> None:
    """bob points his SIF directory at a root-owned one: nothing is written there and it
    stays root's (issue 10, attack 1)."""
    bob = pwd.getpwnam("bob")
    base = _shared_dir()
    try:
        victim = base / "victim"
        victim.mkdir()
        victim.chmod(0o755)
        home = base / "bob"
        home.mkdir()
        os.chown(home, bob.pw_uid, bob.pw_gid)
        (home / "sif").symlink_to(victim)
        os.lchown(home / "sif", bob.pw_uid, bob.pw_gid)
        sif = base / "built.sif"
        sif.write_bytes(b"SIF")
        with pytest.raises(SaveFailed, match="Permission denied"):
            write_as_user(sif, str(base / "{user}" / "sif"), "bob", "x_v1.sif")
        assert list(victim.iterdir()) == []
        assert (victim.stat().st_uid, stat.S_IMODE(victim.stat().st_mode)) == (0, 0o755)
    finally:
        shutil.rmtree(base)


def test_a_planted_link_at_the_file_name_is_replaced_not_followed() -> None:
    alice = pwd.getpwnam("alice")
    base = _shared_dir()
    try:
        outside = base / "outside.txt"
        outside.write_text("precious")
        mine = base / "alice"
        mine.mkdir()
        os.chown(mine, alice.pw_uid, alice.pw_gid)
        (mine / "x_v1.sif").symlink_to(outside)
        sif = base / "built.sif"
        sif.write_bytes(b"SIF")
        final = write_as_user(sif, str(base / "{user}"), "alice", "x_v1.sif")
        assert not final.is_symlink() and final.read_bytes() == b"SIF"
        assert outside.read_text() == "precious"
    finally:
        shutil.rmtree(base)


# --- real ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _save(
    registry: RunningRegistry,
    container: str,
    tmp_path: Path,
    formats: tuple[ImageFormat, ...],
    repo: str,
) -> Path:
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{registry.host}/{repo}:v1",
        site_config=write_site_config(tmp_path, registry.url),
        formats=formats,
    )
    done = run_node_save(spec_path, {"IMGSAVE_NODE": "n1"})
    assert done.returncode == 0, done.stderr
    return spec_path


@pytest.mark.podman
@needs_podman
def test_sif_save_file_and_oras_push(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    container = make_session_container("alice")
    podman("exec", container, "sh", "-c", "echo hi > /root/added.txt")
    repo = "alice/sif-only"

    spec_path = _save(builder_registry, container, tmp_path, (ImageFormat.SIF,), repo)

    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.ok and result.commit_method == "export-squashfs"
    sif = Path(result.sif_path)
    assert sif == shared_sif_root(tmp_path) / "alice" / "sif-only_v1.sif"
    assert sif.stat().st_uid == pwd.getpwnam("alice").pw_uid  # written as alice
    data = sif.read_bytes()
    assert result.sif_digest == _sha256(data) and result.size_bytes == len(data)
    stages = [e.stage for e in EventLog(spec_path.parent / EVENTS_FILE).read()]
    assert stages == [Stage.LOCATING, Stage.EXPORTING, Stage.SQUASHING, Stage.PUSHING,
                      Stage.DONE]  # fmt: skip

    listing = subprocess.run(["siftool", "list", str(sif)], capture_output=True, text=True)
    assert "FS (Squashfs/*System/amd64)" in listing.stdout  # * = primary partition
    part = tmp_path / "part.sqfs"
    with part.open("wb") as out:
        subprocess.run(["siftool", "dump", "1", str(sif)], stdout=out, check=True)
    files = subprocess.run(["unsquashfs", "-l", str(part)], capture_output=True, text=True)
    assert "squashfs-root/root/added.txt" in files.stdout.splitlines()
    cat = subprocess.run(["unsquashfs", "-cat", str(part), "root/added.txt"],
                         capture_output=True, text=True)  # fmt: skip
    assert cat.stdout == "hi\n"

    assert result.reference == f"{builder_registry.host}/{repo}:v1"
    with RegistryClient(builder_registry.url) as client:
        manifest = client.manifest(repo, "v1", with_config=False)
        assert manifest is not None
        assert manifest.config_media_type == SIF_CONFIG_MEDIA_TYPE
        (layer,) = manifest.layers
        assert layer.media_type == SIF_LAYER_MEDIA_TYPE
        assert layer.digest == result.sif_digest and layer.size == len(data)
        raw = oras_manifest(layer.digest, layer.size, "sif-only_v1.sif")
        assert manifest.digest == _sha256(raw)  # exactly Apptainer's bytes
        pulled = client.get_blob(repo, layer.digest)
    assert _sha256(pulled) == _sha256(data)  # bit-identical


@pytest.mark.podman
@needs_podman
def test_oras_pull_back_with_oras_py(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    """An independent ORAS client (oras-py) pulls the artifact back to the same bytes."""
    import oras.client

    container = make_session_container("alice")
    repo = "alice/both"
    spec_path = _save(
        builder_registry, container, tmp_path, (ImageFormat.OCI, ImageFormat.SIF), repo
    )
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.ok and result.commit_method == "engine-commit"
    assert sorted(registry_tags(builder_registry, repo)) == ["v1", "v1-sif"]

    client = oras.client.OrasClient(hostname=builder_registry.host, insecure=True)
    out = tmp_path / "pulled"
    files = client.pull(target=f"{builder_registry.host}/{repo}:v1-sif", outdir=str(out))
    assert [Path(f).name for f in files] == ["both_v1.sif"]
    assert _sha256(Path(files[0]).read_bytes()) == result.sif_digest


@pytest.mark.podman
@needs_podman
def test_sif_failure_rolls_back_the_oci_tag(
    builder_registry: RunningRegistry, make_session_container: MakeContainer, tmp_path: Path
) -> None:
    """OCI pushed, then the SIF step fails (output dir is a file): no tag is left."""
    container = make_session_container("alice")
    repo = "alice/rolled-back"
    spec_path = write_spec(
        tmp_path,
        user="alice",
        container=container,
        target=f"{builder_registry.host}/{repo}:v1",
        site_config=write_site_config(tmp_path, builder_registry.url),
        formats=(ImageFormat.OCI, ImageFormat.SIF),
    )
    mine = shared_sif_root(tmp_path) / "alice"
    mine.rmdir()
    mine.write_text("not a directory")

    done = run_node_save(spec_path)

    assert done.returncode == 1
    result = read_result(spec_path.parent / RESULT_FILE)
    assert result is not None and result.failure is FailureKind.INVALID
    assert result.error.startswith("cannot write rolled-back_v1.sif to "), result.error
    assert registry_tags(builder_registry, repo) == []


def test_an_empty_export_fails_the_sif_save(tmp_path: Path) -> None:
    """Issue 11: an engine export with no files is a failed save, never an empty SIF."""
    from builder_jobs.sif import check_rootfs

    empty = tmp_path / "rootfs"
    empty.mkdir()
    with pytest.raises(SaveFailed, match="export of c1 is empty") as raised:
        check_rootfs(empty, "c1")
    assert raised.value.kind is FailureKind.ENGINE
    (empty / "etc").mkdir()
    check_rootfs(empty, "c1")  # anything at all is a filesystem
