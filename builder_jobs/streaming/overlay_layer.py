"""A container's overlay upper dir as an OCI layer tar stream, read once.

The upper dir of a kernel overlayfs mount holds exactly what the container changed, in
overlay's own format; an OCI layer (image-spec ``layer.md``) holds the same changes in
the AUFS-style whiteout format. :func:`layer_entries` walks the upper dir and converts:

- a character device 0/0 (overlay's whiteout) becomes an empty file ``.wh.NAME``;
- a directory with ``trusted.overlay.opaque=y`` gets a ``.wh..wh..opq`` entry in it;
- ``trusted.overlay.*`` xattrs (overlay's bookkeeping) are never written; a file with
  ``trusted.overlay.metacopy`` or ``redirect`` has its data or name elsewhere, which a
  single-layer read cannot reproduce, so it raises :class:`StreamingUnavailable`.

Which xattrs travel follows containers/storage (``pkg/archive``), so a streaming and an
engine commit of the same container give the same tree: ``security.capability`` and
``user.*`` except ``user.overlay.*``. Order is deterministic: depth first, each
directory's names sorted by bytes, each directory before what it holds. Hard links are
found by inode among regular files (overlay whiteouts share one inode: not links).
Times are whole seconds, as in containers/storage. The root itself is not an entry.

:func:`tar_chunks` writes the entries as a POSIX tar (ustar headers, PAX records only
where needed: long names, big ids, xattrs) and yields chunks of about ``chunk_size``.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from core.errors import ImgsaveError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
UNSUPPORTED_XATTRS = ("trusted.overlay.metacopy", "trusted.overlay.redirect")
BLOCK = 512
CHUNK_SIZE = 1 << 20
# ustar: name, mode, uid, gid, size, mtime, checksum, typeflag, linkname, magic+version,
# (uname, gname: empty), devmajor, devminor, prefix, padding. "s" pads with NULs, so a
# number's field holds its octal digits then NUL.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s64x8s8s155s12x")
_ZERO_BLOCK = memoryview(bytes(BLOCK))
# The numeric fields in the order of ustar's header, with the first value ustar's octal
# digits cannot hold (7 digits for ids, 11 for size and time); PAX records carry larger.
_NUMBER_FIELDS = ((b"uid", 8**7), (b"gid", 8**7), (b"size", 8**11), (b"mtime", 8**11))
_EMPTY: Mapping[str, bytes] = MappingProxyType({})


class StreamingUnavailable(ImgsaveError):
    """The container cannot be saved by reading its upper dir; use the engine's commit.

    ``reason`` is a short sentence for the save's result ("storage driver is vfs").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"streaming commit unavailable: {reason}", retryable=False)
        self.reason = reason


class EntryKind(enum.Enum):
    """A tar entry type; the value is its ustar typeflag."""

    FILE = b"0"
    HARDLINK = b"1"
    SYMLINK = b"2"
    CHAR = b"3"
    BLOCK = b"4"
    DIR = b"5"
    FIFO = b"6"


@dataclass(frozen=True)
class LayerEntry:
    """One tar entry of the layer. ``source`` is the file to copy data from (FILE only)."""

    name: str  # relative, "/"-separated, no leading "./" nor trailing "/"
    kind: EntryKind
    mode: int  # permission bits, 0o7777
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=lambda: _EMPTY)
    source: str = ""


def layer_entries(upper: str) -> Iterator[LayerEntry]:
    """The OCI layer entries for the overlay upper dir ``upper``, in tar order."""
    links: dict[tuple[int, int], str] = {}
    # One iterator per open directory: children come right after their directory and
    # before its next sibling, without recursion (no depth limit).
    stack = [iter(_children(upper, ""))]
    while stack:
        try:
            path, rel = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        st = os.lstat(path)
        xattrs = _xattrs(path, rel)
        if stat.S_ISDIR(st.st_mode):
            yield _entry(rel, EntryKind.DIR, st, xattrs)
            if xattrs.get(OPAQUE_XATTR) == b"y":
                mode = stat.S_IMODE(st.st_mode)
                yield LayerEntry(
                    f"{rel}/{OPAQUE_MARKER}", EntryKind.FILE, mode, st.st_uid, st.st_gid
                )
            stack.append(iter(_children(path, rel + "/")))
            continue
        entry = _non_dir(path, rel, st, xattrs, links)
        if entry is not None:
            yield entry


def _children(directory: str, prefix: str) -> list[tuple[str, str]]:
    names = sorted(os.listdir(directory), key=os.fsencode)
    return [(os.path.join(directory, name), prefix + name) for name in names]


def _non_dir(
    path: str,
    rel: str,
    st: os.stat_result,
    xattrs: Mapping[str, bytes],
    links: dict[tuple[int, int], str],
) -> LayerEntry | None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if st.st_nlink > 1:
            first = links.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                return _entry(rel, EntryKind.HARDLINK, st, xattrs, linkname=first)
        return _entry(rel, EntryKind.FILE, st, xattrs, size=st.st_size, source=path)
    if stat.S_ISLNK(mode):
        return _entry(rel, EntryKind.SYMLINK, st, xattrs, linkname=os.readlink(path))
    if stat.S_ISCHR(mode) and st.st_rdev == 0:
        head, _, tail = rel.rpartition("/")
        name = f"{head}/{WHITEOUT_PREFIX}{tail}" if head else WHITEOUT_PREFIX + tail
        return LayerEntry(
            name, EntryKind.FILE, stat.S_IMODE(mode), st.st_uid, st.st_gid, int(st.st_mtime)
        )
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = EntryKind.CHAR if stat.S_ISCHR(mode) else EntryKind.BLOCK
        rdev = st.st_rdev
        return _entry(rel, kind, st, xattrs, devmajor=os.major(rdev), devminor=os.minor(rdev))
    if stat.S_ISFIFO(mode):
        return _entry(rel, EntryKind.FIFO, st, xattrs)
    return None  # a socket: tar cannot hold one (containers/storage skips them too)


def _entry(
    rel: str,
    kind: EntryKind,
    st: os.stat_result,
    xattrs: Mapping[str, bytes],
    *,
    size: int = 0,
    linkname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    source: str = "",
) -> LayerEntry:
    kept = {k: v for k, v in xattrs.items() if _travels(k)} if xattrs else _EMPTY
    return LayerEntry(
        rel,
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        int(st.st_mtime),
        size,
        linkname,
        devmajor,
        devminor,
        kept or _EMPTY,
        source,
    )


def _travels(name: str) -> bool:
    return name == "security.capability" or (
        name.startswith("user.") and not name.startswith("user.overlay.")
    )


def _xattrs(path: str, rel: str) -> Mapping[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENODATA):
            return _EMPTY
        raise
    if not names:
        return _EMPTY
    for name in UNSUPPORTED_XATTRS:
        if name in names:
            raise StreamingUnavailable(
                f"{rel} in the upper dir has {name} (overlay metacopy/redirect_dir is on): "
                "its data or name lives in a lower layer"
            )
    values = {}
    for name in names:
        if name == OPAQUE_XATTR or _travels(name):
            try:
                values[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.ENODATA:  # removed between list and get
                    raise
    return values


# --- the tar writer --------------------------------------------------------------------


@dataclass
class LayerStats:
    """What :func:`tar_chunks` wrote: counts, and files whose size changed under it."""

    entries: int = 0
    files: int = 0
    file_bytes: int = 0
    tar_bytes: int = 0
    changed: list[str] = field(default_factory=list)


def tar_chunks(
    entries: Iterable[LayerEntry],
    *,
    chunk_size: int = CHUNK_SIZE,
    stats: LayerStats | None = None,
) -> Iterator[bytes | bytearray]:
    """The tar stream of ``entries`` in chunks of about ``chunk_size`` bytes.

    File data is read from each entry's ``source``. A file that shrank since it was
    listed is padded with zeros (and one that grew is cut) to the size its header
    says, and named in ``stats.changed``: the tar stays well formed either way.
    """
    stats = stats if stats is not None else LayerStats()
    # Headers and small files gather in ``buf``; a full one is handed on as it is (the
    # consumer keeps it) and a new one started. Pieces of a chunk or more go on alone.
    buf = bytearray()
    for entry in entries:
        stats.entries += 1
        buf += tar_header(entry)
        if entry.kind is EntryKind.FILE and entry.size:
            stats.files += 1
            stats.file_bytes += entry.size
            for piece in _file_data(entry, chunk_size, stats):
                if len(piece) < chunk_size:  # most files: one read, into the chunk
                    buf += piece
                    continue
                if buf:
                    stats.tar_bytes += len(buf)
                    yield buf
                    buf = bytearray()
                stats.tar_bytes += len(piece)
                yield piece
            buf += _ZERO_BLOCK[: -entry.size % BLOCK]
        if len(buf) >= chunk_size:
            stats.tar_bytes += len(buf)
            yield buf
            buf = bytearray()
    buf += bytes(2 * BLOCK)  # end of archive: two zero blocks
    stats.tar_bytes += len(buf)
    yield buf


def _file_data(entry: LayerEntry, chunk_size: int, stats: LayerStats) -> Iterator[bytes]:
    """The file's data in pieces of up to ``chunk_size`` + 1 bytes. Each read asks for one
    byte more than a chunk, or than what is left: on the last read, getting it shows that
    the file grew, without a read of its own."""
    fd = _open_noatime(entry.source)
    left = entry.size
    grew = False
    try:
        while left:
            piece = os.read(fd, min(left, chunk_size) + 1)
            if not piece:
                break
            if len(piece) > left:
                piece, grew = piece[:left], True
            left -= len(piece)
            yield piece
    finally:
        os.close(fd)
    if left or grew:
        stats.changed.append(entry.name)
    while left:  # shrank while we read: keep the header's promise
        pad = min(left, chunk_size)
        left -= pad
        yield bytes(pad)


def _open_noatime(path: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs the file's owner or CAP_FOWNER
        return os.open(path, flags)


def tar_header(entry: LayerEntry) -> bytes:
    """The header block(s) of one entry: a PAX extended header when needed, then ustar."""
    name = os.fsencode(entry.name) + (b"/" if entry.kind is EntryKind.DIR else b"")
    link = os.fsencode(entry.linkname)
    pax: list[tuple[bytes, bytes]] = []
    prefix, short = _split_name(name)
    if short is None:
        pax.append((b"path", name))
        prefix, short = b"", name[-100:].lstrip(b"/") or b"x"
    if len(link) > 100:
        pax.append((b"linkpath", link))
        link = link[:100]
    numbers = [entry.uid, entry.gid, entry.size, entry.mtime]
    for i, (number_field, limit) in enumerate(_NUMBER_FIELDS):
        if not 0 <= numbers[i] < limit:  # too big (or negative) for ustar's octal
            pax.append((number_field, str(numbers[i]).encode()))
            numbers[i] = 0
    for key in sorted(entry.xattrs):
        pax.append((b"SCHILY.xattr." + key.encode(), entry.xattrs[key]))
    uid, gid, size, mtime = numbers
    header = _ustar(short, entry.mode, uid, gid, size, mtime, entry.kind.value, link,
                    entry.devmajor, entry.devminor, prefix)  # fmt: skip
    if not pax:
        return header
    records = b"".join(_pax_record(key, value) for key, value in pax)
    pax_name = b"PaxHeaders/" + short.rstrip(b"/").rpartition(b"/")[2][:89]
    extended = _ustar(pax_name, 0o644, 0, 0, len(records), mtime, b"x", b"", 0, 0, b"")
    return extended + records + bytes(-len(records) % BLOCK) + header


def _split_name(name: bytes) -> tuple[bytes, bytes | None]:
    """ustar's (prefix, name) for a path: prefix up to 155 bytes, name up to 100."""
    if len(name) <= 100:
        return b"", name
    cut = name.find(b"/", len(name) - 101, 156)
    while cut != -1:
        if 0 < cut <= 155 and 0 < len(name) - cut - 1 <= 100:
            return name[:cut], name[cut + 1 :]
        cut = name.find(b"/", cut + 1, 156)
    return b"", None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length += 1
    return str(length).encode() + body


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    devmajor: int,
    devminor: int,
    prefix: bytes,
) -> bytes:
    header = _USTAR.pack(
        name,
        b"%07o" % mode,
        b"%07o" % uid,
        b"%07o" % gid,
        b"%011o" % size,
        b"%011o" % mtime,
        b"        ",  # the checksum counts its own field as spaces
        typeflag,
        linkname,
        b"ustar\x0000",
        b"%07o" % devmajor,
        b"%07o" % devminor,
        prefix,
    )
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]
