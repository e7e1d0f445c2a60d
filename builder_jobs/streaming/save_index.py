"""The node's record of a streaming save: what the upper dir held at the paused read.

An incremental re-save (:mod:`.incremental`) compares the container's upper dir now with
the index taken at the earlier save's paused read. The index is one small tuple per path
(:class:`PathState`: mode, owner, size, inode, ctime, mtime, device, link target, opaque
flag), never a copy of the data. ctime cannot be set by the user (the kernel stamps it on
every change of data, name, mode, owner, xattr or link count), so a path whose state is
unchanged has the bytes and metadata it had.

Records live in ``{node.state_dir}/saves/NODE/CONTAINER_ID.json`` (NODE: the scheduler's
name of the node, so that a state dir shared by mistake, or by the local cluster's
nodes, keeps each node's records apart), written by root only:
:class:`RecordStore` refuses a state dir or records dir that is not a root-owned (the
caller's) directory no one else can write, opens records with ``O_NOFOLLOW``, and reads
only a regular file owned by the caller with no group or other access. A record names
the container's identity (engine, id, creation and start time): a restarted or
recreated container does not match it. Records of containers that no longer exist are
removed by :meth:`RecordStore.prune` at the next streaming save on the node.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

RECORDS_DIR = "saves"
FORMAT = 1
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class RecordError(Exception):
    """The records cannot be used (unsafe place, unreadable, malformed)."""


class PathState(NamedTuple):
    """One path of the upper dir as the paused read saw it."""

    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int
    ino: int
    ctime_ns: int
    mtime_ns: int
    rdev: int = 0
    link: str = ""  # a symlink's target
    opaque: bool = False  # a directory with trusted.overlay.opaque=y

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_whiteout(self) -> bool:
        return stat.S_ISCHR(self.mode) and self.rdev == 0


def path_state(st: os.stat_result, link: str = "", opaque: bool = False) -> PathState:
    return PathState(st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_ino,
                     st.st_ctime_ns, st.st_mtime_ns, st.st_rdev, link, opaque)  # fmt: skip


UpperIndex = dict[str, PathState]


@dataclass(frozen=True)
class ContainerIdentity:
    """Which container, and which life of it: a restart changes ``started``."""

    engine: str
    container_id: str
    created: str
    started: str
    upper_dir: str


@dataclass(frozen=True)
class SaveRecord:
    """One streaming save of a container on this node: the head of its chain."""

    identity: ContainerIdentity
    user: str
    registry: str
    repository: str
    manifest_digest: str
    config_digest: str
    layers: int  # layers in that image's manifest
    chain: int  # layers imgsave added on top of the base image (1 after a full save)
    image_size: int  # uncompressed bytes of every layer (base + each save's tar)
    index: UpperIndex = field(default_factory=dict)

    def to_json(self) -> bytes:
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "index"}
        data = {"format": FORMAT, **head, "identity": asdict(self.identity),
                "index": self.index}  # NamedTuples: JSON arrays  # fmt: skip
        return json.dumps(data, separators=(",", ":"), check_circular=False).encode()

    @classmethod
    def from_json(cls, text: bytes) -> SaveRecord:
        try:
            data = json.loads(text)
            if data.pop("format") != FORMAT:
                raise RecordError("record of another format")
            identity = ContainerIdentity(**data.pop("identity"))
            index = {str(p): PathState(*s) for p, s in data.pop("index").items()}
            return cls(identity=identity, index=index, **data)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RecordError(f"malformed record: {e}") from e


class RecordStore:
    """The node's save records, under ``state_dir`` (root's; see the module doc)."""

    def __init__(self, state_dir: str | os.PathLike[str], node: str = "local") -> None:
        if not _NODE.fullmatch(node):
            raise RecordError(f"{node!r} is not a node name")
        self.state_dir = Path(state_dir)
        self.directory = self.state_dir / RECORDS_DIR / node

    def path_for(self, container_id: str) -> Path:
        if not _CONTAINER_ID.fullmatch(container_id):
            raise RecordError(f"{container_id!r} is not a full container id")
        return self.directory / f"{container_id}.json"

    def load(self, container_id: str) -> SaveRecord | None:
        """The record of ``container_id``, None when there is none."""
        path = self.path_for(container_id)
        try:
            self._check_dirs(create=False)
        except FileNotFoundError:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:  # ELOOP: a symlink where a record should be
            raise RecordError(f"cannot open {path}: {e}") from e
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            _check_owned(path, st, regular=True)
            return SaveRecord.from_json(fh.read())

    def save(self, record: SaveRecord) -> None:
        """Replace the container's record atomically (0600, root's). Not fsynced: a record
        lost or cut short by a crash is refused when read, and that save is full."""
        path = self.path_for(record.identity.container_id)
        self._check_dirs(create=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(partial, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(record.to_json())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def remove(self, container_id: str) -> None:
        self.path_for(container_id).unlink(missing_ok=True)

    def prune(self, live_ids: Iterable[str]) -> list[str]:
        """Remove the records of containers not in ``live_ids``; returns their ids."""
        try:
            self._check_dirs(create=False)
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        live = set(live_ids)
        gone = []
        for name in names:
            stem, _, suffix = name.partition(".")
            if suffix in ("json", "partial") and _CONTAINER_ID.fullmatch(stem) and stem not in live:
                (self.directory / name).unlink(missing_ok=True)
                gone.append(stem)
        return gone

    def _check_dirs(self, *, create: bool) -> None:
        for directory in (self.state_dir, self.directory.parent, self.directory):
            if create:
                try:
                    directory.mkdir(mode=0o700)
                except FileExistsError:
                    pass
            st = directory.lstat()  # FileNotFoundError when absent and not created
            if not stat.S_ISDIR(st.st_mode):
                raise RecordError(f"{directory} is not a directory")
            _check_owned(directory, st, regular=False)


def _check_owned(path: Path, st: os.stat_result, *, regular: bool) -> None:
    """Refuse what this process's user (root on a node) does not own alone."""
    if st.st_uid != os.geteuid():
        raise RecordError(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}")
    if regular and not stat.S_ISREG(st.st_mode):
        raise RecordError(f"{path} is not a regular file")
    if st.st_mode & (0o077 if regular else 0o022):
        raise RecordError(f"{path} is open to others (mode {stat.S_IMODE(st.st_mode):o})")


def index_bytes(index: Mapping[str, PathState]) -> int:
    """About how many bytes the index takes on disk (for the docs and the benchmark)."""
    return len(json.dumps(index, separators=(",", ":")))
