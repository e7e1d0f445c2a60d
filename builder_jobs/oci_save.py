"""The registry side of an OCI save: remember the tag, annotate the push, undo a failure.

The engine pushes the committed image under the target tag. :class:`RegistryTarget`
then fetches that manifest, puts the image config right by the one rule every commit
method follows (:mod:`builder_jobs.image_config`: the engine keeps the container's
env, labels... but also imgsave's owner label and env vars such as ``FOO_TOKEN``),
adds imgsave's annotations, puts the manifest back under the tag and deletes the
engine's manifest and, where the config changed, the engine's config blob.

Why in the registry and not with the engine's ``commit --change``: podman's and
docker's ``--change`` can set an ENV or LABEL but not remove one (``ENV FOO_TOKEN=``
keeps the name and an empty value; nerdctl's accepts only CMD and ENTRYPOINT), so the
only way to leave a variable out is a new config blob. The engine's own config blob
does reach the registry for the moment between the push and its deletion; a registry
that refuses blob deletion (Harbor has no blob DELETE; distribution needs
``storage.delete.enabled``) keeps it unreferenced until its garbage collection, which
is recorded in :attr:`RegistryTarget.warnings`. If anything fails after the push began,
:meth:`RegistryTarget.rollback` deletes what this save put there and restores the
manifest the tag pointed to before, so a failed save never leaves a half-done tag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from builder_jobs.annotations import annotate_manifest
from builder_jobs.image_config import SavedConfig
from core.errors import ImgsaveError, NotFound, RegistryError
from registry.manifests import (
    ManifestInfo,
    parse_manifest,
    sha256_digest,
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
    dropped_env: tuple[str, ...] = ()  # secret-looking env names left out of the config

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

    def annotate(
        self, annotations: Mapping[str, str],
        config: Callable[[Mapping[str, Any]], SavedConfig] | None = None,
    ) -> PushedImage:
        """Re-put the pushed manifest with ``annotations`` and, with ``config``, the
        image config it returns for the pushed one; delete the engine's manifest (and
        its config blob when replaced)."""
        pushed = fetch_manifest(self.client, self.repository, self.ref.tag)
        if pushed is None or (self.previous and pushed.digest == self.previous.digest):
            raise RegistryError(
                f"the engine reported a successful push, but {self.ref} is not in the "
                "registry; is the engine pushing to another registry (mirror, proxy)?"
            )
        self.pushed_digests.append(pushed.digest)
        body, replaced, dropped = pushed.body, "", tuple[str, ...]()
        if config is not None:
            body, replaced, dropped = self._rewrite_config(pushed, config)
        rewritten = annotate_manifest(body, pushed.media_type, annotations)
        digest = self.client.push_manifest(
            self.repository, self.ref.tag, rewritten.body, rewritten.media_type
        )
        self.pushed_digests.append(digest)
        if digest != pushed.digest:
            self._delete(pushed.digest, "the un-annotated manifest")
        if replaced:
            self._delete_blob(replaced, "the engine's image config")
        info = parse_manifest(rewritten.body, digest, rewritten.media_type)
        return PushedImage(digest, info, dropped)

    def _rewrite_config(
        self, pushed: RawManifest, rule: Callable[[Mapping[str, Any]], SavedConfig]
    ) -> tuple[bytes, str, tuple[str, ...]]:
        """The manifest naming the ruled config (pushed as a blob), the engine's config
        digest if it was replaced ("" if unchanged), the env names left out."""
        try:
            body = json.loads(pushed.body)
            old = dict(body["config"])
            engine_config = json.loads(self.client.get_blob(self.repository, old["digest"]))
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"the pushed image {self.ref} has no readable config: {e}") from e
        saved = rule(engine_config)
        data = json.dumps(saved.config).encode()
        digest = sha256_digest(data)
        if digest == old["digest"]:
            return pushed.body, "", saved.dropped_env
        self.client.push_blob(self.repository, data, digest)
        body["config"] = dict(old, digest=digest, size=len(data))
        return json.dumps(body, indent=2).encode(), str(old["digest"]), saved.dropped_env

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

    def _delete_blob(self, digest: str, what: str) -> None:
        try:
            self.client.delete_blob(self.repository, digest)
        except NotFound:
            pass
        except ImgsaveError as e:
            self._warn(f"could not delete {what} {self.repository}@{digest} (unreferenced "
                       f"now; the registry's garbage collection removes it): {e}")

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)
