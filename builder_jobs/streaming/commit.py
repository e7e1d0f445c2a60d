"""Save a container by reading its overlay upper dir once: the streaming commit.

``podman commit && podman push`` reads the container's changes three times (diff into
a local layer, read it back to compress, upload). The upper dir of the container's
overlay mount *is* the diff, so this reads it once, pausing the container only for that
read, and compresses, hashes and uploads in the same pass (:mod:`.overlay_layer`,
:mod:`.layer_push`). The base image's layers are never sent again (:mod:`.base_image`).
The new image is the base image's config with the container's settings put in by the
one rule every commit method follows (:mod:`builder_jobs.image_config`: the
container's command, env, labels... minus imgsave's labels and secret-looking env
vars), plus one layer and a history entry, pushed as an OCI manifest under the target
tag: the tag changes only at the very end, so a failed streaming commit leaves it as
it was.

What differs from an engine commit: the new layer may be zstd (docker before 23.0
cannot pull zstd layers; podman, containerd, Harbor and distribution can).

When the container cannot be read this way, :class:`StreamingUnavailable` says why and
nothing has been paused or pushed: the caller runs the engine's commit instead. The
base image is looked up (and pushed once if the registry lacks it) while the layer
streams: only the manifest needs it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from builder_jobs.engines import ContainerEngine
from builder_jobs.events import ProgressEvent, Stage
from builder_jobs.image_config import (
    ConfigRule,
    ContainerConfig,
    SavedConfig,
    image_env,
    saved_config,
)
from builder_jobs.streaming.base_image import (
    BaseImage,
    LocalImage,
    drop_cache_tag,
    ensure_base,
    parse_image_inspect,
)
from builder_jobs.streaming.chain import ChainPlan, PushedHead, ResaveChain
from builder_jobs.streaming.codecs import codec_for
from builder_jobs.streaming.incremental import WalkStats, indexed_entries
from builder_jobs.streaming.layer_push import BUFFER_BYTES, PushedLayer, push_layer
from builder_jobs.streaming.overlay_layer import (
    LayerEntry,
    LayerStats,
    StreamingUnavailable,
    layer_entries,
    tar_chunks,
)
from builder_jobs.streaming.overlay_storage import (
    OverlayContainer,
    ReadsOwnStorage,
    readable_overlay,
)
from builder_jobs.streaming.save_index import UpperIndex
from core.errors import ImgsaveError
from core.runner import Runner, run_command
from registry.manifests import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, sha256_digest
from registry.oci import RegistryClient
from registry.refs import ImageRef

__all__ = ["ImageTooLarge", "StreamResult", "StreamingUnavailable", "stream_commit"]

CREATED_BY = "imgsave streaming commit"
PROGRESS_INTERVAL = 0.5  # seconds between progress events
BASE_PUSH_TIMEOUT = 3600.0
_DOCKER_LAYERS = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
}


class ImageTooLarge(ImgsaveError):
    """The saved image would exceed the site's size limit (nothing was tagged)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the image would be at least {size} bytes uncompressed, over this site's "
            f"limit of {limit}; the upload was stopped and nothing was tagged",
            retryable=False,
        )
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class StreamResult:
    """A finished streaming commit. ``seconds`` has one entry per stage, and ``total``."""

    reference: str  # registry/repository:tag
    digest: str  # the manifest's digest
    layer_digest: str
    layer_size: int  # compressed bytes of the new layer (what was uploaded)
    diff_id: str
    tar_size: int  # uncompressed bytes of the new layer
    image_bytes: int  # config + every layer: what a pull downloads
    media_type: str  # of the new layer
    pause_seconds: float
    seconds: Mapping[str, float]
    files: int = 0
    changed_files: tuple[str, ...] = ()  # changed size while read (container not paused)
    base_repository: str = ""  # where the base manifest was found
    base_layers_present: int = 0  # already in the target repository
    base_layers_mounted: int = 0  # mounted from ``base_repository``
    base_pushed: bool = False  # the one-off engine push of the base ran
    base_notes: tuple[str, ...] = ()
    method: str = "streaming"
    dropped_env: tuple[str, ...] = ()  # secret-looking env names left out of the config
    # incremental re-save (builder_jobs/streaming/chain.py): layers over the base image
    # (1: a full save), why the save is full when a chain was asked for, and what went up
    incremental: bool = False
    chain_layers: int = 1
    full_reason: str = ""
    record_note: str = ""
    bytes_pushed: int = 0  # new layer + config + manifest (not an engine push of a base)
    deleted: int = 0  # whiteouts for paths deleted since the earlier save


def stream_commit(
    container: str,
    target: ImageRef,
    client: RegistryClient,
    engine: ContainerEngine,
    *,
    compression: str = "zstd",
    level: int | None = None,
    annotations: Mapping[str, str] | None = None,
    events: Callable[[ProgressEvent], None] | None = None,
    authfile: str = "",
    buffer_bytes: int = BUFFER_BYTES,
    max_image_bytes: int = 0,
    container_config: ContainerConfig | None = None,
    config_rule: ConfigRule | None = None,
    runner: Runner = run_command,
    chain: ResaveChain | None = None,
) -> StreamResult:
    """Save ``container`` as ``target`` (which needs a tag) through ``client``.

    ``engine`` runs inspect, pause/unpause and, once per base image that is not yet in
    the registry, a push of that base (with ``authfile``). ``compression`` is "zstd" or
    "gzip" at ``level`` (default 1). ``annotations`` go on the manifest. Up to
    ``buffer_bytes`` of compressed layer are held in memory so that the read (the
    pause) need not wait for the upload. With ``max_image_bytes``, an image whose base
    plus new layer (uncompressed, as ``podman image inspect`` counts) grows past it
    stops the upload and raises :class:`ImageTooLarge`. Raises
    :class:`StreamingUnavailable` before touching anything when the container's storage
    cannot be read directly (not overlay, rootless, metacopy, another engine); then
    nothing was paused or pushed, except when the read itself finds a metacopy or
    redirect xattr, after which the container runs again and the upload is cancelled.
    The image config follows :func:`builder_jobs.image_config.saved_config` with
    ``config_rule`` (default: the default patterns) on ``container_config`` (the
    container's settings; inspected here when not given).
    With ``chain``, the save builds on the container's earlier one when it can (only what
    changed since goes up: :mod:`.incremental`) and records the upper dir's index.
    """
    if not target.tag:
        raise ValueError(f"target {target} needs a tag")
    emit = events or (lambda event: None)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    emit(ProgressEvent(Stage.LOCATING, message=f"streaming commit: inspecting {container}"))
    info = readable_overlay(container, engine, runner)
    codec = codec_for(compression, level)
    plan = chain.plan(info, client, target) if chain else ChainPlan()
    index: UpperIndex = {}
    walk = WalkStats()
    seconds["inspect"] = _lap(started)

    def entries() -> Iterable[LayerEntry]:
        if chain is None:
            return layer_entries(info.upper_dir)
        earlier = plan.earlier.index if plan.incremental and plan.earlier else None
        return indexed_entries(info.upper_dir, earlier, index, walk)

    def push_base(reference: str) -> None:
        try:
            for argv in engine.push(info.image_id, reference, authfile=authfile):
                runner(argv, timeout=BASE_PUSH_TIMEOUT)
        finally:  # docker and nerdctl tag before they push: untag (never the base itself)
            extra = [n for n in engine.local_names_after_push(info.image_id, reference)
                     if n != info.image_id]
            if extra:
                runner(engine.rmi(extra), timeout=BASE_PUSH_TIMEOUT, check=False)

    settings: list[ContainerConfig] = [container_config] if container_config else []

    def container_settings() -> None:  # the container's own settings, for the config
        if not settings:
            settings.append(engine.parse_container(
                runner(engine.inspect_container(info.id)).stdout).config)

    def find_base() -> tuple[LocalImage, BaseImage]:
        mark = time.monotonic()
        container_settings()
        if isinstance(engine, ReadsOwnStorage):  # containerd: from its content store
            image = engine.local_image(info, runner)
        else:
            inspected = runner(engine.inspect_image(info.image_id)).stdout
            image = parse_image_inspect(inspected, name=info.image_name)
        with client.twin() as own:  # this runs in a thread of its own
            push: Callable[[str], None] = push_base
            if isinstance(engine, ReadsOwnStorage):
                own_storage = engine

                def push(reference: str) -> None:
                    own_storage.push_base(own, image, reference, runner)
            base = ensure_base(own, target.registry, target.repository, image, push)
        seconds["base"] = _lap(mark)
        return image, base

    # The base image is looked up (and, once per repository, pushed) while the layer
    # streams: only the manifest needs it. Its failure stops the read (_paused_read).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="base-image") as pool:
        lookup: Future[tuple[LocalImage, BaseImage]]
        if plan.incremental and plan.earlier and plan.base:  # the earlier image is the base
            earlier, earlier_base = plan.earlier, plan.base

            def on_earlier() -> tuple[LocalImage, BaseImage]:
                container_settings()
                return LocalImage(info.image_id, (), size=earlier.image_size), earlier_base

            lookup = pool.submit(on_earlier)
        else:
            lookup = pool.submit(find_base)
        try:
            mark = time.monotonic()
            emit(ProgressEvent(Stage.COMMITTING, message="streaming commit: reading the container"))
            pause = _Pause(engine, info, runner)
            stats = LayerStats()
            try:
                layer = push_layer(
                    client,
                    target.repository,
                    _paused_read(pause, entries, stats, lookup, max_image_bytes),
                    codec,
                    on_read_done=pause.resume,
                    progress=_throttled(emit, stats),
                    buffer_bytes=buffer_bytes,
                )
            finally:
                pause.resume()  # before any wait for the base lookup
            seconds["pause"] = pause.seconds
            seconds["read"] = layer.read_seconds
            seconds["stream"] = _lap(mark)
            if not lookup.done():  # the one-off push of a base the registry lacked
                emit(ProgressEvent(Stage.PUSHING, message="streaming commit: pushing the base"))
            image, base = lookup.result()

            mark = time.monotonic()
            if max_image_bytes and image.size + layer.tar_size > max_image_bytes:
                raise ImageTooLarge(image.size + layer.tar_size, max_image_bytes)
            emit(ProgressEvent(Stage.PUSHING, message="streaming commit: config and manifest"))
            saved = _config(base, layer, settings[0], config_rule or ConfigRule())
            digest, image_bytes, config_digest, sent = _push_image(
                client, target, base, layer, saved, annotations or {})
            seconds["manifest"] = _lap(mark)
            head = PushedHead(digest, config_digest, len(base.layers) + 1,
                              image.size + layer.tar_size)  # fmt: skip
            note = chain.record(plan, info, target, head, index) if chain else ""
        finally:
            wait([lookup])
            _drop_helper_tag(client, target.repository, lookup)
    seconds["total"] = _lap(started)
    return StreamResult(
        reference=str(target),
        digest=digest,
        layer_digest=layer.digest,
        layer_size=layer.size,
        diff_id=layer.diff_id,
        tar_size=layer.tar_size,
        image_bytes=image_bytes,
        media_type=layer.media_type,
        pause_seconds=pause.seconds,
        seconds=seconds,
        files=stats.files,
        changed_files=tuple(stats.changed),
        base_repository=base.repository,
        base_layers_present=base.present,
        base_layers_mounted=base.mounted,
        base_pushed=base.engine_pushed,
        base_notes=base.notes,
        dropped_env=saved.dropped_env,
        incremental=plan.incremental,
        chain_layers=plan.chain,
        full_reason=plan.why_full,
        record_note=note,
        bytes_pushed=layer.size + sent,
        deleted=walk.whiteouts,
    )


# --- pause, read, upload --------------------------------------------------------------


class _Pause:
    """Pauses the container on the first read and resumes it once (from either thread)."""

    def __init__(self, engine: ContainerEngine, info: OverlayContainer, runner: Runner) -> None:
        self._argv = engine.pause(info.id)
        self._unpause = engine.resume(info.id)
        self._needed = info.running and not info.paused
        self._lock = threading.Lock()
        self._since: float | None = None
        self._runner = runner
        self.seconds = 0.0

    def pause(self) -> None:
        with self._lock:
            if self._needed and self._since is None:
                since = time.monotonic()  # counted from the command: an upper bound
                self._runner(self._argv)
                self._since = since

    def resume(self) -> None:
        """Unpause if paused; a failed unpause is raised and tried again on the next call."""
        with self._lock:
            self._needed = False  # a pause that never happened must not happen late
            if self._since is not None:
                self._runner(self._unpause)
                self.seconds = time.monotonic() - self._since
                self._since = None


def _paused_read(
    pause: _Pause,
    entries: Callable[[], Iterable[LayerEntry]],
    stats: LayerStats,
    lookup: Future[tuple[LocalImage, BaseImage]],
    limit: int,
) -> Iterator[bytes | bytearray]:
    """The layer's tar, read while the container is paused. Stops early when the base
    lookup failed, or when the base (once known) plus the layer passes ``limit``."""
    pause.pause()
    base_size = 0
    for chunk in tar_chunks(entries(), stats=stats):
        if lookup.done() and not base_size:
            base_size = lookup.result()[0].size  # raises the lookup's error
        if limit and base_size + stats.tar_bytes > limit:
            raise ImageTooLarge(base_size + stats.tar_bytes, limit)
        yield chunk


def _drop_helper_tag(
    client: RegistryClient, repository: str, lookup: Future[tuple[LocalImage, BaseImage]]
) -> None:
    """After the one-off base push, remove its helper tag whether or not the save went
    through: the user's repository keeps only their own tags (best effort)."""
    if lookup.done() and lookup.exception() is None:
        image, base = lookup.result()
        if base.engine_pushed:
            drop_cache_tag(client, repository, image.id)


def _throttled(emit: Callable[[ProgressEvent], None], stats: LayerStats) -> Callable[[int], None]:
    last = [time.monotonic()]

    def progress(sent: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL:
            last[0] = now
            read = stats.tar_bytes >> 20
            emit(ProgressEvent(Stage.PUSHING, bytes_done=sent, message=f"read {read} MiB"))

    return progress


# --- the image: config and manifest ---------------------------------------------------


def image_config(base: Mapping[str, Any], diff_id: str, created: str) -> dict[str, Any]:
    """``base`` (the base image's config, the container's settings put in by
    :func:`_config`) with one more layer and a history entry for it."""
    rootfs = dict(base.get("rootfs") or {})
    history = list(base.get("history") or [])
    config = dict(base)
    config["created"] = created
    config["rootfs"] = {"type": "layers", "diff_ids": [*(rootfs.get("diff_ids") or []), diff_id]}
    config["history"] = [*history, {"created": created, "created_by": CREATED_BY}]
    return config


def image_manifest(
    config: Descriptor, layers: Sequence[Descriptor], annotations: Mapping[str, str]
) -> bytes:
    """An OCI image manifest; docker layer media types become their OCI equivalents."""
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(config),
        "layers": [_descriptor(layer) for layer in layers],
    }
    if annotations:
        body["annotations"] = dict(annotations)
    return json.dumps(body, indent=2).encode()


def _descriptor(d: Descriptor) -> dict[str, Any]:
    media_type = _DOCKER_LAYERS.get(d.media_type, d.media_type)
    return {"mediaType": media_type, "digest": d.digest, "size": d.size}


def _config(base: BaseImage, layer: PushedLayer, container: ContainerConfig, rule: ConfigRule
            ) -> SavedConfig:
    """The new image's config: the base's, the container's settings by the one rule
    (:mod:`builder_jobs.image_config`), the new layer and its history entry."""
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ruled = saved_config(base.config, container, rule, image_env(base.config))
    return SavedConfig(image_config(ruled.config, layer.diff_id, created),
                       ruled.dropped_env, ruled.dropped_labels)


def _push_image(
    client: RegistryClient,
    target: ImageRef,
    base: BaseImage,
    layer: PushedLayer,
    saved: SavedConfig,
    annotations: Mapping[str, str],
) -> tuple[str, int, str, int]:
    """Push config and manifest: the manifest's digest, the image's bytes, the config's
    digest and the bytes sent (config + manifest)."""
    config_bytes = json.dumps(saved.config).encode()
    config = Descriptor(sha256_digest(config_bytes), len(config_bytes), OCI_CONFIG)
    client.push_blob(target.repository, config_bytes, config.digest)
    new = Descriptor(layer.digest, layer.size, layer.media_type)
    layers = [*base.layers, new]
    manifest = image_manifest(config, layers, annotations)
    digest = client.push_manifest(target.repository, target.tag, manifest, OCI_MANIFEST)
    return digest, config.size + sum(d.size for d in layers), config.digest, (
        config.size + len(manifest))


def _lap(since: float) -> float:
    return round(time.monotonic() - since, 3)
