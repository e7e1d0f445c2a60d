"""Layer compressors: zstd with worker threads, gzip with pigz or zlib.

Each codec turns an iterable of tar chunks into compressed pieces and names the OCI
layer media type of its output. :func:`codec_for` picks one from the site's name for
it. zstd (the ``zstandard`` package) and pigz get one worker per CPU this process may
run on (a batch job's cpuset, not the whole node); zlib, the fallback when pigz is not
installed, uses one core. Measured speeds are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import zlib
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import IO, Protocol

from core.errors import CommandFailed, ConfigError
from registry.manifests import OCI_LAYER_GZIP, OCI_LAYER_ZSTD

PIGZ_READ = 1 << 20


class Codec(Protocol):
    """A compressor for layer streams."""

    @property
    def name(self) -> str:
        """The site's name for it: zstd or gzip."""
        ...

    @property
    def media_type(self) -> str:
        """The OCI layer media type of the output."""
        ...

    def compress(self, chunks: Iterable[bytes | bytearray]) -> Generator[bytes, None, None]:
        """The compressed form of the concatenated ``chunks``, in pieces."""
        ...


@dataclass(frozen=True)
class ZstdCodec:
    """zstd via the ``zstandard`` package; ``threads``: worker threads (-1: every
    online CPU, 0: compress in the calling thread)."""

    level: int = 1
    threads: int = -1
    name: str = "zstd"
    media_type: str = OCI_LAYER_ZSTD

    def compress(self, chunks: Iterable[bytes | bytearray]) -> Generator[bytes, None, None]:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=self.level, threads=self.threads)
        stream = compressor.compressobj()
        for chunk in chunks:
            out = stream.compress(chunk)
            if out:
                yield out
        yield stream.flush()


@dataclass(frozen=True)
class ZlibGzipCodec:
    """gzip with Python's zlib: one core, always available."""

    level: int = 1
    name: str = "gzip"
    media_type: str = OCI_LAYER_GZIP

    def compress(self, chunks: Iterable[bytes | bytearray]) -> Generator[bytes, None, None]:
        stream = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # 31: gzip framing
        for chunk in chunks:
            out = stream.compress(chunk)
            if out:
                yield out
        yield stream.flush()


@dataclass(frozen=True)
class PigzCodec:
    """gzip with ``pigz`` (all cores): the tar goes to its stdin from a feeder thread."""

    binary: str
    level: int = 1
    processes: int = 0  # pigz -p; 0: pigz's default (every online CPU)
    name: str = "gzip"
    media_type: str = OCI_LAYER_GZIP

    def compress(self, chunks: Iterable[bytes | bytearray]) -> Generator[bytes, None, None]:
        argv = [self.binary, f"-{self.level}", "-c", "-n"]
        if self.processes:
            argv += ["-p", str(self.processes)]
        process = subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdin and process.stdout and process.stderr  # all three are PIPE
        failure: list[BaseException] = []
        feeder = threading.Thread(target=_feed, args=(chunks, process.stdin, failure))
        feeder.start()
        out = process.stdout.fileno()
        finished = False
        try:
            while piece := os.read(out, PIGZ_READ):
                yield piece
            finished = True
        finally:
            if not finished:  # the consumer stopped early: stop pigz (and so the feeder)
                process.kill()
            feeder.join()
            stderr = process.stderr.read().decode(errors="replace")
            code = process.wait()
            process.stdout.close()
            process.stderr.close()
        if failure:
            raise failure[0]
        if code != 0:
            raise CommandFailed(argv, code, "", stderr)


def _feed(
    chunks: Iterable[bytes | bytearray], sink: IO[bytes], failure: list[BaseException]
) -> None:
    try:
        for chunk in chunks:
            sink.write(chunk)
    except BrokenPipeError:
        pass  # pigz died: its exit code says why
    except BaseException as e:  # noqa: BLE001 - handed to the reading thread, re-raised there
        failure.append(e)
    finally:
        try:
            sink.close()
        except OSError:
            pass


def codec_for(compression: str, level: int | None = None) -> Codec:
    """The codec for a site's ``compression`` ("zstd" or "gzip"); level 1 by default.

    zstd and pigz get one thread per CPU this process may run on (a batch job's
    cpuset, not the whole node).
    """
    cpus = len(os.sched_getaffinity(0))
    if compression == "zstd":
        return ZstdCodec(level=level or 1, threads=cpus if cpus > 1 else 0)
    if compression == "gzip":
        pigz = shutil.which("pigz")
        if pigz:
            return PigzCodec(pigz, level=level or 1, processes=cpus)
        return ZlibGzipCodec(level=level or 1)
    raise ConfigError(f"unknown layer compression {compression!r}; valid: gzip, zstd")
