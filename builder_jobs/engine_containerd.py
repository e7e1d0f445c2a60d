"""containerd, driven with ``ctr`` (what Kubernetes and nerdctl run sessions under).

nerdctl cannot be installed on every node, and ``ctr`` has no ``commit``; what a save
needs from containerd is all there nevertheless (checked against containerd 1.6's
``ctr``, real output in ``tests/captures/engines/ctr_*``):

- locate: ``ctr -n NS containers info C`` (JSON: ``Labels``, ``Image``, ``Snapshotter``,
  ``SnapshotKey`` and the OCI ``Spec``), the owner from its label like every engine;
- the container's changes: ``ctr snapshots --snapshotter overlayfs mounts /mnt KEY``
  prints the ``mount -t overlay`` command with ``upperdir=...`` without mounting
  anything; the upper dir *is* the diff, so the streaming commit reads it
  (:mod:`builder_jobs.streaming.commit`). Another snapshotter (native, devmapper, ...)
  has no upper dir: the save fails naming the snapshotter, since ``ctr`` cannot commit;
- pause/resume: ``ctr tasks pause|resume C``; the task's state from ``ctr tasks ls``
  (a table: ctr prints no JSON for it);
- the base image: ``ctr images ls name==IMAGE`` gives the image's manifest (or index)
  digest; the manifest, its config (diff_ids) and layers are read from containerd's
  content store (``ROOT/io.containerd.content.v1.content/blobs/sha256/HEX``). An image
  pulled from the site registry is found there by digest (its layers HEAD-checked or
  mounted, never sent); any other is pushed once from the content store through
  imgsave's own registry client (``ctr images push`` would need the password in argv);
- export (SIF): the running task's root filesystem, mounted by containerd at
  ``/run/containerd/io.containerd.runtime.v2.task/NS/ID/rootfs``, written out by GNU tar.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from builder_jobs.engines import ContainerInfo, InspectParseError
from builder_jobs.image_config import ContainerConfig
from builder_jobs.streaming.base_image import LocalImage
from builder_jobs.streaming.overlay_layer import StreamingUnavailable
from builder_jobs.streaming.overlay_storage import OverlayContainer
from core.errors import ImgsaveError, InvalidRequest, RegistryError
from core.runner import Runner
from registry.oci import RegistryClient
from registry.refs import parse_reference
from site_configs.schema import EngineKind

DEFAULT_NAMESPACE = "k8s.io"
DEFAULT_ROOT = "/var/lib/containerd"
# containerd's shim keeps the task's bundle here whatever the daemon's ``state`` says
TASK_ROOT = "/run/containerd/io.containerd.runtime.v2.task"
CONTENT_DIR = "io.containerd.content.v1.content/blobs/sha256"
OVERLAYFS = "overlayfs"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
CHUNK_BYTES = 1 << 20
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


class EngineCannot(ImgsaveError):
    """The engine has no way to do what was asked (``ctr`` has no commit)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class ContainerProcess:
    """The container's process as its OCI spec gives it (args, env, cwd, user): what the
    saved image's config may take from the container."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    cwd: str = ""
    user: str = ""  # "uid:gid"


@dataclass(frozen=True)
class ContainerdContainer:
    """``ctr containers info``: the container record."""

    id: str
    image: str
    labels: Mapping[str, str]
    snapshotter: str
    snapshot_key: str
    process: ContainerProcess = field(default_factory=ContainerProcess)


@dataclass(frozen=True)
class ImageRecord:
    """A ``ctr images ls`` row: the image's name and its target (manifest or index)."""

    name: str
    media_type: str
    digest: str


def parse_containers_info(text: str) -> ContainerdContainer:
    """``ctr containers info C`` JSON → :class:`ContainerdContainer`."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise InspectParseError(f"ctr containers info did not print JSON: {e}") from e
    if not isinstance(obj, dict) or "ID" not in obj:
        raise InspectParseError("ctr containers info printed no container record (no ID)")
    labels = obj.get("Labels") or {}
    process = ((obj.get("Spec") or {}).get("process")) or {}
    user = process.get("user") or {}
    return ContainerdContainer(
        id=str(obj["ID"]),
        image=str(obj.get("Image") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        snapshotter=str(obj.get("Snapshotter") or ""),
        snapshot_key=str(obj.get("SnapshotKey") or ""),
        process=ContainerProcess(
            args=tuple(str(a) for a in process.get("args") or []),
            env=tuple(str(e) for e in process.get("env") or []),
            cwd=str(process.get("cwd") or ""),
            user=f"{user.get('uid', 0)}:{user.get('gid', 0)}" if user else "",
        ),
    )


def container_config(record: ContainerdContainer) -> ContainerConfig:
    """What the saved image's config takes from the container (the one rule,
    docs/saved-image.md): its env, working directory, user and labels from the OCI spec.
    The spec's args are the image's Entrypoint and Cmd run together, with no telling
    which word was which, so those two stay the image's own (as nerdctl commit keeps them)."""
    process = record.process
    return ContainerConfig(
        env=process.env, working_dir=process.cwd, user=process.user, labels=record.labels,
        reported=frozenset({"Env", "WorkingDir", "User", "Labels"}))


def parse_snapshot_mounts(text: str) -> dict[str, str]:
    """``ctr snapshots mounts /mnt KEY`` (``mount -t overlay overlay /mnt -o a=b,...``)
    → its ``key=value`` options (``upperdir``, ``lowerdir``, ``workdir``)."""
    line = text.strip()
    if not line.startswith("mount -t ") or " -o " not in line:
        raise InspectParseError(f"ctr snapshots mounts printed no mount command: {line[:200]!r}")
    options = line.rsplit(" -o ", 1)[1]
    return dict(o.split("=", 1) for o in options.split(",") if "=" in o)


def parse_task_status(text: str, container: str) -> str:
    """``ctr tasks ls`` (a table: TASK PID STATUS) → the task's status ("RUNNING",
    "PAUSED", "STOPPED", ...), or "" when the container has no task."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == container:
            return fields[2]
    return ""


def parse_images_ls(text: str, name: str) -> ImageRecord | None:
    """``ctr images ls`` (a table: REF TYPE DIGEST SIZE PLATFORMS LABELS) → the row of
    ``name``, or None."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == name and fields[2].startswith("sha256:"):
            return ImageRecord(fields[0], fields[1], fields[2])
    return None


def platform_manifest(index: Mapping[str, Any], arch: str, os_name: str = "linux") -> str:
    """The digest of the index's manifest for this platform."""
    for child in index.get("manifests") or []:
        plat = child.get("platform") or {}
        if plat.get("architecture") == arch and plat.get("os") == os_name:
            return str(child["digest"])
    raise InvalidRequest(f"the base image's index has no {os_name}/{arch} manifest")


def node_arch() -> str:
    """This node's architecture as OCI names it."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


@dataclass(frozen=True)
class ContentStore:
    """containerd's content store (blobs by digest), read directly as root."""

    root: Path

    def path(self, digest: str) -> Path:
        algorithm, _, hexa = digest.partition(":")
        if algorithm != "sha256" or len(hexa) != 64 or not hexa.isalnum():
            raise InvalidRequest(f"not a sha256 digest: {digest!r}")
        return self.root / CONTENT_DIR / hexa

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as e:
            raise InvalidRequest(f"{digest} is not in containerd's content store "
                                 f"({self.root})") from e

    def json(self, digest: str) -> dict[str, Any]:
        try:
            obj = json.loads(self.read(digest))
        except ValueError as e:
            raise InvalidRequest(f"{digest} in containerd's content store is not JSON") from e
        if not isinstance(obj, dict):
            raise InvalidRequest(f"{digest} in containerd's content store is not an object")
        return obj

    def chunks(self, digest: str) -> Iterator[bytes]:
        try:
            with open(self.path(digest), "rb") as fh:
                yield from iter(lambda: fh.read(CHUNK_BYTES), b"")
        except FileNotFoundError as e:
            raise RegistryError(
                f"base layer {digest} is neither in the registry nor in containerd's content "
                "store (discarded after unpacking?): pull the base image from the site "
                "registry", retryable=False) from e


@dataclass(frozen=True)
class BaseManifest:
    """The base image's manifest in the content store, and what it names."""

    digest: str  # of the manifest (the platform's, when the image is an index)
    media_type: str
    config_digest: str
    layers: tuple[Mapping[str, Any], ...]
    diff_ids: tuple[str, ...]


def read_base_manifest(store: ContentStore, record: ImageRecord, arch: str) -> BaseManifest:
    """The image's (platform) manifest and its config's diff_ids from the content store."""
    digest, media_type = record.digest, record.media_type
    manifest = store.json(digest)
    if media_type in INDEX_TYPES or manifest.get("manifests"):
        digest = platform_manifest(manifest, arch)
        manifest = store.json(digest)
        media_type = str(manifest.get("mediaType") or "application/vnd.oci.image.manifest.v1+json")
    try:
        config_digest = str(manifest["config"]["digest"])
        layers = tuple(manifest.get("layers") or [])
    except (KeyError, TypeError) as e:
        raise InvalidRequest(f"the base image's manifest {digest} has no config") from e
    config = store.json(config_digest)
    diff_ids = tuple(str(d) for d in (config.get("rootfs") or {}).get("diff_ids") or [])
    return BaseManifest(digest, media_type, config_digest, layers, diff_ids)


def repo_digest(image_name: str, manifest_digest: str) -> str:
    """``registry/repository@digest`` for an image name with a registry, else ""."""
    try:
        ref = parse_reference(image_name, default_registry="")
    except ImgsaveError:
        return ""
    if not ref.registry:
        return ""
    return f"{ref.registry}/{ref.repository}@{manifest_digest}"


def push_from_content_store(
    client: RegistryClient, store: ContentStore, base: BaseManifest, reference: str
) -> None:
    """Push the base image (layers, config, manifest) from the content store to
    ``reference`` (``registry/repository:tag``), sending only blobs the registry lacks."""
    ref = parse_reference(reference, default_registry="")
    repository, tag = ref.repository, ref.tag
    if not tag:
        raise InvalidRequest(f"base push reference {reference!r} has no tag")
    for blob in [*(str(layer["digest"]) for layer in base.layers), base.config_digest]:
        if not client.blob_exists(repository, blob):
            client.push_blob(repository, store.chunks(blob), blob)
    client.push_manifest(repository, tag, store.read(base.digest), base.media_type)


@dataclass(frozen=True)
class Containerd:
    """containerd through ``ctr`` (:class:`builder_jobs.engines.ContainerEngine`).

    ``command`` is the argv prefix (e.g. ``("ctr",)`` or ``("ctr", "--address", SOCK)``);
    ``namespace`` the containerd namespace (``k8s.io`` where Kubernetes runs sessions);
    ``root`` containerd's root directory (its content store).
    """

    command: tuple[str, ...]
    namespace: str = DEFAULT_NAMESPACE
    tls_verify: bool = True
    root: str = DEFAULT_ROOT
    kind: ClassVar[EngineKind] = EngineKind.CONTAINERD
    streams_overlay: ClassVar[bool] = True
    not_found_text: ClassVar[str] = ": not found"

    @property
    def base(self) -> list[str]:
        return [*self.command, "--namespace", self.namespace or DEFAULT_NAMESPACE]

    @property
    def store(self) -> ContentStore:
        return ContentStore(Path(self.root or DEFAULT_ROOT))

    def inspect_container(self, container: str) -> list[str]:
        return [*self.base, "containers", "info", container]

    def parse_container(self, text: str) -> ContainerInfo:
        record = parse_containers_info(text)
        return ContainerInfo(name=record.id, id=record.id, image=record.image,
                             image_digest=None, labels=record.labels,
                             config=container_config(record))

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[str]:
        """The snapshot's mount command, printed, not run (``/mnt`` is only a word)."""
        return [*self.base, "snapshots", "--snapshotter", snapshotter, "mounts", "/mnt", key]

    def tasks(self) -> list[str]:
        return [*self.base, "tasks", "ls"]

    def inspect_image(self, image: str) -> list[str]:
        return [*self.base, "images", "ls", f"name=={image}"]

    def pause(self, container: str) -> list[str]:
        return [*self.base, "tasks", "pause", container]

    def resume(self, container: str) -> list[str]:
        return [*self.base, "tasks", "resume", container]

    def commit(self, container: str, image: str, *, clear_labels: Sequence[str] = ()
               ) -> list[str]:
        raise EngineCannot("containerd (ctr) has no commit: a containerd container is saved "
                           "only by the streaming commit of its overlayfs snapshot")

    def export(self, container: str, output: str) -> list[str]:
        """The running task's root filesystem as a tar (its mounts stay out: they are
        in the container's own mount namespace)."""
        rootfs = os.path.join(TASK_ROOT, self.namespace or DEFAULT_NAMESPACE, container, "rootfs")
        return ["tar", "--numeric-owner", "--one-file-system", "-C", rootfs,
                "-cf", output, "."]

    def push(self, local_image: str, target: str, *, authfile: str = "") -> list[list[str]]:
        raise EngineCannot("containerd images are pushed from its content store by imgsave, "
                           "not by ctr")

    def local_names_after_push(self, local_image: str, target: str) -> list[str]:
        return []  # nothing is tagged in containerd

    def rmi(self, images: Sequence[str]) -> list[str]:
        return [*self.base, "images", "rm", *images]

    def list_containers(self) -> list[str]:
        return [*self.base, "containers", "ls", "-q"]

    def image_record(self, image: str, runner: Runner) -> ImageRecord:
        """The base image's ``ctr images ls`` row (the image the container was made from)."""
        record = parse_images_ls(runner(self.inspect_image(image)).stdout, image)
        if record is None:
            raise InvalidRequest(f"the container's image {image} is not in containerd's "
                                 f"namespace {self.namespace}")
        return record

    # --- the streaming commit's hooks (builder_jobs.streaming.overlay_storage.ReadsOwnStorage)

    def overlay_container(self, container: str, runner: Runner) -> OverlayContainer:
        """The container's overlayfs snapshot (its upper dir) and its task's state;
        :class:`StreamingUnavailable` for another snapshotter (nothing paused)."""
        record = parse_containers_info(runner(self.inspect_container(container)).stdout)
        if record.snapshotter != OVERLAYFS:
            raise StreamingUnavailable(
                f"the container's snapshotter is {record.snapshotter or 'unknown'}, not "
                "overlayfs, and ctr has no commit: start sessions with the overlayfs "
                "snapshotter to save them")
        mounts = runner(self.snapshot_mounts(record.snapshotter, record.snapshot_key)).stdout
        upper = parse_snapshot_mounts(mounts).get("upperdir", "")
        if not upper:
            raise StreamingUnavailable("the container's snapshot is not writable (no upperdir)")
        status = parse_task_status(runner(self.tasks()).stdout, record.id)
        return OverlayContainer(name=record.id, id=record.id, image_id="",
                                image_name=record.image, upper_dir=upper,
                                running=status == "RUNNING", paused=status == "PAUSED")

    def _base_manifest(self, image: str, runner: Runner) -> BaseManifest:
        return read_base_manifest(self.store, self.image_record(image, runner), node_arch())

    def local_image(self, container: OverlayContainer, runner: Runner) -> LocalImage:
        """The container's image as the streaming commit's base (size: compressed)."""
        base = self._base_manifest(container.image_name, runner)
        found = repo_digest(container.image_name, base.digest)
        return LocalImage(
            id=base.config_digest.removeprefix("sha256:"),
            diff_ids=base.diff_ids,
            repo_digests=(found,) if found else (),
            name=container.image_name,
            size=sum(int(layer.get("size") or 0) for layer in base.layers),
        )

    def push_base(self, client: RegistryClient, image: LocalImage, reference: str,
                  runner: Runner) -> None:
        """Push the base image once, from the content store, as ``reference``."""
        push_from_content_store(client, self.store, self._base_manifest(image.name, runner),
                                reference)
