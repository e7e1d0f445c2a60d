"""A full filesystem on the node, whichever command or call ran out of room.

podman's temporary files in ``/var/tmp`` during a commit, the SIF work directory, the
user's SIF directory: a save that fills one fails like any other (tags rolled back,
temporary images and files removed, the container running), but as
:attr:`FailureKind.NO_SPACE` with a reason that names the filesystem (:func:`no_space`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from builder_jobs.events import FailureKind
from builder_jobs.failures import SaveFailed
from core.errors import CommandFailed

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# podman/Go, tar, mksquashfs and Python all say one of these (strerror of ENOSPC/EDQUOT)
_FULL_TEXT = re.compile(r"no space left on device|disk quota exceeded", re.IGNORECASE)


def is_full(error: BaseException) -> bool:
    """``error`` itself is a full filesystem (ENOSPC, EDQUOT)."""
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


def no_space(node: str, error: BaseException) -> SaveFailed | None:
    """``error`` as a NO_SPACE failure naming the full filesystem, or None when a full
    filesystem did not cause it. Looks through the chain of causes: an OSError with
    ENOSPC/EDQUOT, or a command or failure whose text has the kernel's words."""
    path = full_path(error)
    if path is None:
        return None
    mount = _mount_point(path) if path else ""
    where = f"{mount} (writing {path})" if mount and mount != path else path or "a filesystem"
    return SaveFailed(
        FailureKind.NO_SPACE,
        f"node {node} has no space left on {where}; the save was stopped, nothing was "
        "tagged and its temporary files were removed; free space there (or ask your "
        "centre to) and save again, or save on another node",
    )


def remove_engine_leftover(path: str) -> None:
    """Remove the partial temporary file a failed engine command names: podman's commit
    leaves ``/var/tmp/<digits>`` (Go's ``os.CreateTemp``) behind when the write fails.
    Only a regular file of ours with such a name directly in a temporary directory."""
    file = Path(path)
    if not file.name.isdigit() or str(file.parent) not in ("/var/tmp", tempfile.gettempdir()):
        return
    try:
        info = file.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            file.unlink()
    except OSError:
        pass  # gone already, or not ours to remove


def full_path(error: BaseException) -> str | None:
    """The path a full filesystem refused ("" if unnamed), None if none did."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return str(seen.filename or "")
        if isinstance(seen, CommandFailed) and _FULL_TEXT.search(seen.stderr + seen.stdout):
            named = _path_before_full(seen.stderr + "\n" + seen.stdout)
            return named or next((a for a in reversed(seen.argv) if a.startswith("/")), "")
        if isinstance(seen, SaveFailed) and _FULL_TEXT.search(seen.message):
            return _path_before_full(seen.message)
        seen = seen.__cause__ or seen.__context__
    return None


def _path_before_full(text: str) -> str:
    """``/var/tmp/123`` from podman's ``write /var/tmp/123: no space left on device``."""
    for line in text.splitlines():
        found = _FULL_TEXT.search(line)
        if found:
            paths = re.findall(r"(?:^|(?<=[\s'\"(]))(/[^\s:'\"]+)", line[: found.start()])
            if paths:
                return paths[-1]
    return ""


def _mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (which may be gone by now)."""
    where = os.path.abspath(path)
    while not os.path.exists(where) and where != "/":
        where = os.path.dirname(where)
    while not os.path.ismount(where):
        where = os.path.dirname(where)
    return where
