"""The one privileged entry on a node: ``imgsave-node-save JOBID REQUEST_ID``.

Save jobs run as their owner; this is the only root code they can reach, through the
sudoers rule that ships in ``site_configs/sudoers`` (no one gets ``sudo podman``). It is
installed as a root-owned wrapper that fixes the site config
(``site_configs/deploy/imgsave-node-save.in``)::

    exec /opt/imgsave/venv/bin/python -I -m api.node_entry /etc/imgsave/site.toml "$@"

:mod:`api.node_entry` only hands :func:`main` the scheduler (as a :data:`JobLookup`):
builder_jobs never imports scheduler_glue, so the one module that needs both sits above
them. Everything the entry checks and does is here.

It trusts nothing a user can write. Who asks comes from the kernel (``SUDO_UID``, set by
sudo); what was asked comes from the scheduler's record of the job: its owner, its
state and the request metadata it was submitted with. The job must be running, owned by
the caller, and carry this request id. A job of the portal's service account works for
the user in its metadata (the service wrote it); any other job works for its owner only.
Each request runs at most once per node (a root-owned record in ``node.state_dir``).
Events and the result go to stdout as JSON lines; the job's unprivileged half writes
them into the owner's spool. The save itself then checks the container's owner label
against that user and pushes only into that user's namespace.

Exit status: 0 saved, 1 the save failed, 2 refused (the reason on stderr and as the
result).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from builder_jobs import cancel, sif
from builder_jobs.engine_choice import engine_for, engines_on
from builder_jobs.engines import ContainerInfo, temporary_image
from builder_jobs.events import EventStream, FailureKind, ProgressEvent, SaveResult, Stage
from builder_jobs.failures import SaveFailed
from builder_jobs.no_space import is_full
from builder_jobs.node_guard import (
    UNDO_TIMEOUT_SECONDS,
    GuardedRunner,
    JobGuard,
    container_lock,
    drop_helper_tags,
    is_job_id,
    record_path,
)
from builder_jobs.node_save import report_exit, save
from builder_jobs.run import SaveRun
from builder_jobs.spec import SaveSpec
from core.errors import ImgsaveError
from core.runner import run_command
from site_configs.schema import ImageFormat, SiteConfig, load_site_config

log = logging.getLogger("builder_jobs.node_gate")

REFUSED = 2
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_CONTAINER = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,253}")
PR_SET_PDEATHSIG = 1
# every command the save runs dies with the thread that started it: a push must not
# finish after the entry was killed and the epilog removed its helper tag
DIE_WITH_ENTRY = ("setpriv", "--pdeathsig", "KILL", "--")


class Refused(Exception):
    """A request the entry will not run; the message is safe to show the caller."""


@dataclass(frozen=True)
class JobOnRecord:
    """The scheduler's record of the job that asks for the save, as the entry needs it."""

    job_id: str
    owner: str  # the job's owner, as the scheduler knows it
    state: str  # the state's name (RUNNING, PENDING, ...)
    running: bool
    works_for: str  # who the job may save for ("" nobody): the owner, or the portal's user
    node: str  # the scheduler's node list
    metadata: Mapping[str, str] = field(default_factory=dict)


# The scheduler's record of a job id; raises Refused when it cannot say or does not know it.
JobLookup = Callable[[str], JobOnRecord]


def caller_name(env: Mapping[str, str]) -> str:
    """The Unix user who ran sudo (``SUDO_UID``, which sudo itself sets)."""
    uid_text = env.get("SUDO_UID", "")
    if not uid_text.isdigit():
        raise Refused("imgsave-node-save runs only through sudo, from a save job")
    try:
        return pwd.getpwuid(int(uid_text)).pw_name
    except KeyError as e:
        raise Refused(f"uid {uid_text} has no account on this node") from e


def spec_from_job(
    config: SiteConfig, record: JobOnRecord, caller: str, request_id: str
) -> SaveSpec:
    """The save the scheduler's record of the job asks for, if ``caller`` may run it."""
    job = record.job_id
    if record.owner != caller:
        raise Refused(f"job {job} is not yours")  # never say whose it is
    if not record.running:
        raise Refused(f"job {job} is {record.state}, not running")
    meta = record.metadata
    if meta.get("request_id") != request_id:
        raise Refused(f"job {job} was not submitted for request {request_id}")
    user = record.works_for
    if not user:
        raise Refused(f"job {job} names no user it may save for")
    container = meta.get("container", "")
    if not _CONTAINER.fullmatch(container):
        raise Refused(f"job {job} names no valid container")
    try:
        formats = tuple(ImageFormat(f) for f in meta.get("formats", "oci").split(",") if f)
    except ValueError as e:
        raise Refused(f"job {job} asks for an unknown format") from e
    if not formats or any(f not in config.formats for f in formats):
        raise Refused(f"job {job} asks for a format this site does not offer")
    category = meta.get("category", "")
    if category not in config.categories:
        raise Refused(f"job {job} asks for an unknown category")
    return SaveSpec(
        request_id=request_id,
        user=user,
        container=container,
        target=meta.get("target", ""),
        formats=formats,
        category=category,
        node=record.node.split(",", 1)[0],
        site_config=config.source_path,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        full=meta.get("full") == "1",
    )


def claim_once(state_dir: Path, request_id: str) -> None:
    """Record that this node ran ``request_id``; a second run of it is refused."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = state_dir.lstat()
    if info.st_uid != 0 or info.st_mode & 0o022 or not state_dir.is_dir():
        raise Refused(f"{state_dir} must be a directory only root can write")
    try:
        fd = os.open(state_dir / request_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise Refused(f"request {request_id} already ran on this node") from e
    os.close(fd)


def admit(config: SiteConfig, args: Sequence[str], env: Mapping[str, str],
          look_up_job: JobLookup) -> SaveSpec:
    """Every check before the save; raises Refused with the reason."""
    if len(args) != 2:
        raise Refused("usage: imgsave-node-save JOBID REQUEST_ID")
    job_id, request_id = args
    if not is_job_id(job_id) or not REQUEST_ID.fullmatch(request_id):
        raise Refused("give a job id and an imgsave request id")
    caller = caller_name(env)
    spec = spec_from_job(config, look_up_job(job_id), caller, request_id)
    claim_once(Path(config.node.state_dir), request_id)
    return spec


def die_with_parent() -> None:
    """If sudo (and so the job) is killed outright, do not save on unattended."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot ask to be stopped with the job (prctl)")


def main(argv: Sequence[str] | None,
         job_lookup_for: Callable[[SiteConfig], JobLookup]) -> int:
    """``imgsave-node-save CONFIG JOBID REQUEST_ID``: admit the save, run it guarded.
    ``job_lookup_for`` gives the site's scheduler, asked about the job."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="imgsave-node-save: %(levelname)s %(message)s")  # fmt: skip
    events = EventStream(sys.stdout)
    if os.geteuid() != 0:
        print("imgsave-node-save: must run as root (through sudo)", file=sys.stderr)
        return REFUSED
    if not args:
        print("imgsave-node-save: no site config given by the wrapper", file=sys.stderr)
        return REFUSED
    os.umask(0o077)
    die_with_parent()
    signal.signal(signal.SIGTERM, cancel.on_signal)  # scancel/qdel: clean up, then fail
    try:
        config = load_site_config(args[0])
        spec = admit(config, args[1:], os.environ, job_lookup_for(config))
    except (Refused, ImgsaveError, OSError) as e:
        if is_full(e):
            return _failed(events, FailureKind.NO_SPACE,
                           f"node {os.uname().nodename}: no space left for imgsave's record: {e}")
        return _failed(events, FailureKind.INVALID,
                       f"refused: {e.message if isinstance(e, ImgsaveError) else e}")
    log.info("job %s: saving %s for %s", args[1], spec.container, spec.user)
    state_dir = Path(config.node.state_dir)
    engines = engines_on(config.engine, spec.node) or [engine_for(config.engine)]
    # what the epilog undoes if this process dies outright (builder_jobs/node_guard.py):
    # the save's temporary names in whichever engine holds the container
    cleanup = [engine.rmi([name]) for engine in engines  # one each: any may be gone
               for name in engine.local_names_after_push(temporary_image(spec.request_id),
                                                         spec.target)]
    # the SIF step's work directory (builder_jobs/sif.py), if it got that far
    cleanup.append(["find", sif.work_root(), "-maxdepth", "1", "-name",
                    f"imgsave-sif-{spec.request_id}-*", "-exec", "rm", "-rf", "{}", "+"])
    guard = JobGuard(record_path(state_dir, args[1]), spec.request_id, cleanup=cleanup)
    try:
        guard.write()
    except OSError as e:  # nothing is paused yet: better no save than an unguarded one
        guard.clear()
        kind = FailureKind.NO_SPACE if is_full(e) else FailureKind.INTERNAL
        return _failed(events, kind, f"cannot write the save's record in {state_dir}: {e}")
    run = SaveRun(spec=spec, site=config, events=events, env={}, job_id_known=args[1],
                  runner=GuardedRunner(run_command, guard, engines[0].base, bound=DIE_WITH_ENTRY,
                                       engines=engines),
                  located=lambda info: _lock_container(state_dir, info))
    try:
        result = save(run)
    finally:
        if guard.unpause:
            # a pause was begun and never seen undone (e.g. scancel's SIGTERM also hit
            # the `podman pause` child, which paused the container, then failed): resume
            run_command(guard.unpause, timeout=UNDO_TIMEOUT_SECONDS, check=False)
        for line in drop_helper_tags(guard, args[0]):  # normally already gone: one 404
            log.info("helper tag: %s", line)
        guard.clear()  # ended on its own, cleaned up: nothing left for the epilog
    return report_exit(result)


def _failed(events: EventStream, kind: FailureKind, message: str) -> int:
    """A save that never began: say why, in the events and the result."""
    events.emit(ProgressEvent(Stage.FAILED, message=message))
    events.finish(SaveResult(ok=False, failure=kind, error=message))
    print(f"imgsave-node-save: {message}", file=sys.stderr)
    return REFUSED


_HELD_LOCKS: list[int] = []  # kept open for the process's life


def _lock_container(state_dir: Path, info: ContainerInfo) -> None:
    """One save of a container at a time on this node; a second is refused at once."""
    try:
        _HELD_LOCKS.append(container_lock(state_dir, info.id))
    except BlockingIOError as e:
        raise SaveFailed(
            FailureKind.BUSY,
            f"container {info.name} is already being saved by another job; "
            "try again when that save has ended",
            retryable=True,
        ) from e
