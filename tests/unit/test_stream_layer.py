"""The overlay upper dir → OCI layer converter, on real files (no podman needed).

Whiteouts are made the way overlayfs makes them: a 0/0 character device (``os.mknod``,
needs root) and the ``trusted.overlay.opaque`` xattr (needs CAP_SYS_ADMIN). The tar
stream is read back with Python's :mod:`tarfile`, an independent reader.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder_jobs.streaming.overlay_layer import (
    BLOCK,
    EntryKind,
    LayerEntry,
    LayerStats,
    StreamingUnavailable,
    layer_entries,
    tar_chunks,
    tar_header,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and trusted.* xattrs need root")
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, v2


def _read_tar(upper: Path, chunk_size: int = 1 << 20) -> tuple[bytes, list[tarfile.TarInfo]]:
    data = b"".join(tar_chunks(layer_entries(str(upper)), chunk_size=chunk_size))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return data, archive.getmembers()


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    root = tmp_path / "upper"
    root.mkdir()
    return root


@needs_root
def test_char_device_0_0_becomes_a_whiteout_file(upper: Path) -> None:
    (upper / "etc").mkdir()
    os.mknod(upper / "etc" / "gone.conf", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.mknod(upper / "top-gone", stat.S_IFCHR, os.makedev(0, 0))

    entries = list(layer_entries(str(upper)))

    assert [(e.name, e.kind, e.size) for e in entries] == [
        ("etc", EntryKind.DIR, 0),
        ("etc/.wh.gone.conf", EntryKind.FILE, 0),
        (".wh.top-gone", EntryKind.FILE, 0),
    ]
    _, members = _read_tar(upper)
    whiteouts = {m.name: m for m in members if ".wh." in m.name}
    assert set(whiteouts) == {"etc/.wh.gone.conf", ".wh.top-gone"}
    assert all(m.isreg() and m.size == 0 for m in whiteouts.values())


@needs_root
def test_whiteouts_sharing_one_inode_are_not_hard_links(upper: Path) -> None:
    # Recent kernels make every whiteout a hard link of one shared inode.
    os.mknod(upper / "a", stat.S_IFCHR, os.makedev(0, 0))
    os.link(upper / "a", upper / "b")
    _, members = _read_tar(upper)
    assert [(m.name, m.type) for m in members] == [
        (".wh.a", tarfile.REGTYPE),
        (".wh.b", tarfile.REGTYPE),
    ]


@needs_root
def test_opaque_directory_gets_an_opaque_marker_and_loses_overlay_xattrs(upper: Path) -> None:
    replaced = upper / "opt" / "lib"
    replaced.mkdir(parents=True, mode=0o750)
    os.chmod(replaced, 0o750)
    os.setxattr(replaced, "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "opt", "trusted.overlay.impure", b"y")
    (replaced / "new.py").write_text("x = 1\n")

    _, members = _read_tar(upper)

    assert [m.name for m in members] == ["opt", "opt/lib", "opt/lib/.wh..wh..opq", "opt/lib/new.py"]
    marker = members[2]
    assert marker.isreg() and marker.size == 0 and marker.mode == 0o750
    assert all(not k.startswith("SCHILY.xattr.trusted") for m in members for k in m.pax_headers)


@needs_root
def test_metacopy_or_redirect_refuses_streaming(upper: Path) -> None:
    (upper / "big.bin").write_bytes(b"")
    os.setxattr(upper / "big.bin", "trusted.overlay.metacopy", b"")
    with pytest.raises(StreamingUnavailable, match="metacopy"):
        list(layer_entries(str(upper)))


def test_tree_round_trips_through_tarfile(upper: Path) -> None:
    (upper / "usr" / "lib").mkdir(parents=True)
    blob = os.urandom(3 * 1024 * 1024 + 17)  # spans several chunks, not block aligned
    (upper / "usr" / "lib" / "big.so").write_bytes(blob)
    (upper / "usr" / "lib" / "small.py").write_text("print('hi')\n")
    (upper / "usr" / "lib" / "empty").write_bytes(b"")
    os.chmod(upper / "usr" / "lib" / "small.py", 0o4755)
    os.symlink("big.so", upper / "usr" / "lib" / "link.so")
    os.link(upper / "usr" / "lib" / "small.py", upper / "usr" / "lib" / "a-hard.py")
    os.mkfifo(upper / "usr" / "fifo")
    (upper / "tmp").mkdir(mode=0o1777)
    os.chmod(upper / "tmp", 0o1777)
    os.utime(upper / "usr" / "lib" / "small.py", (1_700_000_000.7, 1_700_000_000.7))

    data, members = _read_tar(upper, chunk_size=64 * 1024)

    by_name = {m.name: m for m in members}
    assert [m.name for m in members] == [
        "tmp", "usr", "usr/fifo", "usr/lib", "usr/lib/a-hard.py", "usr/lib/big.so",
        "usr/lib/empty", "usr/lib/link.so", "usr/lib/small.py",
    ]  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        extracted = archive.extractfile("usr/lib/big.so")
        assert extracted is not None and extracted.read() == blob
    # sorted by name, so "a-hard.py" comes first and holds the data
    assert by_name["usr/lib/a-hard.py"].isreg() and by_name["usr/lib/a-hard.py"].size == 12
    assert by_name["usr/lib/small.py"].islnk()
    assert by_name["usr/lib/small.py"].linkname == "usr/lib/a-hard.py"
    assert by_name["usr/lib/a-hard.py"].mode == 0o4755
    assert by_name["usr/lib/a-hard.py"].mtime == 1_700_000_000  # whole seconds
    assert by_name["usr/lib/link.so"].issym() and by_name["usr/lib/link.so"].linkname == "big.so"
    assert by_name["usr/fifo"].isfifo()
    assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))


def test_children_follow_their_directory_before_its_next_sibling(upper: Path) -> None:
    # byte order of whole paths would put "a-b" before "a/x"; a tree walk must not.
    (upper / "a").mkdir()
    (upper / "a" / "x").write_text("1")
    (upper / "a-b").write_text("2")
    assert [e.name for e in layer_entries(str(upper))] == ["a", "a/x", "a-b"]


def test_xattrs_that_travel_are_the_ones_containers_storage_keeps(upper: Path) -> None:
    target = upper / "ping"
    target.write_bytes(b"\x7fELF")
    os.setxattr(target, "security.capability", CAPABILITY)
    os.setxattr(target, "user.mime_type", b"application/x-\xff\x00binary")
    os.setxattr(target, "user.overlay.origin", b"skip me")

    (entry,) = list(layer_entries(str(upper)))
    assert dict(entry.xattrs) == {
        "security.capability": CAPABILITY,
        "user.mime_type": b"application/x-\xff\x00binary",
    }
    _, (member,) = _read_tar(upper)
    # tarfile decodes PAX values as UTF-8 with surrogateescape: encode back to compare bytes
    raw = {k: v.encode("utf-8", "surrogateescape") for k, v in member.pax_headers.items()}
    assert raw["SCHILY.xattr.security.capability"] == CAPABILITY
    assert raw["SCHILY.xattr.user.mime_type"] == b"application/x-\xff\x00binary"
    assert "SCHILY.xattr.user.overlay.origin" not in raw


def test_long_and_non_utf8_names(upper: Path) -> None:
    deep = upper / ("d" * 120) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("deep")  # 120+1+90+1+5 bytes: fits ustar prefix + name
    longest = upper / ("g" * 200)
    longest.mkdir()
    (longest / ("h" * 200)).write_text("pax path")  # no ustar split possible
    os.symlink("t" * 150, upper / "long-link")
    raw_name = os.fsencode(str(upper)) + b"/caf\xe9-latin1"
    with open(raw_name, "wb") as f:
        f.write(b"latin1")

    data, members = _read_tar(upper)

    names = {m.name for m in members}
    assert f"{'d' * 120}/{'e' * 90}/f.txt" in names
    assert f"{'g' * 200}/{'h' * 200}" in names
    assert os.fsdecode(b"caf\xe9-latin1") in names
    link = next(m for m in members if m.name == "long-link")
    assert link.linkname == "t" * 150
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile(f"{'g' * 200}/{'h' * 200}")
        assert member is not None and member.read() == b"pax path"


def test_big_ids_and_headers_are_valid_blocks() -> None:
    entry = LayerEntry("f", EntryKind.FILE, 0o644, uid=3_000_000, gid=65534, mtime=-5)
    header = tar_header(entry)
    assert len(header) % 512 == 0
    member = tarfile.TarInfo.frombuf(header[-512:], "utf-8", "surrogateescape")
    assert member.name == "f"
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024))) as archive:
        (read,) = archive.getmembers()
    assert read.uid == 3_000_000 and read.gid == 65534 and read.mtime == -5


def test_a_file_that_shrinks_while_read_keeps_the_tar_well_formed(upper: Path) -> None:
    path = upper / "log"
    path.write_bytes(b"x" * 5000)
    entries = list(layer_entries(str(upper)))
    path.write_bytes(b"y" * 10)  # the container was not paused
    stats = LayerStats()
    data = b"".join(tar_chunks(entries, stats=stats))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile("log")
        assert member is not None and member.read() == b"y" * 10 + bytes(4990)
    assert stats.changed == ["log"]
    assert stats.files == 1 and stats.tar_bytes == len(data)


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(5000, 1 << 20), (1 << 16, 1 << 16), (3 << 16, 1 << 16)],
    ids=["within-a-chunk", "one-whole-chunk", "whole-chunks"],
)
def test_a_file_that_grows_while_read_is_cut_to_its_header_size(
    upper: Path, size: int, chunk_size: int
) -> None:
    # The growth check rides on the last read (one byte more than is left), or is a
    # read of its own when the file ends on a chunk boundary: both must see it.
    path = upper / "log"
    path.write_bytes(b"x" * size)
    entries = list(layer_entries(str(upper)))
    path.write_bytes(b"y" * (size + 700))
    stats = LayerStats()
    data = b"".join(tar_chunks(entries, chunk_size=chunk_size, stats=stats))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile("log")
        assert member is not None and member.read() == b"y" * size
    assert stats.changed == ["log"]
    assert stats.tar_bytes == len(data) and len(data) % BLOCK == 0


@pytest.mark.parametrize(
    ("size", "chunk_size"), [(0, 64), (100, 64), (1 << 16, 1 << 16), (5000, 1 << 20)]
)
def test_a_file_read_unchanged_is_not_reported(upper: Path, size: int, chunk_size: int) -> None:
    (upper / "f").write_bytes(os.urandom(size))
    stats = LayerStats()
    data = b"".join(tar_chunks(layer_entries(str(upper)), chunk_size=chunk_size, stats=stats))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile("f")
        assert member is not None and member.read() == (upper / "f").read_bytes()
    assert stats.changed == [] and stats.files == (1 if size else 0)


@pytest.mark.parametrize(
    "entry",
    [
        LayerEntry("n" * 100, EntryKind.FILE, 0o644, uid=8**7 - 1, gid=8**7 - 1, size=0),
        LayerEntry("n" * 100, EntryKind.FILE, 0o644, uid=8**7, gid=0, mtime=8**11 - 1),
        LayerEntry("n" * 101, EntryKind.FILE, 0o644, mtime=8**11),
        LayerEntry("d" * 99, EntryKind.DIR, 0o755),
        LayerEntry("l", EntryKind.SYMLINK, 0o777, linkname="t" * 100),
        LayerEntry("l", EntryKind.SYMLINK, 0o777, linkname="t" * 101),
        LayerEntry("c", EntryKind.CHAR, 0o666, devmajor=1, devminor=3),
        LayerEntry("x", EntryKind.FILE, 0o600, xattrs={"user.a": b"b"}),
    ],
    ids=lambda e: f"{e.kind.name}-{len(e.name)}-{e.uid}-{e.mtime}-{len(e.linkname)}",
)
def test_headers_at_the_ustar_limits_read_back_exactly(entry: LayerEntry) -> None:
    header = tar_header(entry)
    assert len(header) % BLOCK == 0
    with tarfile.open(fileobj=io.BytesIO(header + bytes(-entry.size % BLOCK) + bytes(1024))) as t:
        (member,) = t.getmembers()
    assert member.name == entry.name
    assert (member.uid, member.gid, member.mtime) == (entry.uid, entry.gid, entry.mtime)
    assert member.linkname == entry.linkname and member.mode == entry.mode
    assert (member.devmajor, member.devminor) == (entry.devmajor, entry.devminor)
    assert {k.removeprefix("SCHILY.xattr.") for k in member.pax_headers if "xattr" in k} == set(
        entry.xattrs
    )


@needs_root
@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar as a second reader")
def test_an_upper_dir_with_every_kind_of_change_reads_back_in_gnu_tar(upper: Path) -> None:
    # Whiteout (0/0 device), opaque directory, capability, hard links, long and
    # non-UTF-8 names in one upper dir; GNU tar, a reader independent of Python's,
    # must list exactly the converted tree.
    (upper / "etc").mkdir()
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.mknod(upper / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (upper / "opt" / "lib").mkdir(parents=True)
    os.setxattr(upper / "opt" / "lib", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "opt", "trusted.overlay.impure", b"y")
    ping = upper / "opt" / "lib" / "ping"
    ping.write_bytes(b"\x7fELF" * 1000)
    os.setxattr(ping, "security.capability", CAPABILITY)
    os.link(ping, upper / "opt" / "lib" / "ping6")
    deep = upper / ("d" * 120) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("deep")
    (upper / ("g" * 200)).mkdir()
    (upper / ("g" * 200) / ("h" * 200)).write_text("pax path")
    with open(os.fsencode(str(upper)) + b"/caf\xe9", "wb") as f:
        f.write(b"latin1")

    data = b"".join(tar_chunks(layer_entries(str(upper)), chunk_size=4096))
    listed = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--quoting-style=literal", "-tf", "-"],
        input=data, capture_output=True, check=True,
    )  # fmt: skip
    assert listed.stdout.splitlines() == [
        b"caf\xe9",
        b"d" * 120 + b"/",
        b"d" * 120 + b"/" + b"e" * 90 + b"/",
        b"d" * 120 + b"/" + b"e" * 90 + b"/f.txt",
        b"etc/",
        b"etc/.wh.gone",
        b"etc/null",
        b"g" * 200 + b"/",
        b"g" * 200 + b"/" + b"h" * 200,
        b"opt/",
        b"opt/lib/",
        b"opt/lib/.wh..wh..opq",
        b"opt/lib/ping",
        b"opt/lib/ping6",
    ]
    assert not listed.stderr
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        by_name = {m.name: m for m in archive.getmembers()}
    assert by_name["etc/.wh.gone"].isreg() and by_name["etc/.wh.gone"].size == 0
    assert by_name["etc/null"].ischr() and by_name["etc/null"].devminor == 3
    assert by_name["opt/lib/ping6"].islnk() and by_name["opt/lib/ping6"].linkname == "opt/lib/ping"
    cap = by_name["opt/lib/ping"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAPABILITY
    assert not any("overlay" in k for m in by_name.values() for k in m.pax_headers)
