"""The incremental walker and the node's save records, on real files (no podman needed).

An upper dir is made in a temporary directory, indexed by a full walk, changed, then
walked again against the first index. The two layers are applied in order to an empty
tree by a small OCI applier (whiteouts, opaque markers, replace-on-type-change: the
image-spec's ``layer.md``) and compared with a full walk of the changed dir applied
alone: the incremental layer must give exactly the same tree, and hold only what changed.
Tree-equality against ``podman commit`` on a real overlay is in
``tests/cluster/test_incremental_resave.py``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from builder_jobs.streaming.incremental import WalkStats, indexed_entries
from builder_jobs.streaming.overlay_layer import (
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    EntryKind,
    LayerEntry,
    layer_entries,
)
from builder_jobs.streaming.save_index import (
    ContainerIdentity,
    RecordError,
    RecordStore,
    SaveRecord,
    UpperIndex,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and trusted.* xattrs need root")
CID = "a" * 64


def _apply(tree: dict[str, Any], entries: Iterable[LayerEntry]) -> dict[str, Any]:
    """Apply one layer's entries to ``tree`` (path -> what a layer says of it)."""
    layer_paths: set[str] = set()
    for e in entries:
        head, _, base = e.name.rpartition("/")
        prefix = f"{head}/" if head else ""
        if base == OPAQUE_MARKER:  # hides what lower layers hold in the directory
            for path in [p for p in tree if p.startswith(prefix) and p not in layer_paths]:
                del tree[path]
            continue
        if base.startswith(WHITEOUT_PREFIX):
            _remove(tree, prefix + base[len(WHITEOUT_PREFIX):])
            continue
        old = tree.get(e.name)
        if old is not None and not (old[0] is EntryKind.DIR and e.kind is EntryKind.DIR):
            _remove(tree, e.name)
        if e.kind is EntryKind.HARDLINK:
            tree[e.name] = (EntryKind.FILE, *tree[e.linkname][1:-1], e.linkname)
        else:
            data = Path(e.source).read_bytes() if e.source else b""
            tree[e.name] = (e.kind, e.mode, e.uid, e.gid, e.mtime, e.linkname,
                            hashlib.sha256(data).hexdigest(), sorted(e.xattrs.items()), "")
        layer_paths.add(e.name)
    return tree


def _remove(tree: dict[str, Any], path: str) -> None:
    for p in [p for p in tree if p == path or p.startswith(path + "/")]:
        del tree[p]


def _plain(tree: dict[str, Any]) -> dict[str, Any]:
    """Hard links compared by group, not by which name a layer happened to write first."""
    return {p: v[:-1] + (bool(v[-1]) or _linked(tree, p),) for p, v in tree.items()}


def _linked(tree: dict[str, Any], path: str) -> bool:
    return any(v[-1] == path for v in tree.values())


def _first_save(upper: Path) -> tuple[dict[str, Any], UpperIndex]:
    index: UpperIndex = {}
    return _apply({}, indexed_entries(str(upper), None, index)), index


def test_a_full_walk_writes_what_layer_entries_writes_and_indexes_every_path(
    tmp_path: Path,
) -> None:
    upper = tmp_path / "upper"
    (upper / "a/b").mkdir(parents=True)
    (upper / "a/b/f").write_text("f")
    os.link(upper / "a/b/f", upper / "a/g")
    (upper / "a/s").symlink_to("b/f")
    (upper / "z").write_bytes(b"z" * 5000)
    index: UpperIndex = {}

    walked = list(indexed_entries(str(upper), None, index))

    assert walked == list(layer_entries(str(upper)))
    assert list(index) == ["a", "a/b", "a/b/f", "a/g", "a/s", "z"]
    assert index["a/s"].link == "b/f" and index["z"].size == 5000
    assert index["a/g"].ino == index["a/b/f"].ino


def test_nothing_changed_gives_an_empty_layer(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d/f").write_text("x")
    _, index = _first_save(upper)
    stats = WalkStats()

    assert list(indexed_entries(str(upper), index, {}, stats)) == []
    assert stats.paths == 2 and stats.written == 0


def test_incremental_layer_gives_the_same_tree_as_a_full_save(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    for d in ("keep/deep", "gone/sub", "replaced", "stay", "to-file"):
        (upper / d).mkdir(parents=True)
    files = {"keep/deep/k": "k", "keep/change": "old", "keep/same": "same",
             "gone/sub/x": "x", "replaced/old": "o", "stay/mode": "m", "rename-me": "r",
             "to-file/inner": "i", "linked": "l", "untouched": "u" * 3000}  # fmt: skip
    for name, text in files.items():
        (upper / name).write_text(text)
    tree, index = _first_save(upper)

    (upper / "keep/change").write_text("new content")  # changed
    (upper / "keep/same").write_text("same")  # changed back to identical content
    (upper / "keep/new").write_text("new")  # new file
    for p in ("gone/sub/x", "gone/sub", "gone"):  # a deleted tree
        (upper / p).unlink() if (upper / p).is_file() else (upper / p).rmdir()
    (upper / "replaced/old").unlink()  # a directory deleted and re-created
    (upper / "replaced").rmdir()
    (upper / "replaced").mkdir()
    (upper / "replaced/fresh").write_text("f")
    (upper / "stay/mode").chmod(0o600)  # a permission-only change
    (upper / "rename-me").rename(upper / "keep/renamed")  # a rename
    os.link(upper / "linked", upper / "stay/hard")  # a new hard link to an old file
    (upper / "to-file/inner").unlink()
    (upper / "to-file").rmdir()
    (upper / "to-file").write_text("now a file")  # a directory replaced by a file
    stats = WalkStats()
    new_index: UpperIndex = {}

    diff = list(indexed_entries(str(upper), index, new_index, stats))
    full, full_index = _first_save(upper)

    assert _plain(_apply(tree, diff)) == _plain(full)
    assert new_index == full_index
    written = {e.name for e in diff}
    assert {"untouched", "keep/deep", "keep/deep/k"}.isdisjoint(written)
    assert {".wh.gone", ".wh.rename-me", "keep/change", "keep/same", "keep/new",
            "keep/renamed", "stay/mode", "to-file", "replaced/fresh"} <= written  # fmt: skip
    assert not any(n.startswith("gone/") for n in written)  # the topmost whiteout only
    assert "keep" in written  # an ancestor of what changed: its mtime stays right
    assert sorted(stats.deleted) == ["gone", "rename-me", "replaced/old"] or sorted(
        stats.deleted) == ["gone", "rename-me"]  # replaced/ may reuse its inode number


@needs_root
def test_a_replaced_directory_is_opaque_and_written_whole(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d/old").mkdir(parents=True)
    (upper / "d/old/f").write_text("f")
    (upper / "d/keep").write_text("k")
    tree, index = _first_save(upper)
    os.rename(upper / "d", tmp_path / "aside")  # keeps the inode alive: a new one for d
    (upper / "d").mkdir()
    (upper / "d/keep").write_text("k")
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "w", stat.S_IFCHR, os.makedev(0, 0))  # overlay's whiteout

    diff = list(indexed_entries(str(upper), index, {}))

    names = [e.name for e in diff]
    assert names == ["d", f"d/{OPAQUE_MARKER}", "d/keep", ".wh.w"]
    assert _plain(_apply(tree, diff)) == _plain(_first_save(upper)[0])


@needs_root
def test_an_opaque_directory_kept_since_the_earlier_save_is_not_marked_again(
    tmp_path: Path,
) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d/n").write_text("n")
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    tree, index = _first_save(upper)
    (upper / "d/new").write_text("new")

    diff = list(indexed_entries(str(upper), index, {}))

    assert [e.name for e in diff] == ["d", "d/new"]  # no .wh..wh..opq: d/n stays
    assert _plain(_apply(tree, diff)) == _plain(_first_save(upper)[0])


# --- the record store ------------------------------------------------------------------


def _record(index: UpperIndex | None = None) -> SaveRecord:
    identity = ContainerIdentity("podman", CID, "2026-01-01", "2026-01-02", "/u")
    return SaveRecord(identity, "alice", "127.0.0.1:5000", "alice/x", "sha256:m",
                      "sha256:c", 2, 1, 100, index or {})  # fmt: skip


def test_a_record_round_trips_and_is_private(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    _, index = _first_save(upper)
    store = RecordStore(tmp_path / "state")

    store.save(_record(index))

    assert store.load(CID) == _record(index)
    path = store.path_for(CID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.load("b" * 64) is None


def test_bad_ids_planted_links_and_open_modes_are_refused(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    with pytest.raises(RecordError):
        store.path_for("../../etc/passwd")
    store.save(_record())
    path = store.path_for(CID)
    path.chmod(0o644)
    with pytest.raises(RecordError, match="open to others"):
        store.load(CID)
    path.unlink()
    target = tmp_path / "elsewhere.json"
    target.write_bytes(_record().to_json())
    path.symlink_to(target)
    with pytest.raises(RecordError, match="cannot open"):
        store.load(CID)
    path.unlink()
    store.directory.chmod(0o777)
    with pytest.raises(RecordError, match="open to others"):
        store.load(CID)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_record_owned_by_a_user_is_refused(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    store.save(_record())
    os.chown(store.path_for(CID), 1000, 1000)
    with pytest.raises(RecordError, match="owned by uid 1000"):
        store.load(CID)


def test_prune_removes_the_records_of_gone_containers_only(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    store.save(_record())
    other = SaveRecord(**{**_record().__dict__, "identity": ContainerIdentity(
        "podman", "b" * 64, "c", "s", "/u")})  # fmt: skip
    store.save(other)
    (store.directory / "unrelated").write_text("x")

    assert store.prune(["b" * 64]) == [CID]
    assert sorted(os.listdir(store.directory)) == ["b" * 64 + ".json", "unrelated"]
    assert RecordStore(tmp_path / "none").prune([]) == []


def test_each_node_keeps_its_own_records_and_node_names_are_checked(tmp_path: Path) -> None:
    n1, n2 = RecordStore(tmp_path / "state", "n1"), RecordStore(tmp_path / "state", "n2")
    n1.save(_record())

    assert n2.load(CID) is None and n2.prune([]) == []
    assert n1.load(CID) == _record()
    with pytest.raises(RecordError, match="not a node name"):
        RecordStore(tmp_path / "state", "../n1")
