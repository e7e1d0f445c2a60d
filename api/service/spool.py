"""An account's spool: its directory (0700, ours alone), the ``by-job/`` index from job
id to save, files written privately, and the per-requester submit lock.

Each save has a directory named by its request id holding its spec, job script, events
and result; ``by-job/<job id>`` is a symlink to it, written once the scheduler has
answered. The index is only a pointer: the job's own metadata in accounting says which
request it runs (see :mod:`api.service.status_join`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder_jobs.events import read_spool_text
from builder_jobs.spec import SPEC_FILE, SaveSpec
from core.errors import InvalidRequest, PermissionDenied, SchedulerError

log = logging.getLogger(__name__)

BY_JOB_DIR = "by-job"
SUBMIT_LOCKS_DIR = "submit-locks"


def own_spool(spool: Path) -> Path:
    """This account's spool, created 0700; refused if it is not ours alone."""
    try:
        if not spool.exists():
            spool.mkdir(mode=0o700, parents=True)
            spool.chmod(0o700)
        info = spool.lstat()
    except OSError as e:
        raise SchedulerError(f"cannot create your spool {spool}: {e.strerror}") from e
    if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not spool.is_dir():
        raise PermissionDenied(
            f"{spool} must be a directory of yours that nobody else may read or "
            "write (chmod 700)"
        )
    return spool


def index_job(spool: Path, job_id: str, request_id: str) -> None:
    """Point ``by-job/<job_id>`` at the save ``request_id``."""
    (spool / BY_JOB_DIR).mkdir(mode=0o700, exist_ok=True)
    link = spool / BY_JOB_DIR / job_id
    # Always (re)point the link: one left behind under this job id (a purged
    # scheduler's reused id) must never stand for this save.
    temporary = spool / BY_JOB_DIR / f".{job_id}.{request_id}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(Path("..") / request_id)
    os.replace(temporary, link)


def job_of_request(spool: Path, request_id: str) -> tuple[str, SaveSpec] | None:
    """The job id the index gives save ``request_id``, and its spec; None if the index
    has no entry for it (never submitted, or killed before the entry was written)."""
    index = spool / BY_JOB_DIR
    try:
        entries = list(os.scandir(index))
    except FileNotFoundError:
        return None
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_symlink():
            continue
        try:
            points_at = os.readlink(entry.path)
        except OSError:
            continue
        if Path(points_at).name == request_id:
            spec = spec_in(spool, entry.name)
            return (entry.name, spec) if spec is not None else None
    return None


def spec_in(spool: Path | None, job_id: str) -> SaveSpec | None:
    """The spec the spool's index holds for ``job_id``, or None (absent or unreadable)."""
    if spool is None:
        return None
    text = read_spool_text(spool / BY_JOB_DIR / job_id / SPEC_FILE)
    if text is None:
        return None
    try:
        return SaveSpec.from_json(text)
    except InvalidRequest:
        return None


@contextmanager
def submit_lock(spool: Path, requester: str = "") -> Iterator[None]:
    """One requester's submits one at a time. For an account's own saves, flock on the
    spool directory itself (no file is made, so a refused request leaves nothing
    behind); for the service account's, one lock file per requester under
    ``submit-locks/`` (kept: a few bytes per user)."""
    if requester:
        locks = spool / SUBMIT_LOCKS_DIR
        locks.mkdir(mode=0o700, exist_ok=True)
        name = hashlib.sha256(requester.encode()).hexdigest()[:32]
        fd = os.open(locks / name, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    else:
        fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_private(path: Path, text: str, mode: int) -> None:
    """A new file of ours alone (never through a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def remove_tree(path: Path) -> None:
    """Remove a save's directory made by a submit that failed (files only, no subdirs)."""
    for child in sorted(path.glob("*"), reverse=True):
        child.unlink(missing_ok=True)
    try:
        os.rmdir(path)
    except OSError:
        log.warning("could not remove %s", path)
