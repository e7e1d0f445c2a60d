"""Write a file into a user's own directory with that user's own credentials.

The privileged entry runs as root, and a user's directory is theirs to arrange (a
symlink to ``/etc`` planted where their SIFs go, say). So root never opens a path
there: a forked child drops to the user's uid, gid and groups, then creates the
directory and the file, and the kernel decides what it may touch, exactly as if the
user had copied the file themselves. The child only makes system calls (no exec, no
imports, no logging), so forking from the save's process is safe.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder_jobs.events import FailureKind
from builder_jobs.failures import SaveFailed
from core.errors import ConfigError
from site_configs.schema import expand_user_path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """A Unix identity the writing child takes (``setgroups``, ``setgid``, ``setuid``)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def credentials_of(user: str) -> Credentials:
    """The uid, primary gid and supplementary groups of ``user`` on this node."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError as e:
        raise SaveFailed(FailureKind.INVALID, f"user {user} is unknown on this node") from e
    groups = tuple(os.getgrouplist(user, entry.pw_gid))
    return Credentials(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)


def write_as_user(source: Path, directory_rule: str, user: str, name: str) -> Path:
    """Copy ``source`` to ``directory_rule`` (``{user}``/``{home}`` expanded) ``/name``,
    written by a child process with ``user``'s credentials. Returns the path written;
    raises SaveFailed with the kernel's reason when the user could not write there."""
    if Path(name).name != name or name.startswith("."):
        raise SaveFailed(FailureKind.INVALID, f"file name {name!r} is not a plain name")
    try:
        directory = expand_user_path(directory_rule, user)
    except ConfigError as e:
        raise SaveFailed(FailureKind.INVALID, e.message) from e
    who = credentials_of(user)
    if os.geteuid() not in (0, who.uid):
        raise SaveFailed(FailureKind.INVALID, f"cannot write as {user} from this account")
    with source.open("rb") as src:
        reason = _in_child(who, lambda: _write_here(directory, name, src.fileno()))
    if reason:
        raise SaveFailed(FailureKind.INVALID, f"cannot write {name} to {directory} as {user}: "
                         f"{reason}")  # fmt: skip
    return Path(directory) / name


def read_as_user(path: Path, user: str, limit: int = 32 * 1024) -> bytes:
    """The first ``limit`` bytes of ``path`` (at most 32 KiB), read by a child process
    with ``user``'s credentials: what ``user`` could read themselves, never through a
    symlink as the last component. Raises SaveFailed with the kernel's reason."""
    if limit > 32 * 1024:  # the child writes it into a pipe before it exits
        raise ValueError("read_as_user reads at most 32 KiB")
    who = credentials_of(user)
    if os.geteuid() not in (0, who.uid):
        raise SaveFailed(FailureKind.INVALID, f"cannot read as {user} from this account")
    data_read, data_write = os.pipe()
    try:
        reason = _in_child(who, lambda: _read_here(str(path), data_write, limit))
        os.close(data_write)
        data_write = -1
        with os.fdopen(data_read, "rb") as fh:
            data_read = -1
            data = fh.read(limit + 1)
    finally:
        for fd in (data_read, data_write):
            if fd >= 0:
                os.close(fd)
    if reason:
        raise SaveFailed(FailureKind.INVALID, f"cannot read {path} as {user}: {reason}")
    return data[:limit]


def _read_here(path: str, out_fd: int, limit: int) -> None:
    """In the child, as the user: copy the start of ``path`` into ``out_fd``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = os.read(fd, limit)
    finally:
        os.close(fd)
    view = memoryview(data)
    while view:
        view = view[os.write(out_fd, view):]


def _in_child(who: Credentials, work: Callable[[], None]) -> str:
    """Run ``work`` in a forked child with ``who``'s credentials; "" or the error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups(list(who.groups))
                os.setgid(who.gid)
                os.setuid(who.uid)
            work()
            code = 0
        except OSError as e:
            os.write(write_end, f"{e.strerror} ({e.filename or ''})".encode()[:4000])
        except BaseException as e:  # reported to the parent, then exit
            os.write(write_end, f"{type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        message = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return message or f"the writer exited with status {status}"
    return ""


def _write_here(directory: str, name: str, source_fd: int) -> None:
    """In the child, as the user: create ``directory`` and ``name`` in it."""
    os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        partial = f".{name}.{os.getpid()}.partial"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(partial, flags, FILE_MODE, dir_fd=dir_fd)
        try:
            os.lseek(source_fd, 0, os.SEEK_SET)
            while chunk := os.read(source_fd, CHUNK_BYTES):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        except BaseException:
            os.unlink(partial, dir_fd=dir_fd)  # e.g. their quota is full: leave nothing
            raise
        finally:
            os.close(fd)
        # replaces a file or a link itself, never a link's target
        os.replace(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
