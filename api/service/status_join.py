"""A save's status: its spec (from the submitting account's spool) joined with the
scheduler's record of its job, shown only to whom it belongs.

Whose a save is comes from the scheduler's record of the job's owner (and, for the
service account's jobs, the requester in the metadata the service wrote), never from a
file; the spool only adds the spec, events and result of a save the record vouches for.

While a save runs, its progress comes from the spool's events file: a RUNNING record
the scheduler gave less than :data:`LIVE_RECORD_SECONDS` ago is reused (no sacct/qstat
per poll of the CLI's ``--wait`` or the API's GET), until the save writes its result;
then, and for any other state, the scheduler is asked again (:class:`LiveRecords`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.service.progress import SaveStatus, build_status
from api.service.spool import spec_in
from builder_jobs.spec import RESULT_FILE, SaveSpec, spool_dir_for
from core.errors import ImgsaveError, NotFound
from scheduler_glue.base import JobRecord, Scheduler
from scheduler_glue.metadata import requester_of
from scheduler_glue.states import JobState
from site_configs.schema import SiteConfig

# How far back the scheduler is asked about a job whose spec is not in our own spool.
LOOKBACK = timedelta(days=31)
# How long a RUNNING record stands for a save that writes no result yet: a job killed or
# cancelled from outside shows as such at most this late.
LIVE_RECORD_SECONDS = 3.0


class LiveRecords:
    """RUNNING records recently given by the scheduler, per process, thread-safe."""

    def __init__(self, seconds: float = LIVE_RECORD_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._records: dict[str, tuple[float, JobRecord]] = {}
        self._lock = threading.Lock()
        self.hits = 0  # statuses answered without asking the scheduler

    def split(self, job_ids: Iterable[str], reusable: Callable[[str], bool]
              ) -> tuple[dict[str, JobRecord], list[str]]:
        """(fresh RUNNING records of the ids ``reusable`` allows, the ids to ask)."""
        now = self.clock()
        live: dict[str, JobRecord] = {}
        with self._lock:
            for job_id in job_ids:
                kept = self._records.get(job_id)
                if kept is not None and now - kept[0] <= self.seconds and reusable(job_id):
                    live[job_id] = kept[1]
            self.hits += len(live)
        return live, [j for j in job_ids if j not in live]

    def keep(self, records: Mapping[str, JobRecord]) -> None:
        now = self.clock()
        with self._lock:
            for job_id, record in records.items():
                if record.state is JobState.RUNNING:
                    self._records[job_id] = (now, record)
                else:
                    self._records.pop(job_id, None)
            for job_id in [j for j, (t, _) in self._records.items() if now - t > self.seconds]:
                del self._records[job_id]

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)


class StatusJoin:
    """Joins saves with one batched scheduler query, as seen from ``account`` (whose
    spool is ``spool``)."""

    def __init__(self, config: SiteConfig, scheduler: Scheduler, account: str,
                 spool: Path) -> None:
        self.config = config
        self.scheduler = scheduler
        self.account = account
        self.spool = spool
        self.live = LiveRecords()

    def statuses(self, own: dict[str, SaveSpec | None], user: str,
                 admin: bool) -> dict[str, SaveStatus | None]:
        """Each job (with its spec from our own spool, if there) joined with one batched
        scheduler query; None where ``user`` may not see it."""
        found = [s for s in own.values() if s is not None]
        since = (min(_parse_time(s.created) for s in found) if len(found) == len(own)
                 else datetime.now(UTC) - LOOKBACK) - timedelta(minutes=5)  # fmt: skip
        records, ask = self.live.split(own, lambda j: self._no_result_yet(own[j]))
        if ask:
            asked = self.scheduler.status(ask, since)
            self.live.keep(asked)
            records.update(asked)
        return {job_id: self.authorized(job_id, spec, records.get(job_id), user, admin)
                for job_id, spec in own.items()}

    def authorized(
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
                spec = spec_in(self._spool_of(owner), job_id)
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

    def _no_result_yet(self, spec: SaveSpec | None) -> bool:
        """Whether a save of our own spool has written no result (its record may be
        reused); False for a save of another account's spool."""
        if spec is None:
            return False
        return not (spool_dir_for(self.spool, spec.request_id) / RESULT_FILE).exists()

    def _spool_of(self, owner: str) -> Path | None:
        try:
            return self.config.spool_for(owner) if owner else None
        except ImgsaveError:
            return None

    def _status(self, job_id: str, spec: SaveSpec, record: JobRecord | None,
                owner: str) -> SaveStatus:
        spool = self._spool_of(owner) or self.spool
        return build_status(job_id, spec, record, spool_dir_for(spool, spec.request_id))


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


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
