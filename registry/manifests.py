"""Manifests as the registry returns them: media types, descriptors, digests.

Pure functions on bytes, so they are tested without a registry. Media types are from
the OCI image spec (``specs-go/v1/mediatype.go``) and Docker's image manifest v2
schema 2; a registry may answer with any of them, so every request sends all four.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from core.errors import RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
CREATED_ANNOTATION = "org.opencontainers.image.created"


class Descriptor(NamedTuple):
    """A content descriptor: what a manifest says about one blob (or child manifest)."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ManifestInfo:
    """What a manifest says about an image, as read from the registry.

    For an image manifest, ``config_digest`` and ``layers`` describe its blobs. For an
    index (multi-platform) they are empty and ``manifests`` lists the platform
    manifests. ``created`` is the ``org.opencontainers.image.created`` annotation or,
    failing that, the config's ``created`` (empty when neither is known).
    """

    digest: str
    media_type: str
    config_digest: str = ""
    config_size: int = 0
    config_media_type: str = ""
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    created: str = ""
    manifest_size: int = 0

    @property
    def total_size(self) -> int:
        """Bytes of the config and every layer (what a pull downloads, manifest aside)."""
        return self.config_size + sum(layer.size for layer in self.layers)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``: the digest a registry gives the same bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Raise :class:`RegistryError` unless ``data`` has ``digest`` (sha256 or sha512)."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(f"{what}: cannot verify digest {digest!r} (unknown algorithm)")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise RegistryError(
            f"{what}: content does not match its digest {digest} (got {algorithm}:{actual})"
        )


def parse_manifest(raw: bytes, digest: str, media_type: str = "") -> ManifestInfo:
    """Read a manifest's bytes into a :class:`ManifestInfo`.

    ``media_type`` is the response's Content-Type; the manifest's own ``mediaType``
    field wins when present. ``created`` here is only the annotation; the caller may
    fill it from the config blob.
    """
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"manifest {digest} is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise RegistryError(f"manifest {digest} is not a JSON object")
    kind = str(body.get("mediaType") or media_type or OCI_MANIFEST)
    annotations = body.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    frozen = MappingProxyType({str(k): str(v) for k, v in annotations.items()})
    common: dict[str, Any] = {
        "digest": digest,
        "media_type": kind,
        "annotations": frozen,
        "created": frozen.get(CREATED_ANNOTATION, ""),
        "manifest_size": len(raw),
    }
    if kind in INDEX_TYPES or "manifests" in body:
        return ManifestInfo(manifests=_descriptors(body.get("manifests"), digest), **common)
    config = _descriptor(body.get("config"), digest, "config")
    return ManifestInfo(
        config_digest=config.digest,
        config_size=config.size,
        config_media_type=config.media_type,
        layers=_descriptors(body.get("layers"), digest),
        **common,
    )


def created_from_config(raw: bytes) -> str:
    """The ``created`` time in an image config blob, or "" (SIF configs are ``{}``)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    value = body.get("created") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def _descriptors(items: object, digest: str) -> tuple[Descriptor, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise RegistryError(f"manifest {digest}: expected a list of descriptors")
    return tuple(_descriptor(item, digest, f"entry {i}") for i, item in enumerate(items))


def _descriptor(item: object, digest: str, what: str) -> Descriptor:
    if not isinstance(item, dict):
        raise RegistryError(f"manifest {digest}: {what} is missing or not an object")
    try:
        return Descriptor(str(item["digest"]), int(item["size"]), str(item.get("mediaType", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise RegistryError(
            f"manifest {digest}: {what} needs a digest and a numeric size ({e})"
        ) from e
