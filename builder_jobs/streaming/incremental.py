"""Incremental re-save: the earlier image plus one layer of what changed since.

The paused read walks the upper dir once (:func:`indexed_entries`), recording each
path's :class:`~.save_index.PathState` into a new index. Given the index of the earlier
save it yields only the layer entries that turn the earlier image's tree into the
container's tree now:

- a path that is new, or whose state changed (ctime, size, inode, mode, owner, type,
  link target, device), is written as a full save would write it (an overlay whiteout
  becomes ``.wh.NAME``);
- a path in the earlier index that is gone from the upper dir gets a whiteout
  ``.wh.NAME`` (only the topmost one of a deleted tree);
- a directory that was replaced (another inode, another type before, or newly opaque)
  gets ``.wh..wh..opq`` and its whole subtree, so nothing of the earlier layers shows
  through it;
- every directory above a written entry is written too, so that unpacking the layer
  leaves each directory's mode, owner and mtime as a full save gives them.

Without an earlier index it yields what :func:`.overlay_layer.layer_entries` yields (the
full layer), with the same order, hard links and xattrs: one walker for both saves.

:class:`ResaveChain` decides whether a save may build on the earlier one (a record of
it on this node, the same container life and engine, the image unchanged in the
registry, the chain under ``max_layers``) and records each streaming save.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from builder_jobs.streaming.overlay_layer import (
    OPAQUE_MARKER,
    OPAQUE_XATTR,
    WHITEOUT_PREFIX,
    EntryKind,
    LayerEntry,
    _entry,
    _non_dir,
    _xattrs,
)
from builder_jobs.streaming.save_index import PathState, UpperIndex, path_state

log = logging.getLogger(__name__)
_STAT_FIELDS = 8  # PathState's fields up to rdev: what one lstat says


@dataclass
class _Frame:
    """A directory being walked: its stat (its entry is made once written) and children."""

    rel: str
    path: str
    st: os.stat_result | None  # None for the upper dir itself (never an entry)
    fd: int  # the directory, open: its children are looked up relative to it
    children: Iterator[str]
    whole: bool  # write everything below (new tree or replaced directory)
    written: bool = False


@dataclass
class WalkStats:
    """What the walk saw and wrote (for the save's result and the benchmark)."""

    paths: int = 0
    written: int = 0
    whiteouts: int = 0  # for paths deleted since the earlier save
    replaced_dirs: int = 0
    deleted: list[str] = field(default_factory=list)


def indexed_entries(
    upper: str,
    earlier: Mapping[str, PathState] | None,
    index: UpperIndex,
    stats: WalkStats | None = None,
) -> Iterator[LayerEntry]:
    """The layer entries for ``upper``: all of them when ``earlier`` is None, else those
    that changed since ``earlier`` was taken. Fills ``index`` with every path's state."""
    stats = stats if stats is not None else WalkStats()
    links: dict[tuple[int, int], str] = {}
    earlier_children = _children_of(earlier) if earlier is not None else {}
    fd = _open_dir(upper)
    names = _names(fd)
    root = _Frame("", upper, None, fd, iter(names), whole=earlier is None, written=True)
    stack = [root]
    try:
        yield from _deleted(root, earlier, earlier_children, set(names), stats)
        while stack:
            frame = stack[-1]
            name = next(frame.children, None)
            if name is None:
                os.close(stack.pop().fd)
                continue
            if earlier is not None and not frame.whole:  # the usual case first: unchanged
                rel = f"{frame.rel}/{name}" if frame.rel else name
                st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
                old = earlier.get(rel)
                if old is not None and not stat.S_ISDIR(st.st_mode) and old == _same_as(old, st):
                    stats.paths += 1
                    index[rel] = old
                    continue
            yield from _visit(frame, name, stack, earlier, earlier_children, index, links,
                              stats)  # fmt: skip
    finally:
        for frame in stack:
            os.close(frame.fd)


def _visit(
    frame: _Frame,
    name: str,
    stack: list[_Frame],
    earlier: Mapping[str, PathState] | None,
    earlier_children: Mapping[str, list[str]],
    index: UpperIndex,
    links: dict[tuple[int, int], str],
    stats: WalkStats,
) -> Iterator[LayerEntry]:
    """One path of the walk: index it, write it if it changed (a directory: enter it)."""
    rel = f"{frame.rel}/{name}" if frame.rel else name
    path = f"{frame.path}/{name}"
    st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)  # relative: no path walk
    stats.paths += 1
    old = earlier.get(rel) if earlier is not None else None
    now = path_state(st)
    # unchanged stat, unchanged path (a new link target or xattr changes ctime)
    same = old is not None and old[:_STAT_FIELDS] == now[:_STAT_FIELDS]
    if stat.S_ISDIR(st.st_mode):
        opaque = old.opaque if same and old else _opaque(path)
        state = now._replace(opaque=opaque)
        index[rel] = state
        replaced = old is not None and (not old.is_dir or old.ino != st.st_ino
                                        or (opaque and not old.opaque))  # fmt: skip
        whole = frame.whole or replaced
        fd = _open_dir(name, frame.fd)
        names = _names(fd)
        child = _Frame(rel, path, st, fd, iter(names), whole)
        stack.append(child)
        if whole or old != state:
            yield from _write(stack, stats)
            # marked where it hides something new: in a full walk or a new or
            # replaced directory, not an opaque directory the earlier layer holds
            if (opaque and (whole or old is None)) or (replaced and not frame.whole):
                stats.replaced_dirs += replaced
                mode = stat.S_IMODE(st.st_mode)
                yield LayerEntry(f"{rel}/{OPAQUE_MARKER}", EntryKind.FILE, mode,
                                 st.st_uid, st.st_gid)  # fmt: skip
            if not whole and old is not None:
                yield from _deleted(child, earlier, earlier_children, set(names), stats)
        return
    if same and old:
        state = old
    elif stat.S_ISLNK(st.st_mode):
        state = now._replace(link=os.readlink(name, dir_fd=frame.fd))
    else:
        state = now
    index[rel] = state
    if frame.whole or old != state:
        leaf = _non_dir(path, rel, st, _xattrs(path, rel), links)
        if leaf is not None:
            yield from _write(stack, stats)
            stats.written += 1
            yield leaf


def _same_as(old: PathState, st: os.stat_result) -> PathState:
    """``old`` with the stat's fields: equal to ``old`` when nothing changed."""
    return PathState(st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_ino, st.st_ctime_ns,
                     st.st_mtime_ns, st.st_rdev, old.link, old.opaque)  # fmt: skip


def _write(stack: list[_Frame], stats: WalkStats) -> Iterator[LayerEntry]:
    """The directories on the walk's stack not written yet, outermost first."""
    for frame in stack:
        if not frame.written and frame.st is not None:
            frame.written = True
            stats.written += 1
            yield _entry(frame.rel, EntryKind.DIR, frame.st, _xattrs(frame.path, frame.rel))


def _deleted(
    frame: _Frame,
    earlier: Mapping[str, PathState] | None,
    earlier_children: Mapping[str, list[str]],
    now: set[str],
    stats: WalkStats,
) -> Iterator[LayerEntry]:
    """Whiteouts for what the directory held at the earlier save and no longer does."""
    if earlier is None or frame.whole:
        return
    for name in earlier_children.get(frame.rel, ()):
        if name in now:
            continue
        rel = f"{frame.rel}/{name}" if frame.rel else name
        if earlier[rel].is_whiteout:
            continue  # already deleted in the earlier image
        head = f"{frame.rel}/" if frame.rel else ""
        stats.whiteouts += 1
        stats.deleted.append(rel)
        yield LayerEntry(f"{head}{WHITEOUT_PREFIX}{name}", EntryKind.FILE, 0o644)


def _children_of(index: Mapping[str, PathState]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for rel in index:
        parent, _, name = rel.rpartition("/")
        children.setdefault(parent, []).append(name)
    return children


def _names(fd: int) -> list[str]:
    return sorted(os.listdir(fd), key=os.fsencode)


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, dir_fd=dir_fd)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise
