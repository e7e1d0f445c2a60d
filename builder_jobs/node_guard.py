"""What a save leaves for the job's epilog to undo, should it die outright.

A save pauses the user's container (the streaming commit's read, or the engine's
``commit --pause=true``) and makes temporary local images. An exception or SIGTERM is
cleaned up by the save itself; SIGKILL of the save, of the whole job, or a node daemon
restart is not. So before anything is paused or made, the privileged entry writes a
root-only record per job (``{node.state_dir}/jobs/JOBID.json``): the commands that undo
it (``unpause`` while a pause may be in force, ``rmi`` of the temporary names, the base
image's helper tag in the registry once its one-off push begins). The save's runner
(:class:`GuardedRunner`) adds the unpause before each pause and drops it once the engine
has resumed the container, and adds the helper tag before the push that makes it; the
entry removes the record when the save ends. The scheduler's epilog, run as root on the
node after every job (``imgsave-epilog``: ``python -I -m builder_jobs.node_guard epilog
STATE_DIR JOBID CONFIG``), replays what a record still holds, then removes it. Jobs
without a record cost one ``stat`` in the epilog's shell wrapper.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from core.errors import CommandFailed
from core.runner import DEFAULT_TIMEOUT_SECONDS, CommandResult, Runner, run_command
from registry.catalog import CACHE_TAG_PREFIX

if TYPE_CHECKING:
    from builder_jobs.engines import ContainerEngine

log = logging.getLogger("builder_jobs.node_guard")

JOBS_DIR = "jobs"
LOCKS_DIR = "locks"
UNDO_TIMEOUT_SECONDS = 60.0
_WRITING = threading.Lock()
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
    drop_tags: list[str] = field(default_factory=list)  # "registry/repository:tag"

    def write(self) -> None:
        """Replace the record atomically (root-only, 0600). The save's threads (the
        read, the base image's lookup) may write at once: one at a time."""
        with _WRITING:
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"request_id": self.request_id, "cleanup": self.cleanup,
                "unpause": self.unpause, "drop_tags": self.drop_tags}  # fmt: skip
        partial = self.path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, self.path)

    def clear(self) -> None:
        """The save ended (or the epilog undid it): nothing is left to undo. A partial
        write a kill interrupted goes too."""
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".partial").unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> JobGuard | None:
        try:
            data = json.loads(path.read_text())
            return cls(path, str(data["request_id"]),
                       [[str(a) for a in argv] for argv in data.get("cleanup", [])],
                       [str(a) for a in data.get("unpause", [])],
                       [str(t) for t in data.get("drop_tags", [])])  # fmt: skip
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable guard record %s: %s", path, e)
            return None


class GuardedRunner:
    """The save's runner: records how to resume the container before each pause (the
    engine's ``pause``, or ``commit --pause=true``) and forgets it once resumed, and
    records the base image's helper tag before the push that makes it.

    ``bound`` is put before every command so that it dies with the thread that ran it
    (``setpriv --pdeathsig KILL --``): a push the entry started must not finish after
    the entry was killed and the epilog removed its tag."""

    def __init__(
        self, runner: Runner, guard: JobGuard, base: Sequence[str], bound: Sequence[str] = (),
        engines: Sequence[ContainerEngine] = (),
    ) -> None:
        self.runner = runner
        self.guard = guard
        self.base = list(base)
        self.bound = list(bound)
        # every engine of the node: a pause is recognised by its own argv (containerd's
        # is ``ctr ... tasks pause C``), its undo is that engine's resume
        self.engines = list(engines)

    def _engine_pause(self, args: list[str]) -> tuple[list[str], bool]:
        """(the undo of ``args`` if it is some engine's pause, is it some engine's resume)."""
        if not args:
            return [], False
        for engine in self.engines:
            if args == [str(a) for a in engine.pause(args[-1])]:
                return [str(a) for a in engine.resume(args[-1])], False
            if args == [str(a) for a in engine.resume(args[-1])]:
                return [], True
        return [], False

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        check: bool = True,
        input_text: str | None = None,
    ) -> CommandResult:
        args = [str(a) for a in argv]
        bases = [self.base, *([str(a) for a in e.base] for e in self.engines)]
        base = next((b for b in bases if args[: len(b)] == b and len(args) > len(b)), [])
        verb = args[len(base)] if base else ""
        container = ""
        undo, resuming = self._engine_pause(args)
        if undo:
            container = args[-1]
        elif verb == "pause":
            container = args[-1]
            undo = [*base, "unpause", container]
        elif verb == "commit" and "--pause=true" in args:
            container = args[-2]
            undo = [*base, "unpause", container]
        if container:
            self.guard.unpause = undo
            self.guard.write()  # before: a kill during the command is covered too
        if verb == "push" and is_helper_reference(args[-1]):
            reference = args[-1].removeprefix("docker://")  # podman's transport prefix
            self.guard.drop_tags = list(dict.fromkeys([*self.guard.drop_tags, reference]))
            self.guard.write()
        try:
            result = self.runner([*self.bound, *args], timeout=timeout, check=check,
                                 input_text=input_text)  # fmt: skip
        except CommandFailed:
            if verb == "commit" and container:
                self._resumed()  # the engine's commit resumes on its own failure
            raise
        resumed = verb == "unpause" or resuming
        if (resumed and result.returncode == 0) or (verb == "commit" and container):
            self._resumed()
        return result

    def _resumed(self) -> None:
        if self.guard.unpause:
            self.guard.unpause = []
            self.guard.write()


def is_helper_reference(reference: str) -> bool:
    """``registry/repository:imgsave-base-...``: the base's helper tag (streaming/base_image.py)."""
    return reference.rpartition(":")[2].startswith(CACHE_TAG_PREFIX) and "/" in reference


def drop_helper_tags(guard: JobGuard, config_path: str | Path) -> list[str]:
    """Remove the helper tags a save recorded, with the node's registry credentials
    (the site config the node entry uses). Only references on the configured registry
    are touched; a tag already gone is fine. Returns what was done; never raises."""
    if not guard.drop_tags:
        return []
    from core.errors import ImgsaveError, NotFound
    from registry.auth import load_credentials  # the epilog imports these only when needed
    from registry.oci import RegistryClient
    from registry.refs import parse_reference
    from site_configs.schema import load_site_config

    done = []
    try:
        section = load_site_config(config_path).registry
        client = RegistryClient.from_section(section, load_credentials(section))
        host = urlsplit(section.url).netloc
    except (ImgsaveError, OSError) as e:
        return [f"helper tags kept: no registry client ({e})"]
    with client:
        for text in guard.drop_tags:
            try:
                ref = parse_reference(text, default_registry="")
                if ref.registry != host or not is_helper_reference(text):
                    done.append(f"{text}: not this site's helper tag, left")
                    continue
                client.delete_tag_or_digest(ref.repository, ref.reference)
                done.append(f"{text} removed")
            except NotFound:
                done.append(f"{text} already gone")
            except ImgsaveError as e:
                done.append(f"{text} kept: {e}")
    return done


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


def epilog(state_dir: Path, job_id: str, config_path: str = "") -> int:
    """The scheduler's epilog for ``job_id``: undo what its save left, if anything
    (helper tags too, given the node's site config)."""
    try:
        path = record_path(state_dir, job_id)
    except ValueError:
        return 0
    guard = JobGuard.load(path)
    if guard is None:
        path.with_suffix(".partial").unlink(missing_ok=True)  # a kill mid-write, no record
        return 0
    done = undo(guard)
    if config_path:
        done += drop_helper_tags(guard, config_path)
    print(f"imgsave-epilog: job {job_id} request {guard.request_id}: {'; '.join(done)}",
          file=sys.stderr)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4) or args[0] != "epilog":
        print("usage: python -I -m builder_jobs.node_guard epilog STATE_DIR JOBID [CONFIG]",
              file=sys.stderr)  # fmt: skip
        return 2
    if os.geteuid() != 0:
        print("imgsave-epilog: must run as root (the scheduler's epilog)", file=sys.stderr)
        return 2
    return epilog(Path(args[1]), args[2], args[3] if len(args) == 4 else "")


if __name__ == "__main__":
    sys.exit(main())
