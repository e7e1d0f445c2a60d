"""Owners and modes of what imgsave keeps: spool, node state, instance dir, database,
secret key, registry credentials. A symlink, another owner, or a mode that lets others
write (or, for private ones, read) is a failure: on a shared node a second user would
plant or read files there."""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from api.service.checks.results import CheckResult, fail, ok, skip, warn


@dataclass(frozen=True)
class PathRule:
    """What one path must be: ``forbidden`` are the mode bits it must not have."""

    name: str
    path: str
    owner: str
    directory: bool
    forbidden: int = 0o077  # private by default: no one but the owner
    required: bool = True  # missing is a failure (else a warning: created on first use)
    why: str = ""
    create: str = ""  # how it comes to exist, when not by install -d


def uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def path_check(rule: PathRule, info: os.stat_result | None, owner_uid: int | None,
               target: str = "") -> CheckResult:
    """Judge ``lstat(rule.path)`` (None when missing) against ``rule``; pure."""
    kind = "directory" if rule.directory else "file"
    wanted = 0o777 & ~rule.forbidden & (0o777 if rule.directory else 0o666)
    mode_fix = f"chmod {wanted:04o} {rule.path}"
    if info is None:
        detail = f"{rule.path} does not exist" + (f" ({rule.why})" if rule.why else "")
        make_dir = f"install -d -o {rule.owner} -m {wanted:04o} {rule.path}"
        create = rule.create or (make_dir if rule.directory
                                 else f"create it as {rule.owner}, then {mode_fix}")
        return fail(rule.name, detail, create) if rule.required else warn(rule.name, detail, create)
    if stat.S_ISLNK(info.st_mode):
        return fail(rule.name, f"{rule.path} is a symlink{' to ' + target if target else ''}: "
                    "whoever can change the link decides where imgsave writes",
                    f"replace it with a real {kind} owned by {rule.owner}")
    if stat.S_ISDIR(info.st_mode) != rule.directory:
        return fail(rule.name, f"{rule.path} is not a {kind}", f"make it a {kind}")
    if owner_uid is None:
        return fail(rule.name, f"account {rule.owner} does not exist here",
                    f"create the account {rule.owner} (docs/install-slurm.md section 0)")
    if info.st_uid != owner_uid:
        return fail(rule.name, f"{rule.path} is owned by uid {info.st_uid}, not {rule.owner}",
                    f"chown {rule.owner} {rule.path}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & rule.forbidden:
        others = "write to" if mode & rule.forbidden & 0o022 else "read"
        return fail(rule.name, f"{rule.path} has mode {mode:04o}: other users can {others} it",
                    mode_fix)
    return ok(rule.name, f"{rule.path}: {rule.owner}'s, mode {mode:04o}")


def check_path(rule: PathRule) -> CheckResult:
    """:func:`path_check` on the real path (lstat: a symlink is never followed)."""
    try:
        info: os.stat_result | None = os.lstat(rule.path)
    except FileNotFoundError:
        info = None
    except PermissionError:
        return skip(rule.name, f"{rule.path} cannot be looked at by this account: run as root")
    target = os.readlink(rule.path) if info is not None and stat.S_ISLNK(info.st_mode) else ""
    return path_check(rule, info, uid_of(rule.owner), target)


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, None for another database."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and len(url) > len(prefix) else None
