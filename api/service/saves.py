"""The service layer: a save request becomes a spec in the spool plus a pinned batch job.

CLI, REST API and portal all go through :class:`SaveService`; it validates and
authorises, resolves the node, writes the spec and job script, submits, and reads
status back from the scheduler's accounting joined with the spool's events and result.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.service.progress import SaveStatus
from api.service.save_request import SaveRequest, SubmittedSave, validate_request
from api.service.spool import (
    BY_JOB_DIR,
    index_job,
    job_of_request,
    own_spool,
    remove_tree,
    spec_in,
    submit_lock,
    write_private,
)
from api.service.status_join import StatusJoin, not_yours
from builder_jobs.events import EventLog, ProgressEvent, Stage, read_result
from builder_jobs.spec import (
    EVENTS_FILE,
    OUTPUT_FILE,
    RESULT_FILE,
    SCRIPT_FILE,
    SPEC_FILE,
    SaveSpec,
    spool_dir_for,
)
from core.errors import InvalidRequest, NotFound, PermissionDenied, SchedulerError
from registry.refs import ImageRef
from scheduler_glue.base import SAVE_STEP_PREFIX, BatchJob, Scheduler
from scheduler_glue.states import JobState
from site_configs.schema import ImageFormat, SiteConfig, current_account

log = logging.getLogger(__name__)

JOB_NAME_PREFIX = "imgsave"
RECENT_SECONDS = 600.0


def new_request_id() -> str:
    """A new save's request id (its spool directory's name)."""
    return uuid.uuid4().hex


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
        self._join = StatusJoin(config, scheduler, self.account, self.spool)

    @property
    def portal_mode(self) -> bool:
        return self.account == self.config.service_account

    # -- submit ---------------------------------------------------------------------
    def validate(self, request: SaveRequest) -> tuple[ImageRef, tuple[ImageFormat, ...]]:
        """Check a request without side effects; return its target and formats."""
        return validate_request(self.config, request)

    def resolve_node(self, request: SaveRequest, *, admin: bool = False) -> str:
        """The node hosting the container: given, or where the user's job runs."""
        if request.in_job:
            return self._step_node(request)
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

    def _step_node(self, request: SaveRequest) -> str:
        """The node of a save run as a step of ``request.job_id``: the user's own running
        job (nobody runs a step in another's, admins included), on ``request.node`` if
        given (Slurm refuses a node outside the job), else its first node."""
        if self.portal_mode:
            raise PermissionDenied(
                "the portal cannot run a save inside your job (a service account runs no "
                "steps in a user's job): run `imgsave submit --job JOBID --in-job` yourself"
            )
        if not self.scheduler.is_job_id(request.job_id) or "." in request.job_id:
            raise InvalidRequest(f"--job {request.job_id!r} is not a job id")
        node, owner = self.scheduler.node_of_job(request.job_id)
        if owner != request.user:
            raise PermissionDenied(f"job {request.job_id} is not yours")
        return request.node or node

    def check_submitter(self, user: str) -> None:
        """Root never submits; a user submits only for themselves; the service account
        for the users it authenticated."""
        self.scheduler.check_submitter()
        if not self.portal_mode and user != self.account:
            raise PermissionDenied(
                f"you are {self.account}: you can save only as yourself, not as {user}"
            )

    def submit(self, request: SaveRequest, *, admin: bool = False,
               request_id: str | None = None) -> SubmittedSave:
        """Validate, write the spec and job script to the spool, submit pinned to the node
        (as save ``request_id``, from :func:`new_request_id`, if the caller chose it)."""
        target, formats = self.validate(request)
        self.check_submitter(request.user)
        node = self.resolve_node(request, admin=admin)
        spool = own_spool(self.spool)
        # the in-flight check and the submit as one step per requester (flock in our own
        # spool): 30 saves at once cannot all pass a limit of 8; users do not wait on
        # each other's submits in the portal
        with submit_lock(spool, request.user if self.portal_mode else ""):
            self._check_in_flight(request.user)
            if self.registry_check is not None:
                self.registry_check(request.user)  # a registry down or full fails now
            return self._submit_locked(request, target, formats, node, spool,
                                       request_id or new_request_id())

    def submitted_as(self, request_id: str) -> tuple[str, str, str, str] | None:
        """Job id, request id, target and node of save ``request_id`` if it was submitted
        from this spool (its index names it), else None."""
        found = job_of_request(own_spool(self.spool), request_id)
        if found is None:
            return None
        job_id, spec = found
        return job_id, request_id, spec.target, spec.node

    def _submit_locked(self, request: SaveRequest, target: ImageRef,
                       formats: tuple[ImageFormat, ...], node: str,
                       spool: Path, request_id: str) -> SubmittedSave:
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
            full=request.full,
        )
        workdir.mkdir(mode=0o700)
        workdir.chmod(0o700)  # whatever the umask
        write_private(workdir / SPEC_FILE, spec.to_json(), 0o600)
        script = workdir / SCRIPT_FILE
        from builder_jobs.script import render_job_script  # jinja2: not on status's path

        step_variable = self.scheduler.step_variable if request.in_job else ""
        if request.in_job and not step_variable:
            raise InvalidRequest(f"{self.scheduler.label} here cannot run a save as a step "
                                 "of your job: leave out --in-job")  # fmt: skip
        text = render_job_script(workdir / SPEC_FILE, self.python, request_id,
                                 job_id_variable=self.scheduler.job_id_variable,
                                 node_variable=self.scheduler.node_variable,
                                 step_variable=step_variable)  # fmt: skip
        write_private(script, text, 0o700)
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
            if request.in_job:  # a step of the user's job, named for the request
                job = replace(job, name=f"{SAVE_STEP_PREFIX}{request.user}-{request_id}")
                job_id = self.scheduler.submit_step(request.job_id, job)
            else:
                job_id = self.scheduler.submit(job)
        except Exception:
            remove_tree(workdir)  # nothing half-made stays behind
            raise
        try:
            index_job(spool, job_id, request_id)
        except OSError as e:
            raise SchedulerError(
                f"save job {job_id} was submitted, but its entry in {spool / BY_JOB_DIR} "
                f"cannot be written ({e.strerror}); check that directory"
            ) from e
        log.info("submitted save %s as job %s on %s", request_id, job_id, node)
        return SubmittedSave(job_id=job_id, request_id=request_id, target=target, node=node)

    def _check_in_flight(self, user: str) -> None:
        """Refuse a save beyond the site's limit of queued and running saves per user."""
        limit = self.config.limits.max_saves_in_flight_per_user
        window = self.config.scheduler.time_limit_minutes * 60 + RECENT_SECONDS
        # UNKNOWN is not "in flight": the controller has forgotten the job (it ended)
        # and accounting cannot say how (slurmdbd down); counting it would lock the
        # user out for as long as accounting is away
        # a save whose result says pushed is finished whatever the job's state: accounting
        # is asked only about the others (none, most of the time)
        recent = [j for j in self._recent_job_ids(window) if not self._pushed(j)]
        mine = [s for s in self._statuses_for(recent, user, admin=False)
                if not s.finished and s.state is not JobState.UNKNOWN]
        if len(mine) >= limit:
            raise InvalidRequest(
                f"you have {len(mine)} saves queued or running (jobs "
                f"{', '.join(s.job_id for s in mine)}); this site allows {limit} at a time",
                retryable=True,
            )

    def _pushed(self, job_id: str) -> bool:
        """Whether this account's spool holds a result saying ``job_id``'s image is
        pushed (the spool is the account's own: as the status it makes, see ``finished``)."""
        result = read_result(self.spool / BY_JOB_DIR / job_id / RESULT_FILE)
        return result is not None and result.ok

    # -- status ---------------------------------------------------------------------
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
        mine = {j: spec_in(self.spool, j) for j in ids}
        for job_id, spec in mine.items():
            # our own spool (0700) says it is someone else's: no need to ask anyone
            if spec is not None and spec.user != user and not admin:
                raise NotFound(not_yours(job_id))
        statuses = self._join.statuses(mine, user, admin)
        for job_id, status in statuses.items():
            if status is None:
                raise NotFound(not_yours(job_id))
        return [status for status in statuses.values() if status is not None]

    def progress_files(self, job_ids: Iterable[str], user: str, *,
                       admin: bool = False) -> list[Path]:
        """The events and result files of those of ``job_ids`` that are saves of
        ``user`` in this account's own spool: what ``status --wait`` watches."""
        files: list[Path] = []
        for job_id in job_ids:
            spec = spec_in(self.spool, self._full_id(job_id))
            if spec is not None and (spec.user == user or admin):
                workdir = spool_dir_for(self.spool, spec.request_id)
                files += [workdir / EVENTS_FILE, workdir / RESULT_FILE]
        return files

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
            own = spec_in(self.spool, record.job_id) if record.user == self.account else None
            status = self._join.authorized(record.job_id, own, record, user, admin)
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
            spec = spec_in(self.spool, job_id)
            if spec is not None and (spec.user == user or admin):
                specs[job_id] = spec
        if not specs:
            return []
        joined = self._join.statuses(dict(specs), user, admin)
        return [status for status in joined.values() if status is not None]

    def cancel(self, job_id: str, user: str, *, admin: bool = False) -> None:
        """Cancel a save the scheduler says is ``user``'s (or any, for an admin); one
        that already ended is refused with its state (nothing was cancelled)."""
        (status,) = self.status([job_id], user, admin=admin)  # NotFound unless theirs
        if status.state.final:
            raise InvalidRequest(
                f"job {job_id} has already ended ({status.state.label}); nothing to cancel"
            )
        self._join.live.forget(status.job_id)
        self.scheduler.cancel(job_id)


def _metadata(spec: SaveSpec) -> dict[str, str]:
    return {
        "request_id": spec.request_id,
        "user": spec.user,
        "container": spec.container,
        "target": spec.target,
        "formats": ",".join(f.value for f in spec.formats),
        "category": spec.category,
        "node": spec.node,  # the node it is pinned to, for reports of jobs that never ran
        **({"full": "1"} if spec.full else {}),  # --full: the node reads it (node_gate)
    }




def _default_python() -> str:
    import sys

    return sys.executable
