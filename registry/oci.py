"""The OCI distribution API, for any registry (Debian's docker-registry, Harbor, ...).

Endpoints follow the OCI distribution spec (``spec.md``: pull, push, content
discovery, content management). Lookups of absent things return None or an empty
list, so a rerun of a half-finished save is safe (binderhub's ``registry.py`` does the
same); pushes skip blobs the registry already has, so only new layers travel. Every
digest read back is checked against its content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace

import requests

from core.errors import ImgsaveError, InvalidRequest, NotFound, RegistryError
from registry.auth import Credentials
from registry.manifests import (
    MANIFEST_ACCEPT,
    ManifestInfo,
    created_from_config,
    parse_manifest,
    sha256_digest,
    verify_digest,
)
from registry.refs import check_digest, check_reference, check_repository
from registry.retry import RetryPolicy
from registry.tokens import CATALOG_SCOPE, repository_scope
from registry.transport import RegistryTransport
from registry.upload import BlobUpload
from site_configs.schema import RegistrySection

PAGE_SIZE = 1000
MAX_PAGES = 10_000  # a registry whose Link header loops must not hang a save
CONFIG_FETCH_LIMIT = 4 * 1024 * 1024  # read `created` from configs up to this size


class RegistryClient(RegistryTransport):
    """Read and write images in one registry through the OCI distribution API.

    ``verify`` is True (system CAs), False (no TLS check; only for a plain local
    registry) or the path of a CA bundle. Use :meth:`from_section` for the site's one.
    """

    @classmethod
    def from_section(
        cls, section: RegistrySection, credentials: Credentials | None = None
    ) -> RegistryClient:
        """A client for the site's registry (credentials from :func:`load_credentials`),
        retrying by the site's policy."""
        verify: bool | str = section.ca_bundle if section.ca_bundle else section.tls_verify
        retry = RetryPolicy(section.retry_attempts, section.retry_wait_seconds)
        return cls(
            section.url, credentials, verify=verify, timeout=section.timeout_seconds, retry=retry
        )

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- discovery ----------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry answers the v2 API and accepts our credentials."""
        response = self.send("GET", "/v2/", scope="")
        self.check(response, "answer the v2 API check", 200)

    def list_repositories(self, prefix: str = "") -> list[str]:
        """Repositories from ``/v2/_catalog``, following ``Link`` pages.

        ``prefix`` is a namespace path ("alice", "sif/alice"): only it and the
        repositories under it are returned, never "alice2/...".
        """
        base = prefix.strip("/")
        repos = self._paged("/v2/_catalog", "repositories", CATALOG_SCOPE, "list repositories")
        return [r for r in repos if not base or r == base or r.startswith(base + "/")]

    def list_tags(self, repository: str) -> list[str]:
        """Tags of ``repository``; [] when it does not exist (NAME_UNKNOWN)."""
        check_repository(repository)
        try:
            return self._paged(
                f"/v2/{repository}/tags/list",
                "tags",
                repository_scope(repository, "pull"),
                f"list tags of {repository}",
            )
        except NotFound:
            return []

    def manifest(
        self, repository: str, reference: str, *, with_config: bool = True
    ) -> ManifestInfo | None:
        """The manifest ``repository:reference`` (tag or digest) points to, or None.

        With ``with_config``, an image whose manifest has no ``created`` annotation
        gets it from its config blob (one more small GET).
        """
        found = self.manifest_bytes(repository, reference)
        if found is None:
            return None
        raw, media_type, digest = found
        info = parse_manifest(raw, digest, media_type)
        if with_config and not info.created and 0 < info.config_size <= CONFIG_FETCH_LIMIT:
            try:
                created = created_from_config(self.get_blob(repository, info.config_digest))
            except NotFound:
                created = ""
            if created:
                info = replace(info, created=created)
        return info

    def manifest_bytes(self, repository: str, reference: str) -> tuple[bytes, str, str] | None:
        """The manifest exactly as stored: (bytes, media type, verified digest), or None.

        For callers that must re-put or restore a manifest unchanged (annotating, undoing
        a failed save); :meth:`manifest` parses these bytes.
        """
        check_repository(repository)
        check_reference(reference)
        response = self.send(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=repository_scope(repository, "pull"),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        self.check(response, f"get manifest {repository}:{reference}", 200)
        raw = response.content
        digest = reference if ":" in reference else _header_digest(response, raw)
        verify_digest(raw, digest, f"manifest {repository}@{digest}")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return raw, media_type, digest

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest ``repository:reference`` resolves to (a HEAD request), or None."""
        check_repository(repository)
        check_reference(reference)
        response = self.send(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=repository_scope(repository, "pull"),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        self.check(response, f"resolve {repository}:{reference}", 200)
        digest = response.headers.get("Docker-Content-Digest", "")
        if digest:
            return digest
        info = self.manifest(repository, reference, with_config=False)  # header is optional
        return info.digest if info else None

    # --- blobs --------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        """Whether ``repository`` already has the blob ``digest``."""
        check_repository(repository)
        check_digest(digest)
        response = self.send(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scope=repository_scope(repository, "pull"),
        )
        if response.status_code == 404:
            return False
        self.check(response, f"check blob {digest} in {repository}", 200)
        return True

    def get_blob(self, repository: str, digest: str) -> bytes:
        """The blob's bytes, checked against ``digest``; :class:`NotFound` if absent."""
        check_repository(repository)
        check_digest(digest)
        response = self.send(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=repository_scope(repository, "pull"),
        )
        self.check(response, f"get blob {digest} from {repository}", 200)
        verify_digest(response.content, digest, f"blob {repository}@{digest}")
        return response.content

    def push_blob(self, repository: str, data: bytes | Iterable[bytes], digest: str) -> bool:
        """Upload a blob unless the registry has it; True if bytes were sent.

        ``bytes`` go in one POST + PUT (monolithic); an iterable of chunks goes as
        PATCH requests, one per chunk, then a closing PUT. The content is hashed on the
        way and a mismatch with ``digest`` cancels the upload (:class:`InvalidRequest`).
        """
        check_repository(repository)
        check_digest(digest)
        if self.blob_exists(repository, digest):
            return False
        upload = BlobUpload(self, repository)
        if isinstance(data, bytes | bytearray):
            _check_content(bytes(data), digest)
            upload.start()
            upload.finish(digest, bytes(data))
            return True
        upload.start()
        try:
            _append_checked(upload, data, digest)
            upload.finish(digest)
        except (ImgsaveError, OSError):
            upload.cancel()
            raise
        return True

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Link a blob from another repository of the same registry; False if refused.

        A registry that cannot mount (no access to the source, or the blob is absent)
        opens an ordinary upload instead; that upload is cancelled and False returned,
        and the caller pushes the blob.
        """
        check_repository(repository)
        check_repository(from_repository)
        check_digest(digest)
        scope = (
            f"{repository_scope(repository, 'pull', 'push')} "
            f"{repository_scope(from_repository, 'pull')}"
        )
        response = self.send(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope=scope,
            params={"mount": digest, "from": from_repository},
        )
        what = f"mount blob {digest} from {from_repository} into {repository}"
        self.check(response, what, 201, 202)
        if response.status_code == 201:
            return True
        opened = BlobUpload(self, repository)
        opened.location = response.headers.get("Location", "")
        opened.cancel()
        return False

    # --- manifests ----------------------------------------------------------------------

    def push_manifest(
        self, repository: str, reference: str, manifest: bytes, media_type: str
    ) -> str:
        """Put a manifest under a tag (or its digest); returns the manifest's digest.

        The blobs it names must be in the repository already.
        """
        check_repository(repository)
        check_reference(reference)
        digest = sha256_digest(manifest)
        if ":" in reference and reference != digest:
            raise InvalidRequest(f"manifest digest is {digest}, but it is pushed as {reference!r}")
        response = self.send(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=repository_scope(repository, "pull", "push"),
            headers={"Content-Type": media_type},
            data=manifest,
        )
        self.check(response, f"push manifest {repository}:{reference}", 201)
        returned = response.headers.get("Docker-Content-Digest", "")
        if returned and returned != digest:
            raise RegistryError(
                f"registry at {self.base_url} stored manifest {repository}:{reference} as "
                f"{returned}, but its content is {digest}"
            )
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete the manifest ``digest`` (and with it every tag that points to it).

        :class:`NotFound` if absent; :class:`RegistryError` if the registry has
        deletion turned off (distribution: ``storage.delete.enabled``).
        """
        check_repository(repository)
        check_digest(digest)
        response = self.send(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            scope=repository_scope(repository, "delete"),
        )
        what = f"delete {repository}@{digest}"
        if response.status_code == 405:
            raise RegistryError(
                f"registry at {self.base_url} refused to {what}: deletion is disabled on "
                "the registry (distribution: set storage.delete.enabled: true; Harbor: "
                "check the project's immutability and retention rules)"
            )
        self.check(response, what, 202, 200)

    def delete_blob(self, repository: str, digest: str) -> None:
        """Delete the blob ``digest`` from ``repository`` (spec: content management).

        :class:`NotFound` if absent; :class:`RegistryError` if the registry refuses
        (deletion disabled, or a registry that does not offer blob deletion).
        """
        check_repository(repository)
        check_digest(digest)
        response = self.send(
            "DELETE",
            f"/v2/{repository}/blobs/{digest}",
            scope=repository_scope(repository, "delete"),
        )
        self.check(response, f"delete blob {repository}@{digest}", 202, 200)

    def delete_tag_or_digest(self, repository: str, reference: str) -> str:
        """Delete by tag or digest; returns the digest deleted.

        A tag is resolved to its digest first, because the distribution API deletes
        manifests only by digest: other tags on the same digest go too.
        """
        check_repository(repository)
        check_reference(reference)
        if ":" in reference:
            digest: str | None = reference
        else:
            digest = self.manifest_digest(repository, reference)
        if digest is None:
            raise NotFound(
                f"{repository}:{reference} does not exist in the registry at {self.base_url}"
            )
        self.delete_manifest(repository, digest)
        return digest

    # --- helpers ------------------------------------------------------------------------

    def _paged(self, path: str, key: str, scope: str, what: str) -> list[str]:
        items: list[str] = []
        url: str | None = path
        params: dict[str, str] | None = {"n": str(PAGE_SIZE)} if key == "repositories" else None
        seen: set[str] = set()
        while url and url not in seen and len(seen) < MAX_PAGES:
            seen.add(url)
            response = self.check(self.send("GET", url, scope=scope, params=params), what, 200)
            try:
                page = response.json().get(key) or []
            except (ValueError, AttributeError) as e:
                raise RegistryError(f"registry at {self.base_url}: bad answer to {what}") from e
            items.extend(str(item) for item in page)
            url = response.links.get("next", {}).get("url")
            params = None  # the Link URL carries its own query
        return items


def _append_checked(upload: BlobUpload, chunks: Iterable[bytes], digest: str) -> None:
    """Send ``chunks``, hashing them; a content that is not ``digest`` is refused."""
    hasher = hashlib.new(digest.split(":", 1)[0])
    for chunk in chunks:
        if chunk:
            hasher.update(chunk)
            upload.append(bytes(chunk))
    actual = f"{hasher.name}:{hasher.hexdigest()}"
    if actual != digest:
        raise InvalidRequest(f"blob content is {actual}, but it was pushed as {digest}")


def _check_content(data: bytes, digest: str) -> None:
    actual = hashlib.new(digest.split(":", 1)[0], data).hexdigest()
    if digest.split(":", 1)[1] != actual:
        raise InvalidRequest(f"blob content does not match digest {digest}")


def _header_digest(response: requests.Response, raw: bytes) -> str:
    return response.headers.get("Docker-Content-Digest") or sha256_digest(raw)
