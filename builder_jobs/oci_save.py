"""The registry side of an OCI save: remember the tag, annotate the push, undo a failure.

The engine pushes the committed image under the target tag. :class:`RegistryTarget`
then fetches that manifest, adds imgsave's annotations, puts it back under the tag and
deletes the un-annotated manifest. If anything fails after the push began,
:meth:`RegistryTarget.rollback` deletes what this save put there and restores the
manifest the tag pointed to before, so a failed save never leaves a half-done tag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from builder_jobs.annotations import annotate_manifest
from core.errors import ImgsaveError, NotFound, RegistryError
from registry.manifests import (
    ManifestInfo,
    parse_manifest,
)
from registry.oci import RegistryClient
from registry.refs import ImageRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawManifest:
    """A manifest exactly as the registry stores it."""

    body: bytes
    media_type: str
    digest: str


def fetch_manifest(client: RegistryClient, repository: str, reference: str) -> RawManifest | None:
    """The manifest's bytes, media type and digest (checked), or None if absent:
    annotating and restoring need the bytes unchanged."""
    found = client.manifest_bytes(repository, reference)
    return RawManifest(*found) if found is not None else None


@dataclass(frozen=True)
class PushedImage:
    """The annotated image as it now is in the registry."""

    digest: str
    manifest: ManifestInfo

    @property
    def image_bytes(self) -> int:
        """Config plus every layer: what a pull of the whole image downloads."""
        return self.manifest.total_size

    @property
    def new_bytes(self) -> int:
        """Config plus the top layer: what the commit added (one layer per commit)."""
        top = self.manifest.layers[-1].size if self.manifest.layers else 0
        return self.manifest.config_size + top


@dataclass
class RegistryTarget:
    """One save's tag: its state before the save, the annotation step, the undo."""

    client: RegistryClient
    ref: ImageRef
    previous: RawManifest | None = None
    began: bool = False  # set when this save starts writing to the tag
    pushed_digests: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def repository(self) -> str:
        return self.ref.repository

    def snapshot(self) -> None:
        """Remember what the tag points to now (also proves the registry answers)."""
        self.previous = fetch_manifest(self.client, self.repository, self.ref.tag)

    def annotate(self, annotations: Mapping[str, str]) -> PushedImage:
        """Re-put the pushed manifest with ``annotations``; delete the un-annotated one."""
        pushed = fetch_manifest(self.client, self.repository, self.ref.tag)
        if pushed is None or (self.previous and pushed.digest == self.previous.digest):
            raise RegistryError(
                f"the engine reported a successful push, but {self.ref} is not in the "
                "registry; is the engine pushing to another registry (mirror, proxy)?"
            )
        self.pushed_digests.append(pushed.digest)
        rewritten = annotate_manifest(pushed.body, pushed.media_type, annotations)
        digest = self.client.push_manifest(
            self.repository, self.ref.tag, rewritten.body, rewritten.media_type
        )
        self.pushed_digests.append(digest)
        if digest != pushed.digest:
            self._delete(pushed.digest, "the un-annotated manifest")
        return PushedImage(digest, parse_manifest(rewritten.body, digest, rewritten.media_type))

    def rollback(self) -> None:
        """Undo this save in the registry: no new tag, the previous manifest restored.

        Best effort: a registry that is down cannot be cleaned, which is logged and
        recorded in :attr:`warnings`; the save's own error is what the user sees.
        """
        try:
            current = self.client.manifest_digest(self.repository, self.ref.tag)
        except ImgsaveError as e:
            self._warn(f"could not check {self.ref} after the failure: {e}")
            return
        keep = self.previous.digest if self.previous else None
        for digest in dict.fromkeys([current, *self.pushed_digests]):
            if digest and digest != keep:
                self._delete(digest, "a manifest of the failed save")
        if self.previous is not None and current != keep:
            try:
                self.client.push_manifest(
                    self.repository, self.ref.tag, self.previous.body, self.previous.media_type
                )
            except ImgsaveError as e:
                self._warn(f"could not restore the previous {self.ref} ({keep}): {e}")

    def _delete(self, digest: str, what: str) -> None:
        try:
            self.client.delete_manifest(self.repository, digest)
        except NotFound:
            pass
        except ImgsaveError as e:
            self._warn(f"could not delete {what} {self.repository}@{digest}: {e}")

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)
