"""One blob upload session (OCI chunked upload) that resumes a failed chunk.

``POST`` opens the upload, each chunk goes as a ``PATCH`` with ``Content-Range`` and
``Content-Length``, and ``PUT ?digest=`` closes it (OCI distribution spec, "Pushing a
blob in chunks"). The POST and the closing PUT are retried by the transport's policy
(:mod:`registry.retry`). A PATCH is not: when one fails (connection lost, 5xx, 416),
the registry is asked where the upload stands (``GET`` on the upload URL, ``Range:
0-N``) and the chunk, still in memory, is resent from byte N+1.

That needs a registry that kept exactly what it acknowledged. distribution (and Harbor,
built on it) keeps every byte it read, so a chunk cut in the middle leaves more data
than the upload's state token says; the next request with that token answers
``BLOB_UPLOAD_INVALID`` and distribution deletes the upload ("upload resumed at wrong
offset", registry/handlers/blobupload.go). A registry restarted with a new random
``http.secret`` refuses every old token the same way. Both end as :class:`UploadLost`,
a retryable error: the save has to start again.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from core.errors import ImgsaveError, RegistryError
from registry.tokens import repository_scope
from registry.transport import RegistryTransport, error_message

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
# distribution answers these (HTTP 404) for an upload it no longer has or whose state
# token it refuses; other registries may use 400.
_LOST_CODES = frozenset({"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"})
_RANGE = re.compile(r"^(?:bytes=)?(\d+)-(\d+)$")


class UploadLost(RegistryError):
    """The registry no longer has the upload (restarted, purged it, or refuses its state
    token); nothing can be resumed. Retryable: a new save starts a new upload."""


class BlobUpload:
    """An upload of one blob to ``repository``: :meth:`start`, :meth:`append` chunks,
    then :meth:`finish` (or :meth:`cancel`). ``offset`` counts the bytes the registry
    has acknowledged; ``resumed`` the chunks resent after a failure."""

    def __init__(self, client: RegistryTransport, repository: str) -> None:
        self.client = client
        self.repository = repository
        self.scope = repository_scope(repository, "pull", "push")
        self.location = ""
        self.offset = 0
        self.resumed = 0

    def start(self) -> None:
        """Open the upload (``POST``); its URL is kept in :attr:`location`."""
        response = self.client.send(
            "POST", f"/v2/{self.repository}/blobs/uploads/", scope=self.scope
        )
        self.client.check(response, f"start a blob upload to {self.repository}", 202)
        self.location = response.headers.get("Location", "")
        if not self.location:
            raise RegistryError(
                f"registry at {self.client.base_url} started an upload without a Location"
            )

    def append(self, chunk: bytes) -> None:
        """Send ``chunk`` at :attr:`offset`. A failure is retried (by the client's retry
        policy) from the offset the registry reports; :class:`UploadLost` if it lost
        the upload, a retryable :class:`RegistryError` once the attempts are spent."""
        if not chunk:
            return
        policy = self.client.retry
        done = 0  # bytes of ``chunk`` the registry has
        for attempt in range(1, policy.attempts + 1):
            failure = self._patch(chunk, done)
            if failure is None:
                break
            if attempt == policy.attempts:
                raise RegistryError(
                    f"registry at {self.client.base_url} did not take bytes "
                    f"{self.offset + done}-{self.offset + len(chunk) - 1} of a blob upload to "
                    f"{self.repository} in {attempt} attempts: {failure.message}",
                    retryable=True,
                ) from failure
            delay = policy.delays()[attempt - 1]
            log.warning(
                "registry %s: a chunk of the upload to %s failed (%s); asking where the "
                "upload stands, attempt %d of %d in %.1f s",
                self.client.base_url, self.repository, failure.message, attempt + 1,
                policy.attempts, delay,
            )  # fmt: skip
            time.sleep(delay)
            done = self._registry_has(len(chunk))
            if done == len(chunk):
                break  # it all arrived; only the answer was lost
            self.resumed += 1
        self.offset += len(chunk)

    def finish(self, digest: str, body: bytes = b"") -> None:
        """Close the upload as ``digest`` (``PUT``, retried by the policy). A PUT whose
        answer was lost may have worked: a retry then finds no upload, and the blob
        being in the repository is success."""
        response = self.client.send(
            "PUT",
            _with_query(self.location, digest=digest),
            scope=self.scope,
            headers={"Content-Type": OCTET_STREAM},
            data=body,
        )
        if response.status_code in (201, 204):
            return
        if _lost(response) and self._has_blob(digest):
            return
        raise self.client.error(response, f"push blob {digest} to {self.repository}")

    def cancel(self) -> None:
        """Delete the upload, best effort (registries purge abandoned uploads)."""
        if not self.location:
            return
        try:
            self.client.send("DELETE", self.location, scope=self.scope)
        except ImgsaveError:
            pass

    # --- helpers ------------------------------------------------------------------------

    def _patch(self, chunk: bytes, done: int) -> RegistryError | None:
        """PATCH ``chunk[done:]``; None if taken, the error if another try may help."""
        start = self.offset + done
        body = chunk[done:] if done else chunk
        headers = {
            "Content-Type": OCTET_STREAM,
            "Content-Range": f"{start}-{start + len(body) - 1}",
        }
        try:
            response = self.client.send(
                "PATCH", self.location, scope=self.scope, headers=headers, data=body
            )
        except RegistryError as e:
            if not e.retryable:
                raise
            return e
        if response.status_code == 202:
            self.location = response.headers.get("Location", self.location)
            return None
        if _lost(response):
            raise self._lost_error(response)
        error = self.client.error(response, f"upload a chunk of a blob to {self.repository}")
        if response.status_code == 416:  # not where the registry stands: ask it
            return RegistryError(error_message(response), retryable=True)
        if isinstance(error, RegistryError) and error.retryable:
            return error
        raise error

    def _registry_has(self, size: int) -> int:
        """How many bytes of the current chunk (``size`` long) the registry has."""
        response = self.client.send("GET", self.location, scope=self.scope)
        if _lost(response):
            raise self._lost_error(response)
        what = f"report the state of a blob upload to {self.repository}"
        self.client.check(response, what, 204, 200, 202)
        self.location = response.headers.get("Location", self.location)
        header = response.headers.get("Range", "")
        match = _RANGE.match(header.strip())
        if not match:
            raise UploadLost(
                f"registry at {self.client.base_url} did not say where the upload to "
                f"{self.repository} stands (Range {header!r}); run the save again",
                retryable=True,
            )
        end = int(match.group(2))
        # "0-0" is both "no bytes" and "one byte" (distribution writes it for both)
        at = 0 if end == 0 and self.offset == 0 else end + 1
        if not self.offset <= at <= self.offset + size:
            raise UploadLost(
                f"registry at {self.client.base_url} has {at} bytes of the upload to "
                f"{self.repository}, but only bytes {self.offset}-{self.offset + size - 1} "
                "are still in memory to resend; run the save again",
                retryable=True,
            )
        return at - self.offset

    def _lost_error(self, response: requests.Response) -> UploadLost:
        return UploadLost(
            f"registry at {self.client.base_url} lost the upload to {self.repository} "
            f"({error_message(response)}): it was restarted, purged the upload, or no "
            "longer accepts its state token; run the save again",
            retryable=True,
        )

    def _has_blob(self, digest: str) -> bool:
        response = self.client.send(
            "HEAD", f"/v2/{self.repository}/blobs/{digest}", scope=self.scope
        )
        return response.status_code == 200


def _lost(response: requests.Response) -> bool:
    if response.status_code not in (400, 404):
        return False
    try:
        errors = response.json().get("errors") or []
        codes = {e.get("code") for e in errors if isinstance(e, dict)}
    except (ValueError, AttributeError):
        codes = set()
    return bool(codes & _LOST_CODES) or (response.status_code == 404 and not codes)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
