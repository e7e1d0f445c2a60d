"""The container's base image in the target repository, without sending its layers again.

A streaming commit uploads one new layer; its manifest also lists the base image's
layers, under the descriptors (digest, size, media type) the registry knows them by.
podman keeps layers uncompressed, so those descriptors come from a base manifest that
is already in the registry. The candidates, in order:

1. the base image's ``RepoDigests`` on the target's registry (the usual case: the
   session was started from an image pulled from the site registry), by digest;
2. the container's image name on that registry (a tag, so checked like the rest);
3. the tag :func:`base_cache_tag` in the target repository, left by step 4 of an
   earlier save from the same local base that stopped before removing it (a finished
   save removes it: :func:`drop_cache_tag`).

A candidate counts only if its config lists the local image's layer diff_ids and, for
1 and 2, its config digest is the local image id (podman's image id is its config
digest; a push that converts formats may change it, so the cache tag is trusted by name). Each base
layer is then HEADed in the target repository and, if absent, mounted from the
candidate's repository (cross-repository blob mount). When no candidate fits, or a
mount is refused:

5. the engine pushes the base image once, as ``REPO:imgsave-base-<image id>`` in the
   target repository (``podman push`` sends only the layers the registry lacks), and
   that manifest is used; the tag is removed once the save's own manifest is pushed.
   The base's layers stay in the repository, so a later save's base push finds every
   layer by HEAD and uploads none: the base of an image built locally (``podman
   import``, ``podman build``) travels once per repository.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import ImgsaveError, InvalidRequest, NotFound, RegistryError
from registry.catalog import CACHE_TAG_PREFIX
from registry.manifests import Descriptor, ManifestInfo
from registry.oci import RegistryClient
from registry.refs import parse_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalImage:
    """The container's image as the engine stores it (``podman image inspect``)."""

    id: str  # hex config digest, no "sha256:"
    diff_ids: tuple[str, ...]
    repo_digests: tuple[str, ...] = ()  # "host/repo@sha256:..."
    name: str = ""  # the name the container was started from, if any
    size: int = 0  # uncompressed bytes of all its layers (``Size``)


@dataclass(frozen=True)
class BaseImage:
    """The base image as the target repository now holds it."""

    repository: str  # where its manifest was found
    manifest_digest: str
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]
    present: int = 0  # layers the target repository already had
    mounted: int = 0  # layers mounted from ``repository``
    engine_pushed: bool = False  # the one-off engine push of step 4 ran
    notes: tuple[str, ...] = field(default=())


def base_cache_tag(image_id: str) -> str:
    """The target-repository tag the one-off base push uses (and later saves look for)."""
    return CACHE_TAG_PREFIX + image_id.removeprefix("sha256:")[:16]


def drop_cache_tag(client: RegistryClient, repository: str, image_id: str) -> None:
    """Remove the base's helper tag once the image is pushed: the user's repository then
    holds only their own tags. The base's layers stay (the new image uses them), so the
    next save finds them by HEAD and its base push uploads no layer again."""
    tag = base_cache_tag(image_id)
    try:
        client.delete_tag_or_digest(repository, tag)
    except ImgsaveError as e:
        log.warning("could not remove the helper tag %s:%s: %s", repository, tag, e)


def parse_image_inspect(text: str, name: str = "") -> LocalImage:
    """``podman image inspect`` JSON → :class:`LocalImage` (``RootFS.Layers`` are diff_ids)."""
    try:
        data = json.loads(text)
        obj = data[0] if isinstance(data, list) else data
        layers = tuple(str(d) for d in (obj.get("RootFS") or {}).get("Layers") or [])
        return LocalImage(
            id=str(obj["Id"]).removeprefix("sha256:"),
            diff_ids=layers,
            repo_digests=tuple(str(d) for d in obj.get("RepoDigests") or []),
            name=name,
            size=int(obj.get("Size") or 0),
        )
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
        raise InvalidRequest(f"image inspect printed unexpected JSON: {e}") from e


def candidates(image: LocalImage, registry: str, target_repository: str) -> list[tuple[str, str]]:
    """(repository, tag or digest) pairs on ``registry`` that may hold the base manifest."""
    found: list[tuple[str, str]] = []
    for text in [*image.repo_digests, image.name]:
        if not text:
            continue
        try:
            ref = parse_reference(text, default_registry="")
        except ImgsaveError:
            continue
        if ref.registry == registry and ref.reference:
            found.append((ref.repository, ref.reference))
    found.append((target_repository, base_cache_tag(image.id)))
    return list(dict.fromkeys(found))


def ensure_base(
    client: RegistryClient,
    registry: str,
    target_repository: str,
    image: LocalImage,
    push_base: Callable[[str], None],
) -> BaseImage:
    """The base image, with every layer present in ``target_repository``.

    ``push_base(reference)`` pushes the local base image to that full reference with
    the engine (step 4); it runs only when no candidate can be used.
    """
    notes: list[str] = []
    for repository, reference in candidates(image, registry, target_repository):
        cached = reference == base_cache_tag(image.id)
        base = _matching(client, repository, reference, image, exact_config=not cached)
        if base is None:
            continue
        placed = _place_layers(client, target_repository, base, notes)
        if placed is not None:
            return placed
    tag = base_cache_tag(image.id)
    log.info("base image %s is not in %s; pushing it once as :%s", image.id[:12], registry, tag)
    push_base(f"{registry}/{target_repository}:{tag}")
    base = _matching(client, target_repository, tag, image, exact_config=False)
    if base is None:
        raise RegistryError(
            f"pushed the base image to {registry}/{target_repository}:{tag}, but the "
            "registry does not return a manifest with its layers"
        )
    notes.append(f"base image pushed once as {target_repository}:{tag}")
    return replace(base, engine_pushed=True, present=len(base.layers), notes=tuple(notes))


def _matching(
    client: RegistryClient,
    repository: str,
    reference: str,
    image: LocalImage,
    *,
    exact_config: bool = True,
) -> BaseImage | None:
    try:
        info = client.manifest(repository, reference, with_config=False)
        if info is not None and info.is_index:
            info = _platform_child(client, repository, info, image)
    except (NotFound, InvalidRequest):
        return None
    if info is None or not info.config_digest:
        return None
    if exact_config and info.config_digest != f"sha256:{image.id}":
        return None
    if len(info.layers) != len(image.diff_ids):
        return None
    config = _config(client, repository, info.config_digest)
    diff_ids = tuple((config.get("rootfs") or {}).get("diff_ids") or [])
    if diff_ids != image.diff_ids:
        return None
    return BaseImage(repository, info.digest, config, info.layers)


def _platform_child(
    client: RegistryClient, repository: str, index: ManifestInfo, image: LocalImage
) -> ManifestInfo | None:
    for child in index.manifests:
        info = client.manifest(repository, child.digest, with_config=False)
        if info is not None and info.config_digest == f"sha256:{image.id}":
            return info
    return None


def _config(client: RegistryClient, repository: str, digest: str) -> dict[str, Any]:
    try:
        config = json.loads(client.get_blob(repository, digest))
    except ValueError as e:
        raise RegistryError(f"config {repository}@{digest} is not JSON: {e}") from e
    if not isinstance(config, dict):
        raise RegistryError(f"config {repository}@{digest} is not a JSON object")
    return config


def _place_layers(
    client: RegistryClient, target: str, base: BaseImage, notes: list[str]
) -> BaseImage | None:
    """HEAD each layer in ``target``, mount the missing ones; None if a mount is refused."""
    present = mounted = 0
    for layer in base.layers:
        if client.blob_exists(target, layer.digest):
            present += 1
        elif base.repository != target and client.mount_blob(target, layer.digest, base.repository):
            mounted += 1
        else:
            notes.append(f"layer {layer.digest} could not be mounted from {base.repository}")
            return None
    return replace(base, present=present, mounted=mounted, notes=tuple(notes))
