"""OCI annotations for a saved image, and the manifest rewrite that adds them.

Pure functions on manifest JSON: the engine pushes the image, then the node fetches the
pushed manifest, adds these annotations and puts it back under the same tag. A docker
schema 2 manifest (what ``docker push`` sends) has no ``annotations`` field, so it is
converted to the equivalent OCI manifest: the same blobs, OCI media types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import RegistryError
from registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)

CREATED = "org.opencontainers.image.created"
BASE_DIGEST = "org.opencontainers.image.base.digest"
BASE_NAME = "org.opencontainers.image.base.name"
NODE = "io.imgsave.node"
JOB_ID = "io.imgsave.job-id"
OWNER = "io.imgsave.owner"
CATEGORY = "io.imgsave.category"
REQUEST_ID = "io.imgsave.request-id"

# docker media type -> OCI media type (image-spec media-types.md, "compatibility matrix")
_DOCKER_TO_OCI = {
    "application/vnd.docker.container.image.v1+json": OCI_CONFIG,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
    DOCKER_MANIFEST: OCI_MANIFEST,
}


@dataclass(frozen=True)
class SaveProvenance:
    """Where and for whom an image was saved: the facts behind its annotations."""

    created: str  # RFC 3339, UTC
    node: str
    job_id: str
    owner: str
    category: str
    request_id: str
    base_name: str = ""
    base_digest: str = ""

    def annotations(self) -> dict[str, str]:
        """The annotation map; base name/digest only when known."""
        values = {
            CREATED: self.created,
            BASE_NAME: self.base_name,
            BASE_DIGEST: self.base_digest,
            NODE: self.node,
            JOB_ID: self.job_id,
            OWNER: self.owner,
            CATEGORY: self.category,
            REQUEST_ID: self.request_id,
        }
        return {k: v for k, v in values.items() if v or k == JOB_ID}


@dataclass(frozen=True)
class RewrittenManifest:
    """A manifest ready to PUT: its exact bytes and its media type."""

    body: bytes
    media_type: str


def annotate_manifest(
    raw: bytes, media_type: str, annotations: Mapping[str, str]
) -> RewrittenManifest:
    """Add ``annotations`` (ours win over existing keys) to an image manifest or index.

    docker schema 2 manifests and manifest lists become their OCI equivalents, since
    only OCI manifests carry annotations. Raises :class:`RegistryError` for anything
    that is not a JSON manifest.
    """
    try:
        body: Any = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"the pushed manifest is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise RegistryError("the pushed manifest is not a JSON object")
    kind = str(body.get("mediaType") or media_type or OCI_MANIFEST)
    if kind == DOCKER_MANIFEST:
        body = _docker_to_oci(body)
        kind = OCI_MANIFEST
    elif kind == DOCKER_MANIFEST_LIST:
        body = dict(body, mediaType=OCI_INDEX)
        kind = OCI_INDEX
    elif kind not in (OCI_MANIFEST, OCI_INDEX):
        raise RegistryError(f"cannot annotate a manifest of media type {kind!r}")
    merged = dict(body.get("annotations") or {})
    merged.update(annotations)
    body["annotations"] = merged
    body.setdefault("mediaType", kind)
    return RewrittenManifest(json.dumps(body, indent=2).encode(), kind)


def _docker_to_oci(body: dict[str, Any]) -> dict[str, Any]:
    def convert(descriptor: dict[str, Any]) -> dict[str, Any]:
        media = str(descriptor.get("mediaType", ""))
        return dict(descriptor, mediaType=_DOCKER_TO_OCI.get(media, media))

    out = dict(body)
    out["mediaType"] = OCI_MANIFEST
    out["config"] = convert(dict(body.get("config") or {}))
    out["layers"] = [convert(dict(layer)) for layer in body.get("layers") or []]
    return out
