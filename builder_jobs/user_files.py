"""Write a file into a user's own directory with that user's own credentials.

The privileged entry runs as root, and a user's directory is theirs to arrange (a
symlink to ``/etc`` planted where their SIFs go, say). So root never opens a path
there: a child process started with the user's uid, gid and groups creates the
directory and the file, and the kernel decides what it may touch, exactly as if the
user had copied the file themselves. The child is ``python -I -m
builder_jobs.user_files DIRECTORY NAME``; it reads the content on stdin and prints the
path it wrote.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from builder_jobs.events import FailureKind
from builder_jobs.failures import SaveFailed
from site_configs.errors import CommandFailed, ConfigError
from site_configs.runner import Credentials, run_command
from site_configs.schema import expand_user_path

COPY_TIMEOUT_SECONDS = 1800.0
DIRECTORY_MODE = 0o700
CHUNK_BYTES = 1024 * 1024


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
    written by a child process with ``user``'s credentials. Returns the path written."""
    if Path(name).name != name or name.startswith("."):
        raise SaveFailed(FailureKind.INVALID, f"file name {name!r} is not a plain name")
    try:
        directory = expand_user_path(directory_rule, user)
    except ConfigError as e:
        raise SaveFailed(FailureKind.INVALID, e.message) from e
    who = credentials_of(user)
    if os.geteuid() not in (0, who.uid):
        raise SaveFailed(FailureKind.INVALID, f"cannot write as {user} from this account")
    argv = [sys.executable, "-I", "-m", "builder_jobs.user_files", directory, name]
    try:
        with source.open("rb") as src:
            result = run_command(
                argv,
                timeout=COPY_TIMEOUT_SECONDS,
                stdin_file=src,
                credentials=who if os.geteuid() == 0 else None,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
            )
    except CommandFailed as e:
        reason = (e.stderr.strip().splitlines() or [str(e)])[-1]
        raise SaveFailed(
            FailureKind.INVALID, f"cannot write {name} to {directory} as {user}: {reason}"
        ) from e
    return Path(result.stdout.strip())


def _write_here(directory: str, name: str) -> str:
    """In the child, as the user: create ``directory`` and ``name`` in it from stdin."""
    os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        partial = f".{name}.{os.getpid()}.partial"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(partial, flags, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(sys.stdin.buffer, dst, CHUNK_BYTES)
        # replaces a file or a link itself, never a link's target
        os.replace(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return os.path.join(directory, name)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m builder_jobs.user_files DIRECTORY NAME < CONTENT", file=sys.stderr)
        return 2
    try:
        print(_write_here(args[0], args[1]))
    except OSError as e:
        print(f"{e.filename or args[0]}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
