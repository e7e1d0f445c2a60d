"""What a save leaves for the job's epilog to undo, should it die outright.

A save pauses the user's container (the streaming commit's read, or the engine's
``commit --pause=true``) and makes temporary local images. An exception or SIGTERM is
cleaned up by the save itself; SIGKILL of the save, of the whole job, or a node daemon
restart is not. So before anything is paused or made, the privileged entry writes a
root-only record per job (``{node.state_dir}/jobs/JOBID.json``): the commands that undo
it (``unpause`` while a pause may be in force, ``rmi`` of the temporary names). The
save's runner (:class:`GuardedRunner`) adds the unpause before each pause and drops it
once the engine has resumed the container; the entry removes the record when the save
ends. The scheduler's epilog, run as root on the node after every job
(``imgsave-epilog``, ``python -I -m builder_jobs.node_guard epilog STATE_DIR JOBID``),
replays what a record still holds, then removes it. Jobs without a record cost one
``stat`` in the epilog's shell wrapper.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from site_configs.errors import CommandFailed
from site_configs.runner import DEFAULT_TIMEOUT_SECONDS, CommandResult, Runner, run_command

log = logging.getLogger("builder_jobs.node_guard")

JOBS_DIR = "jobs"
LOCKS_DIR = "locks"
UNDO_TIMEOUT_SECONDS = 60.0
_JOB_ID = re.compile(r"[0-9][0-9A-Za-z_+.\[\]-]{0,63}")


def is_job_id(text: str) -> bool:
    """A Slurm or PBS job id, safe as a file name (the node side's one grammar)."""
    return bool(_JOB_ID.fullmatch(text))


def record_path(state_dir: Path, job_id: str) -> Path:
    if not is_job_id(job_id):
        raise ValueError(f"{job_id!r} is not a job id")
    return state_dir / JOBS_DIR / f"{job_id}.json"


@dataclass
class JobGuard:
    """The record of one job's save: what to undo if the save cannot."""

    path: Path
    request_id: str
    cleanup: list[list[str]] = field(default_factory=list)
    unpause: list[str] = field(default_factory=list)

    def write(self) -> None:
        """Replace the record atomically (root-only, 0600)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"request_id": self.request_id, "cleanup": self.cleanup, "unpause": self.unpause}
        partial = self.path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, self.path)

    def clear(self) -> None:
        """The save ended on its own: nothing is left to undo."""
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> JobGuard | None:
        try:
            data = json.loads(path.read_text())
            return cls(path, str(data["request_id"]),
                       [[str(a) for a in argv] for argv in data.get("cleanup", [])],
                       [str(a) for a in data.get("unpause", [])])  # fmt: skip
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable guard record %s: %s", path, e)
            return None


class GuardedRunner:
    """The save's runner: records how to resume the container before each pause (the
    engine's ``pause``, or ``commit --pause=true``) and forgets it once resumed."""

    def __init__(self, runner: Runner, guard: JobGuard, base: Sequence[str]) -> None:
        self.runner = runner
        self.guard = guard
        self.base = list(base)

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        check: bool = True,
        input_text: str | None = None,
    ) -> CommandResult:
        args = [str(a) for a in argv]
        verb = args[len(self.base)] if args[: len(self.base)] == self.base and len(
            args) > len(self.base) else ""  # fmt: skip
        container = ""
        if verb == "pause":
            container = args[-1]
        elif verb == "commit" and "--pause=true" in args:
            container = args[-2]
        if container:
            self.guard.unpause = [*self.base, "unpause", container]
            self.guard.write()  # before: a kill during the command is covered too
        try:
            result = self.runner(args, timeout=timeout, check=check, input_text=input_text)
        except CommandFailed:
            if verb == "commit" and container:
                self._resumed()  # the engine's commit resumes on its own failure
            raise
        if (verb == "unpause" and result.returncode == 0) or (verb == "commit" and container):
            self._resumed()
        return result

    def _resumed(self) -> None:
        if self.guard.unpause:
            self.guard.unpause = []
            self.guard.write()


def container_lock(state_dir: Path, container_id: str) -> int:
    """Hold the node's lock on a container for this process's life (released on any
    exit, SIGKILL included); raises BlockingIOError if another save holds it."""
    path = lock_path(state_dir, container_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


def lock_path(state_dir: Path, container_id: str) -> Path:
    """Where :func:`container_lock` locks (for tests and admins)."""
    return state_dir / LOCKS_DIR / hashlib.sha256(container_id.encode()).hexdigest()[:32]


def undo(guard: JobGuard, runner: Runner = run_command) -> list[str]:
    """Replay what a dead save left: resume the container, remove temporary images.
    Returns what was done (for the epilog's log line); never raises."""
    done = []
    for argv in ([guard.unpause] if guard.unpause else []) + guard.cleanup:
        try:
            result = runner(argv, timeout=UNDO_TIMEOUT_SECONDS, check=False)
        except CommandFailed as e:
            log.warning("%s: %s", " ".join(argv), e)
            continue
        done.append(f"{' '.join(argv[-2:])} -> {result.returncode}")
    guard.clear()
    return done


def epilog(state_dir: Path, job_id: str) -> int:
    """The scheduler's epilog for ``job_id``: undo what its save left, if anything."""
    try:
        path = record_path(state_dir, job_id)
    except ValueError:
        return 0
    guard = JobGuard.load(path)
    if guard is None:
        return 0
    done = undo(guard)
    print(f"imgsave-epilog: job {job_id} request {guard.request_id}: {'; '.join(done)}",
          file=sys.stderr)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "epilog":
        print("usage: python -I -m builder_jobs.node_guard epilog STATE_DIR JOBID",
              file=sys.stderr)  # fmt: skip
        return 2
    if os.geteuid() != 0:
        print("imgsave-epilog: must run as root (the scheduler's epilog)", file=sys.stderr)
        return 2
    return epilog(Path(args[1]), args[2])


if __name__ == "__main__":
    sys.exit(main())
