"""The service layer: a save request becomes a spec in the spool plus a pinned batch job.

CLI, REST API and portal all go through :class:`SaveService`; it validates and
authorises, resolves the node, writes the spec and job script, submits, and reads
status back from the scheduler's accounting joined with the spool's events and result.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.progress import SaveStatus, build_status
from builder_jobs.events import EventLog, ProgressEvent, Stage, read_spool_text
from builder_jobs.script import render_job_script
from builder_jobs.spec import (
    EVENTS_FILE,
    OUTPUT_FILE,
    SCRIPT_FILE,
    SPEC_FILE,
    SaveSpec,
    spool_dir_for,
)
from registry.refs import ImageRef, check_unix_name, target_for_user
from scheduler_glue.base import BatchJob, JobRecord, Scheduler
from scheduler_glue.metadata import requester_of
from scheduler_glue.states import JobState
from site_configs.errors import (
    ImgsaveError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SchedulerError,
)
from site_configs.schema import ImageFormat, SiteConfig, current_account

log = logging.getLogger(__name__)

JOB_NAME_PREFIX = "imgsave"
# Container names as podman, docker and nerdctl accept them.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,253}")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
BY_JOB_DIR = "by-job"
SUBMIT_LOCKS_DIR = "submit-locks"
RECENT_SECONDS = 600.0
# How far back the scheduler is asked about a job whose spec is not in our own spool.
LOOKBACK = timedelta(days=31)


@dataclass(frozen=True)
class SaveRequest:
    """What a user asks for: save ``container`` as ``target`` (``name:tag``)."""

    user: str
    container: str
    target: str
    formats: tuple[ImageFormat, ...] = (ImageFormat.OCI,)
    category: str = "cpu"
    node: str = ""
    job_id: str = ""  # a running job of the user's whose node hosts the container


@dataclass(frozen=True)
class SubmittedSave:
    job_id: str
    request_id: str
    target: ImageRef
    node: str


class SaveService:
    """Submit, follow and cancel saves for one site, as one Unix account.

    ``account`` is who this process is: a user submitting their own saves (CLI mode) or
    the portal's service account submitting for the users it authenticated (portal
    mode); never root. Specs, scripts, events and results live in that account's own
    spool (0700). Whose a save is comes from the scheduler's record of the job's owner
    (and, for the service account's jobs, the requester in the metadata the service
    wrote), never from a file.
    """

    def __init__(
        self,
        config: SiteConfig,
        scheduler: Scheduler,
        *,
        registry_check: Callable[[str], object] | None = None,
        python: str = "",
        account: str = "",
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.registry_check = registry_check
        self.python = python or config.node_python or _default_python()
        self.account = account or current_account()
        self.spool = config.spool_for(self.account)

    @property
    def portal_mode(self) -> bool:
        return self.account == self.config.service_account

    # -- submit ---------------------------------------------------------------------
    def validate(self, request: SaveRequest) -> tuple[ImageRef, tuple[ImageFormat, ...]]:
        """Check a request without side effects; return its target and formats."""
        check_unix_name(request.user)
        if not _CONTAINER_NAME.fullmatch(request.container):
            raise InvalidRequest(
                f"container name {request.container!r} is invalid: use letters, digits, "
                "'_', '.' and '-', starting with a letter or digit"
            )
        formats = tuple(dict.fromkeys(request.formats))
        if not formats:
            raise InvalidRequest("give at least one format (oci, sif)")
        for fmt in formats:
            if fmt not in self.config.formats:
                allowed = ", ".join(f.value for f in self.config.formats)
                raise InvalidRequest(f"format {fmt.value!r} is not offered here (use {allowed})")
        if request.category not in self.config.categories:
            allowed = ", ".join(self.config.categories)
            raise InvalidRequest(f"category {request.category!r} is unknown (use {allowed})")
        if bool(request.node) == bool(request.job_id):
            raise InvalidRequest("give exactly one of --node NODE or --job JOBID")
        if request.node and not _NODE_NAME.fullmatch(request.node):
            # one plain node name: never a list or range that would pin to several
            raise InvalidRequest(f"node {request.node!r} is not a node name")
        target = target_for_user(
            request.target, request.user, self.config.registry.namespace, self.config.registry.url
        )
        return target, formats

    def resolve_node(self, request: SaveRequest, *, admin: bool = False) -> str:
        """The node hosting the container: given, or where the user's job runs."""
        if request.job_id:
            if not self.scheduler.is_job_id(request.job_id):
                raise InvalidRequest(f"job id {request.job_id!r} is not a job id")
            node, owner = self.scheduler.node_of_job(request.job_id)
            if owner != request.user and not admin:
                raise PermissionDenied(f"job {request.job_id} is not yours")
            return node
        # The backend checks the node before submitting (PBS would queue a job for an
        # unknown host forever); checking here too would ask the scheduler twice.
        return request.node

    def check_submitter(self, user: str) -> None:
        """Root never submits; a user submits only for themselves; the service account
        for the users it authenticated."""
        self.scheduler.check_submitter()
        if not self.portal_mode and user != self.account:
            raise PermissionDenied(
                f"you are {self.account}: you can save only as yourself, not as {user}"
            )

    def submit(self, request: SaveRequest, *, admin: bool = False) -> SubmittedSave:
        """Validate, write the spec and job script to the spool, submit pinned to the node."""
        target, formats = self.validate(request)
        self.check_submitter(request.user)
        node = self.resolve_node(request, admin=admin)
        spool = self._own_spool()
        # the in-flight check and the submit as one step per requester (flock in our own
        # spool): 30 saves at once cannot all pass a limit of 8; users do not wait on
        # each other's submits in the portal
        with _submit_lock(spool, request.user if self.portal_mode else ""):
            self._check_in_flight(request.user)
            if self.registry_check is not None:
                self.registry_check(request.user)  # a registry down or full fails now
            return self._submit_locked(request, target, formats, node, spool)

    def _submit_locked(self, request: SaveRequest, target: ImageRef,
                       formats: tuple[ImageFormat, ...], node: str,
                       spool: Path) -> SubmittedSave:
        request_id = uuid.uuid4().hex
        workdir = spool_dir_for(spool, request_id)
        spec = SaveSpec(
            request_id=request_id,
            user=request.user,
            container=request.container,
            target=str(target),
            formats=formats,
            category=request.category,
            node=node,
            site_config=self.config.source_path,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        workdir.mkdir(mode=0o700)
        workdir.chmod(0o700)  # whatever the umask
        _write_private(workdir / SPEC_FILE, spec.to_json(), 0o600)
        script = workdir / SCRIPT_FILE
        text = render_job_script(workdir / SPEC_FILE, self.python, request_id,
                                 job_id_variable=self.scheduler.job_id_variable,
                                 node_variable=self.scheduler.node_variable)  # fmt: skip
        _write_private(script, text, 0o700)
        EventLog(workdir / EVENTS_FILE).emit(ProgressEvent(Stage.QUEUED, message="submitting"))
        job = BatchJob(
            name=f"{JOB_NAME_PREFIX}-{request.user}",
            script=script,
            node=node,
            output_path=workdir / OUTPUT_FILE,
            metadata=_metadata(spec),
            partition=self.config.scheduler.partition,
            qos=self.config.scheduler.qos,
            account=self.config.scheduler.account,
            time_limit_minutes=self.config.scheduler.time_limit_minutes,
            workdir=workdir,
        )
        try:
            job_id = self.scheduler.submit(job)
        except Exception:
            _remove_tree(workdir)  # nothing half-made stays behind
            raise
        try:
            self._index_job(spool, job_id, request_id)
        except OSError as e:
            raise SchedulerError(
                f"save job {job_id} was submitted, but its entry in {spool / BY_JOB_DIR} "
                f"cannot be written ({e.strerror}); check that directory"
            ) from e
        log.info("submitted save %s as job %s on %s", request_id, job_id, node)
        return SubmittedSave(job_id=job_id, request_id=request_id, target=target, node=node)

    def _own_spool(self) -> Path:
        """This account's spool, created 0700; refused if it is not ours alone."""
        try:
            if not self.spool.exists():
                self.spool.mkdir(mode=0o700, parents=True)
                self.spool.chmod(0o700)
            info = self.spool.lstat()
        except OSError as e:
            raise SchedulerError(f"cannot create your spool {self.spool}: {e.strerror}") from e
        if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not self.spool.is_dir():
            raise PermissionDenied(
                f"{self.spool} must be a directory of yours that nobody else may read or "
                "write (chmod 700)"
            )
        return self.spool

    def _check_in_flight(self, user: str) -> None:
        """Refuse a save beyond the site's limit of queued and running saves per user."""
        limit = self.config.limits.max_saves_in_flight_per_user
        window = self.config.scheduler.time_limit_minutes * 60 + RECENT_SECONDS
        # UNKNOWN is not "in flight": the controller has forgotten the job (it ended)
        # and accounting cannot say how (slurmdbd down); counting it would lock the
        # user out for as long as accounting is away
        mine = [s for s in self._statuses_for(self._recent_job_ids(window), user, admin=False)
                if not s.finished and s.state is not JobState.UNKNOWN]
        if len(mine) >= limit:
            raise InvalidRequest(
                f"you have {len(mine)} saves queued or running (jobs "
                f"{', '.join(s.job_id for s in mine)}); this site allows {limit} at a time",
                retryable=True,
            )

    @staticmethod
    def _index_job(spool: Path, job_id: str, request_id: str) -> None:
        (spool / BY_JOB_DIR).mkdir(mode=0o700, exist_ok=True)
        link = spool / BY_JOB_DIR / job_id
        # Always (re)point the link: one left behind under this job id (a purged
        # scheduler's reused id) must never stand for this save.
        temporary = spool / BY_JOB_DIR / f".{job_id}.{request_id}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(Path("..") / request_id)
        os.replace(temporary, link)

    # -- status ---------------------------------------------------------------------
    def _spec_in(self, spool: Path | None, job_id: str) -> SaveSpec | None:
        if spool is None:
            return None
        text = read_spool_text(spool / BY_JOB_DIR / job_id / SPEC_FILE)
        if text is None:
            return None
        try:
            return SaveSpec.from_json(text)
        except InvalidRequest:
            return None

    def _full_id(self, job_id: str) -> str:
        """``7`` for the ``7.server`` this account submitted (PBS prints the full id; users
        type the number, as ``--job`` accepts it); any other id as given."""
        if not job_id.isdigit() or (self.spool / BY_JOB_DIR / job_id).is_symlink():
            return job_id
        try:
            names = os.listdir(self.spool / BY_JOB_DIR)
        except OSError:
            return job_id
        matches = [n for n in names if n.split(".", 1)[0] == job_id and self.scheduler.is_job_id(n)]
        return matches[0] if len(matches) == 1 else job_id

    def _spool_of(self, owner: str) -> Path | None:
        try:
            return self.config.spool_for(owner) if owner else None
        except ImgsaveError:
            return None

    def status(self, job_ids: Iterable[str], user: str, *, admin: bool = False) -> list[SaveStatus]:
        """Status of the given saves (one batched scheduler query).

        A job is shown to ``user`` if the scheduler says it is theirs (or was submitted
        by the service account for them); a job just submitted from this account's
        spool and not yet known to the scheduler, if its spec here says so. Anything
        else, another user's job included, is "not an imgsave save job of yours".
        """
        for job_id in job_ids:
            if not self.scheduler.is_job_id(job_id):
                raise InvalidRequest(f"job id {job_id!r} is not a job id")
        ids = list(dict.fromkeys(self._full_id(j) for j in job_ids))
        if not ids:
            return []
        mine = {j: self._spec_in(self.spool, j) for j in ids}
        for job_id, spec in mine.items():
            # our own spool (0700) says it is someone else's: no need to ask anyone
            if spec is not None and spec.user != user and not admin:
                raise NotFound(not_yours(job_id))
        statuses = self._join(mine, user, admin)
        for job_id, status in statuses.items():
            if status is None:
                raise NotFound(not_yours(job_id))
        return [status for status in statuses.values() if status is not None]

    def _join(self, own: dict[str, SaveSpec | None], user: str,
              admin: bool) -> dict[str, SaveStatus | None]:
        """Each job (with its spec from our own spool, if there) joined with one batched
        scheduler query; None where ``user`` may not see it."""
        found = [s for s in own.values() if s is not None]
        since = (min(_parse_time(s.created) for s in found) if len(found) == len(own)
                 else datetime.now(UTC) - LOOKBACK) - timedelta(minutes=5)  # fmt: skip
        records = self.scheduler.status(list(own), since)
        return {job_id: self._authorized(job_id, spec, records.get(job_id), user, admin)
                for job_id, spec in own.items()}

    def _authorized(
        self, job_id: str, own_spec: SaveSpec | None, record: JobRecord | None, user: str,
        admin: bool,
    ) -> SaveStatus | None:
        """The status of ``job_id`` if ``user`` may see it, else None."""
        owner = record.user if record is not None else ""
        spec: SaveSpec | None
        if record is not None and owner:
            requester = requester_of(owner, record.metadata, self.config.service_account)
            if not requester or (requester != user and not admin):
                return None
            if owner == self.account and own_spec is not None:
                spec = own_spec
            else:
                spec = self._spec_in(self._spool_of(owner), job_id)
            if spec is None or spec.user != requester:
                return None  # the spool disagrees with the scheduler: not shown
        else:
            # Not known to the scheduler yet: only the submitting account's own spool
            # (0700, nobody else writes there) can say the job is a save of this user.
            spec = own_spec
            if spec is None or (spec.user != user and not admin):
                return None
        try:
            _check_same_request(job_id, spec, record)
        except NotFound:
            return None
        return self._status(job_id, spec, record, owner or self.account)

    def _status(self, job_id: str, spec: SaveSpec, record: JobRecord | None,
                owner: str) -> SaveStatus:
        spool = self._spool_of(owner) or self.spool
        return build_status(job_id, spec, record, spool_dir_for(spool, spec.request_id))

    def queue(
        self, user: str, *, since: datetime | None = None, admin: bool = False
    ) -> list[SaveStatus]:
        """The user's saves since ``since`` (default: 7 days), finished ones included."""
        since = since or datetime.now(UTC) - timedelta(days=7)
        records = self.scheduler.list_jobs(since, name_prefix=JOB_NAME_PREFIX)
        statuses = []
        seen = set()
        for record in records:
            seen.add(record.job_id)
            own = self._spec_in(self.spool, record.job_id) if record.user == self.account else None
            status = self._authorized(record.job_id, own, record, user, admin)
            if status is not None:
                statuses.append(status)
        # slurmdbd learns of a job a moment after sbatch returns: ask for the saves
        # submitted in the last minutes that accounting does not list yet.
        recent = [j for j in self._recent_job_ids(RECENT_SECONDS) if j not in seen]
        statuses.extend(self._statuses_for(recent, user, admin=admin))
        return sorted(statuses, key=lambda s: self.scheduler.job_sort_key(s.job_id))

    def _recent_job_ids(self, seconds: float) -> list[str]:
        """Jobs indexed in this account's own spool in the last ``seconds``."""
        index = self.spool / BY_JOB_DIR
        cutoff = time.time() - seconds
        try:
            entries = list(os.scandir(index))
        except OSError:
            return []
        recent = []
        for entry in entries:
            if entry.name.startswith(".") or not self.scheduler.is_job_id(entry.name):
                continue  # a link being written
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    recent.append(entry.name)
            except OSError:
                continue  # replaced meanwhile
        return recent

    def _statuses_for(self, job_ids: list[str], user: str, *, admin: bool) -> list[SaveStatus]:
        """Statuses of those of ``job_ids`` (this account's own) that are the user's."""
        specs: dict[str, SaveSpec] = {}
        for job_id in job_ids:
            spec = self._spec_in(self.spool, job_id)
            if spec is not None and (spec.user == user or admin):
                specs[job_id] = spec
        if not specs:
            return []
        joined = self._join(dict(specs), user, admin)
        return [status for status in joined.values() if status is not None]

    def cancel(self, job_id: str, user: str, *, admin: bool = False) -> None:
        """Cancel a save the scheduler says is ``user``'s (or any, for an admin); one
        that already ended is refused with its state (nothing was cancelled)."""
        (status,) = self.status([job_id], user, admin=admin)  # NotFound unless theirs
        if status.state.final:
            raise InvalidRequest(
                f"job {job_id} has already ended ({status.state.label}); nothing to cancel"
            )
        self.scheduler.cancel(job_id)


def not_yours(job_id: str) -> str:
    """One answer for a missing job and another user's: no oracle (docs/api.md)."""
    return f"job {job_id} is not an imgsave save job of yours"


def _check_same_request(job_id: str, spec: SaveSpec, record: JobRecord | None) -> None:
    """The spool's index is only a pointer; the job's own metadata (set at sbatch/qsub,
    kept by accounting) says which request it runs. A mismatch is a stale or planted
    index entry, never this job's status."""
    recorded = record.metadata.get("request_id") if record else None
    if recorded and recorded != spec.request_id:
        raise NotFound(not_yours(job_id))


def _metadata(spec: SaveSpec) -> dict[str, str]:
    return {
        "request_id": spec.request_id,
        "user": spec.user,
        "container": spec.container,
        "target": spec.target,
        "formats": ",".join(f.value for f in spec.formats),
        "category": spec.category,
        "node": spec.node,  # the node it is pinned to, for reports of jobs that never ran
    }


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _default_python() -> str:
    import sys

    return sys.executable


@contextmanager
def _submit_lock(spool: Path, requester: str = "") -> Iterator[None]:
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


def _write_private(path: Path, text: str, mode: int) -> None:
    """A new file of ours alone (never through a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def _remove_tree(path: Path) -> None:
    for child in sorted(path.glob("*"), reverse=True):
        child.unlink(missing_ok=True)
    try:
        os.rmdir(path)
    except OSError:
        log.warning("could not remove %s", path)


__all__ = ["SaveRequest", "SaveService", "SaveStatus", "SubmittedSave", "JobState"]
