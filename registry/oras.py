"""A SIF in an OCI registry as an ORAS artifact, laid out exactly as ``apptainer push
oras://`` lays it out, and its push.

The layout is Apptainer's ``internal/pkg/client/oras`` (``NewImageFromSIF``): an empty
``{}`` config with the media type :data:`SIF_CONFIG_MEDIA_TYPE`, and one layer, the whole
SIF file, annotated with its file name. ``apptainer pull oras://`` and oras clients read
it back; the catalogs tell a SIF from an OCI image by that config media type.

Why not the ``oras`` package: the push goes through :class:`~registry.oci.RegistryClient`
like every other push (its credentials, retries, resumable chunked uploads), and the
manifest must be Apptainer's bytes, which only a hand-built one guarantees. oras-py is
kept as a test dependency, to pull an artifact back as an independent client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InvalidRequest
from registry.manifests import OCI_MANIFEST, sha256_digest
from registry.refs import ImageRef

if TYPE_CHECKING:
    from registry.oci import RegistryClient

SIF_CONFIG_MEDIA_TYPE = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
TITLE_ANNOTATION = "org.opencontainers.image.title"
EMPTY_CONFIG = b"{}"
SIF_TAG_SUFFIX = "-sif"
MAX_TAG_LENGTH = 128  # the distribution spec's tag grammar: at most 128 characters
UPLOAD_CHUNK_BYTES = 32 * 1024 * 1024


def oras_ref(ref: ImageRef, alongside_oci: bool) -> ImageRef:
    """The ORAS tag: the target's own, or ``<tag>-sif`` when the OCI image takes the tag.

    Raises :class:`InvalidRequest` when the tag is too long to take the suffix.
    """
    if not alongside_oci:
        return ref
    tag = f"{ref.tag}{SIF_TAG_SUFFIX}"
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidRequest(f"tag {ref.tag!r} is too long to add '{SIF_TAG_SUFFIX}'")
    return ImageRef(ref.registry, ref.repository, tag)


def oras_manifest(sif_digest: str, sif_size: int, title: str) -> bytes:
    """The manifest ``apptainer push oras://`` writes, byte for byte.

    Apptainer's ``internal/pkg/client/oras`` (``NewImageFromSIF``): config ``{}`` with
    media type ``application/vnd.sylabs.sif.config.v1+json``, one layer (the whole SIF)
    annotated with its file name; go-containerregistry serialises it with Go's
    ``json.Marshal`` (compact, fields in struct order), reproduced here.
    """
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": SIF_CONFIG_MEDIA_TYPE,
            "size": len(EMPTY_CONFIG),
            "digest": sha256_digest(EMPTY_CONFIG),
        },
        "layers": [
            {
                "mediaType": SIF_LAYER_MEDIA_TYPE,
                "size": sif_size,
                "digest": sif_digest,
                "annotations": {TITLE_ANNOTATION: title},
            }
        ],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def push_sif(
    client: RegistryClient,
    ref: ImageRef,
    sif: Path,
    digest: str,
    title: str,
    *,
    before_manifest: Callable[[str], None] | None = None,
) -> str:
    """Push the SIF file as an ORAS artifact under ``ref``'s tag; returns the manifest
    digest. ``digest`` is the file's sha256, ``title`` its file name.

    ``before_manifest`` is told the manifest's digest just before the manifest goes up,
    so a caller that may have to undo the push knows what to delete.
    """
    repository = ref.repository
    client.push_blob(repository, EMPTY_CONFIG, sha256_digest(EMPTY_CONFIG))
    client.push_blob(repository, _chunks(sif), digest)
    manifest = oras_manifest(digest, sif.stat().st_size, title)
    if before_manifest is not None:
        before_manifest(sha256_digest(manifest))
    return client.push_manifest(repository, ref.tag, manifest, OCI_MANIFEST)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(UPLOAD_CHUNK_BYTES), b"")
