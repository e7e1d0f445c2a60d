"""Compress a layer tar stream, hash it both ways, and upload it as it is produced.

One pass over the tar chunks gives the layer's ``diff_id`` (sha256 of the tar) and its
blob digest (sha256 of the compressed bytes), and sends the compressed bytes to the
registry as they come, in ``PATCH`` chunks of ``chunk_bytes`` (OCI chunked upload, with
``Content-Range``), closed by ``PUT ?digest=``. The digest is known only at the end,
which is why :meth:`RegistryClient.push_blob` (digest first) is not used. Each chunk is
held until the registry has acknowledged it, so a chunk that fails (connection lost,
5xx) is resent from the offset the registry reports (:class:`registry.upload.BlobUpload`,
bounded by the site's ``[registry]`` retry keys); a registry that lost the upload ends
the save with a retryable error.

Three threads (plus zstd's or pigz's own): a reader reads the tar; a compressor hashes
it and compresses it; the caller's thread hashes the compressed bytes and sends them.
Reading, hashing and compressing all leave the GIL, so they overlap. Up to
``buffer_bytes`` of compressed data may wait for the upload, so the read (during which
the container is paused) can run ahead of a slower registry; past that, the upload
slows the reader. Memory: ``buffer_bytes`` plus about twice ``chunk_bytes``. Size it to
the save job's memory limit.

The codecs are in :mod:`builder_jobs.streaming.codecs`; measured speeds in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from builder_jobs import cancel
from builder_jobs.streaming.codecs import Codec
from registry.oci import RegistryClient
from registry.upload import BlobUpload

BUFFER_BYTES = 256 << 20  # compressed bytes the reader may run ahead of the upload
CHUNK_BYTES = 16 << 20  # compressed bytes per PATCH, held until the registry has them
RAW_BUFFER_BYTES = 32 << 20  # tar bytes read ahead of the compressor
_DONE = object()
_CLOSED = object()


@dataclass(frozen=True)
class PushedLayer:
    """A layer now in the registry: its descriptor, its diff_id, and how long it took."""

    digest: str  # sha256 of the compressed blob
    size: int  # compressed bytes
    diff_id: str  # sha256 of the uncompressed tar
    tar_size: int
    media_type: str
    read_seconds: float  # until the tar stream was fully read (the container may resume)
    seconds: float  # until the registry had the whole blob


def push_layer(
    client: RegistryClient,
    repository: str,
    tar: Iterable[bytes | bytearray],
    codec: Codec,
    *,
    on_read_done: Callable[[], None] | None = None,
    progress: Callable[[int], None] | None = None,
    buffer_bytes: int = BUFFER_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
) -> PushedLayer:
    """Compress ``tar`` with ``codec`` and upload it to ``repository`` as it is made.

    ``on_read_done`` runs in the producer thread as soon as ``tar`` is exhausted (the
    caller unpauses the container there); ``progress`` gets the compressed bytes the
    registry has so far. The upload goes in chunks of ``chunk_bytes``, each kept until
    the registry has it, so a failed chunk is resent from where the registry stands
    (:class:`~registry.upload.BlobUpload`). A failure cancels the upload and stops the
    producer; the error is raised here.
    """
    started = time.monotonic()
    upload = BlobUpload(client, repository)
    upload.start()
    producer = _Producer(tar, codec, on_read_done, _Buffer(buffer_bytes))
    producer.start()
    hasher = hashlib.sha256()
    try:
        with cancel.deferred():  # a cancel ends the upload between chunks (see cancel)
            for chunk in _chunks(producer.chunks(), chunk_bytes):
                hasher.update(chunk)
                upload.append(chunk)
                if progress:
                    progress(upload.offset)
        cancel.raise_if_requested()  # the upload ended early: delete it, then fail
        if producer.error is not None:
            raise producer.error
        digest = "sha256:" + hasher.hexdigest()
        upload.finish(digest)
    except BaseException:
        producer.stop()
        upload.cancel()
        raise
    finally:
        producer.join()
    return PushedLayer(
        digest=digest,
        size=upload.offset,
        diff_id="sha256:" + producer.diff_hasher.hexdigest(),
        tar_size=producer.tar_size,
        media_type=codec.media_type,
        read_seconds=producer.read_done_at - started,
        seconds=time.monotonic() - started,
    )


def _chunks(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """``pieces`` cut into chunks of ``size`` bytes (the last one shorter); a cancel
    request ends them at the next piece."""
    held = bytearray()
    for piece in pieces:
        if cancel.requested.is_set():
            return
        held += piece
        while len(held) >= size:
            yield bytes(held[:size])
            del held[:size]
    if held and not cancel.requested.is_set():
        yield bytes(held)


class _Buffer:
    """Pieces handed from the producer to the uploader, holding at most ``limit`` bytes
    (one piece is always let through, whatever its size)."""

    def __init__(self, limit: int) -> None:
        self._items: deque[object] = deque()
        self._sizes: deque[int] = deque()
        self._held = 0
        self._limit = limit
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: object, size: int = 0) -> bool:
        """Queue ``item``; False (and dropped) once :meth:`close` was called."""
        with self._changed:
            while self._held and self._held + size > self._limit and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._sizes.append(size)
            self._held += size
            self._changed.notify_all()
            return True

    def get(self) -> object:
        """The oldest piece; ``_CLOSED`` once closed and empty."""
        with self._changed:
            while not self._items and not self._closed:
                self._changed.wait()
            if not self._items:
                return _CLOSED
            self._held -= self._sizes.popleft()
            self._changed.notify_all()
            return self._items.popleft()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class _Producer:
    """Two threads: one reads the tar; the other hashes and compresses it. Reading and
    hashing both leave the GIL, so on two cores they overlap with zstd's own workers.
    The compressed pieces wait in ``out`` for the uploader."""

    def __init__(
        self,
        tar: Iterable[bytes | bytearray],
        codec: Codec,
        on_read_done: Callable[[], None] | None,
        out: _Buffer,
    ) -> None:
        self._tar = tar
        self._codec = codec
        self._on_read_done = on_read_done
        self._raw = _Buffer(RAW_BUFFER_BYTES)
        self._out = out
        self._threads = [
            threading.Thread(target=self._read, name="layer-reader", daemon=True),
            threading.Thread(target=self._compress, name="layer-compressor", daemon=True),
        ]
        self.diff_hasher = hashlib.sha256()
        self.tar_size = 0
        self.read_done_at = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _read(self) -> None:
        outcome: object = _DONE
        try:
            for chunk in self._tar:
                if not self._raw.put(chunk, len(chunk)):
                    outcome = None  # stopped
                    break
        except BaseException as e:  # noqa: BLE001 - handed on, raised in the uploader
            outcome = e
        finally:
            close = getattr(self._tar, "close", None)
            if close is not None:
                close()  # a generator stopped early closes the file it was reading
        self.read_done_at = time.monotonic()
        if self._on_read_done:
            try:
                self._on_read_done()
            except BaseException as e:  # noqa: BLE001 - e.g. unpause failed
                outcome = e if outcome is _DONE else outcome
        if outcome is not None:
            self._raw.put(outcome)

    def _compress(self) -> None:
        stream = self._codec.compress(self._hashed())
        try:
            for piece in stream:
                if piece and not self._out.put(piece, len(piece)):
                    return
            self._out.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the uploader, raised there
            self._out.put(e)
        finally:
            stream.close()  # stops a compressor process (pigz) when we stop early

    def _hashed(self) -> Iterator[bytes | bytearray]:
        while True:
            item = self._raw.get()
            if item is _DONE or item is _CLOSED:
                return
            if isinstance(item, BaseException):
                raise item
            chunk = cast(bytes | bytearray, item)
            self.diff_hasher.update(chunk)
            self.tar_size += len(chunk)
            yield chunk

    def chunks(self) -> Iterator[bytes]:
        """The compressed pieces, in order. A failure ends them early and is kept in
        :attr:`error`: raised inside the HTTP library, an ``OSError`` from reading a
        file would pass for a network failure."""
        while True:
            item = self._out.get()
            if item is _DONE or item is _CLOSED:
                return
            if isinstance(item, BaseException):
                self.error = item
                return
            yield cast(bytes, item)

    def stop(self) -> None:
        self._raw.close()
        self._out.close()
