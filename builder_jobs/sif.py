"""SIF output of a save: export the container, squash it, wrap it, store and/or push it.

Without Apptainer (DESIGN.md): ``<engine> export`` → GNU ``tar -x`` into a private temp
dir → ``mksquashfs DIR out.sqfs -comp zstd|gzip`` → ``siftool new`` + ``siftool add``
(a primary system squashfs partition for this node's architecture). Where a
``singularity`` binary exists, spython's ``Client.build`` builds the SIF from the same
directory instead. The SIF goes to the user's directory (``sif.output_dir``) and/or to
the registry as an ORAS artifact laid out exactly as ``apptainer push oras://`` does
(the layout and the push are :mod:`registry.oras`).

Why extract with GNU tar rather than stream into ``mksquashfs -tar`` (which Debian's
squashfs-tools 4.5.1 has): every command runs through ``run_command``, which cannot
feed a file to stdin. GNU tar strips leading "/", skips members with "..", and defers
symlinks that point outside the tree, so the archive cannot write outside the temp dir.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder_jobs.events import FailureKind, Stage
from builder_jobs.failures import SaveFailed, registry_failure
from builder_jobs.user_files import write_as_user
from core.errors import ImgsaveError, InvalidRequest
from registry import oras
from registry.refs import ImageRef
from site_configs.schema import Compression

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from builder_jobs.engines import ContainerInfo
    from builder_jobs.oci_save import RegistryTarget
    from builder_jobs.run import SaveRun

SIF_METHOD = "export-squashfs"
CHUNK_BYTES = 32 * 1024 * 1024
# siftool --partarch codes (siftool add --help), by Python's platform.machine()
PART_ARCH = {"i386": 1, "i686": 1, "x86_64": 2, "amd64": 2, "armv7l": 3, "aarch64": 4,
             "arm64": 4, "ppc64": 5, "ppc64le": 6, "s390x": 11, "riscv64": 12}  # fmt: skip


@dataclass(frozen=True)
class SifOutput:
    """Where the SIF went: a file, an ORAS reference, or both."""

    path: str = ""
    reference: str = ""
    digest: str = ""  # sha256 of the SIF file
    size_bytes: int = 0


def sif_file_name(ref: ImageRef) -> str:
    """``alice/torch-env:v1`` → ``torch-env_v1.sif`` (also the ORAS title annotation)."""
    return f"{ref.repository.rsplit('/', 1)[-1]}_{ref.tag}.sif"


def oras_ref(ref: ImageRef, alongside_oci: bool) -> ImageRef:
    """This save's ORAS tag (:func:`registry.oras.oras_ref`); a tag too long to take the
    ``-sif`` suffix makes the save invalid."""
    try:
        return oras.oras_ref(ref, alongside_oci)
    except InvalidRequest as e:
        raise SaveFailed(FailureKind.INVALID, e.message) from e


def extract_argv(tar_path: Path, dest: Path) -> list[str]:
    """GNU tar, keeping modes and numeric owners (owners only when run as root)."""
    return ["tar", "-x", "-p", "--numeric-owner", "-f", str(tar_path), "-C", str(dest)]


def mksquashfs_argv(
    rootfs: Path, out: Path, compression: Compression, processors: int
) -> list[str]:
    """``mksquashfs DIR out.sqfs -comp C -noappend [-processors N]`` (0 = all cores)."""
    argv = ["mksquashfs", str(rootfs), str(out), "-comp", compression.value, "-noappend"]
    if processors:
        argv += ["-processors", str(processors)]
    return [*argv, "-quiet", "-no-progress"]


def siftool_argvs(sif: Path, squashfs: Path, machine: str | None = None) -> list[list[str]]:
    """``siftool new`` then ``siftool add`` of a primary system squashfs partition."""
    arch = PART_ARCH.get((machine or platform.machine()).lower())
    if arch is None:
        raise SaveFailed(FailureKind.INVALID, f"no SIF architecture code for {machine!r}")
    return [
        ["siftool", "new", str(sif)],
        ["siftool", "add", "--datatype", "4", "--parttype", "2", "--partfs", "1",
         "--partarch", str(arch), str(sif), str(squashfs)],
    ]  # fmt: skip


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def push_oras(target: RegistryTarget, sif: Path, digest: str, title: str) -> str:
    """Push the SIF as an ORAS artifact under ``target``'s tag; returns the manifest digest.
    The target records what the push writes, so a failed save can roll it back."""
    target.began = True
    return oras.push_sif(target.client, target.ref, sif, digest, title,
                         before_manifest=target.pushed_digests.append)


def build_sif(run: SaveRun, info: ContainerInfo, work: Path, name: str) -> Path:
    """Export the container and turn its filesystem into ``work/name``."""
    timeout = run.site.engine.commit_timeout_seconds
    tar, rootfs, sif = work / "rootfs.tar", work / "rootfs", work / name
    with run.stage(Stage.EXPORTING, f"exporting {info.name}"):
        run.run(run.engine.export(info.id, str(tar)), timeout)
        size = tar.stat().st_size
        if size > run.site.limits.max_image_bytes:
            raise SaveFailed(
                FailureKind.SIZE_LIMIT,
                f"container {info.name} holds {size} bytes, over this site's limit of "
                f"{run.site.limits.max_image_bytes}",
            )
        rootfs.mkdir(mode=0o700)
        run.run(extract_argv(tar, rootfs), timeout)
        tar.unlink()
        check_rootfs(rootfs, info.name)
    with run.stage(Stage.SQUASHING, f"building {name}"):
        if shutil.which("singularity"):
            return _build_with_spython(rootfs, sif)
        squashfs = work / "rootfs.sqfs"
        sif_cfg = run.site.sif
        run.run(mksquashfs_argv(rootfs, squashfs, sif_cfg.compression, sif_cfg.processors), timeout)
        for argv in siftool_argvs(sif, squashfs):
            run.run(argv, timeout)
    return sif


def check_rootfs(rootfs: Path, container: str) -> None:
    """An export that holds no files (the engine could not see the container's root
    filesystem) must fail the save, never become an empty SIF reported as saved."""
    if not any(rootfs.iterdir()):
        raise SaveFailed(
            FailureKind.ENGINE,
            f"the export of {container} is empty: the engine could not read its filesystem",
        )


def _build_with_spython(rootfs: Path, sif: Path) -> Path:
    # Untested here: Apptainer/Singularity are not installable on the dev machines.
    from spython.main import Client  # type: ignore[import-untyped]

    built = Client.build(recipe=str(rootfs), image=str(sif), sudo=False, force=True, quiet=True)
    if not built or not sif.is_file():
        raise SaveFailed(FailureKind.ENGINE, f"singularity build of {sif.name} failed")
    return sif


def save_sif(run: SaveRun, info: ContainerInfo, target: RegistryTarget | None) -> SifOutput:
    """Build the SIF, then copy it to the user's directory and/or push it with ORAS."""
    sif_cfg, name = run.site.sif, sif_file_name(run.target_ref)
    if not sif_cfg.output_dir and target is None:
        raise SaveFailed(FailureKind.INVALID, "SIF requested, but sif.output_dir is empty and "
                         "sif.push_oras is false: nowhere to put it")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix=f"imgsave-sif-{run.spec.request_id}-", dir=work_root()))
    try:
        sif = build_sif(run, info, work, name)
        digest, size = file_sha256(sif), sif.stat().st_size
        path = ""
        if sif_cfg.output_dir:
            # written by a child with the user's own uid and groups: never root
            path = str(write_as_user(sif, sif_cfg.output_dir, run.spec.user, name))
        reference = ""
        if target is not None:
            with run.stage(Stage.PUSHING, f"pushing {target.ref} (ORAS)"):
                try:
                    push_oras(target, sif, digest, name)
                except ImgsaveError as e:
                    raise registry_failure(e, str(target.ref)) from e
            reference = str(target.ref)
        return SifOutput(path=path, reference=reference, digest=digest, size_bytes=size)
    finally:
        shutil.rmtree(work, onerror=_make_writable_and_retry)


def work_root() -> str:
    """Where the SIF step's work directory goes: ``$TMPDIR`` or ``/tmp``, and nowhere
    else. Python's own choice (:func:`tempfile.gettempdir`) tries each candidate with a
    test file and, when ``/tmp`` is full, silently moves on to ``/var/tmp`` and at last
    the current directory (a user's, for the root entry); a full ``/tmp`` must instead
    fail the save and say so (``no space left on /tmp``)."""
    return os.environ.get("TMPDIR") or "/tmp"


def _make_writable_and_retry(func: object, path: str, exc_info: object) -> None:
    # An exported rootfs may hold read-only directories; a non-root job cannot remove
    # their entries until it may write to them.
    parent = os.path.dirname(path)
    os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)
