"""The save job's unprivileged half: ``python -I -m builder_jobs.job_side SPEC_PATH``.

The batch job runs as its owner (the user in CLI mode, the portal's service account in
portal mode) and this is all it runs. It asks the node's one privileged entry to do the
save (``sudo -n imgsave-node-save JOBID REQUEST_ID``, the site's
``node.privileged_command``), and writes what that entry reports on its stdout (typed
events, then the result) into the owner's own spool, with the owner's own credentials:
root never writes into a user's directory. The privileged entry trusts nothing from
here: it asks the scheduler who owns the job and what it was submitted for.

The spool lives in the owner's home, which may be full. Before asking for the save this
half sets aside a little room (:data:`RESERVE_BYTES`, released for the result), so a
home that fills up during the save still gets its result; events that no longer fit
are dropped. A spool too full even for that stops the job before anything is saved,
with exit status :data:`~builder_jobs.events.SPOOL_FULL_EXIT`, which status explains
from the scheduler's record alone. A full ``job.out`` never turns the exit status into
Python's 120 (a failed flush at exit).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from builder_jobs.events import (
    SPOOL_FULL_EXIT,
    EventLog,
    FailureKind,
    ProgressEvent,
    SaveResult,
    Stage,
    parse_stream_line,
    read_result,
    write_result,
)
from builder_jobs.script import JOB_ID_VARIABLE
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE, SaveSpec
from core.errors import CommandFailed, ImgsaveError
from core.runner import run_streaming
from site_configs.schema import SiteConfig, load_site_config

log = logging.getLogger("builder_jobs.job_side")

# The privileged entry's own limit is the job's time limit; this one only stops a
# wedged entry from outliving the job by much.
ENTRY_TIMEOUT_SECONDS = 48 * 3600.0
# Room set aside in the spool for the result (a few KB, written twice) and a last event.
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 256 * 1024
_FULL = (errno.ENOSPC, errno.EDQUOT)


def job_id_from(env: Mapping[str, str]) -> str:
    """The job's id, as the job script exports it from its scheduler's variable."""
    return env.get(JOB_ID_VARIABLE) or ""


class Relay:
    """Writes the entry's events and result into the spool; forwards cancel signals.

    The result carries the job's start and end on the node (``started_at``/``ended_at``):
    reports take the save's run time from them, not from accounting, whose end time
    becomes a slurmctld restart's time when the controller restarts as the job ends.
    """

    def __init__(self, spool: Path, started_at: float) -> None:
        self.spool = spool
        self.started_at = started_at
        self.events = EventLog(spool / EVENTS_FILE)
        self.result: SaveResult | None = None
        self.result_written = False
        self.full: OSError | None = None  # the spool's filesystem said it is full
        self.process: subprocess.Popen[str] | None = None
        self.cancelled = 0

    def line(self, text: str) -> None:
        item = parse_stream_line(text)
        if isinstance(item, ProgressEvent):
            if self.full is None:  # once the spool is full, later events are dropped
                self._write(lambda: self.events.emit(item))
        elif isinstance(item, SaveResult):
            self.result = result = replace(item, started_at=self.started_at)
            release_reserve(self.spool)  # the room set aside for this
            self.result_written = self._write(
                lambda: write_result(self.spool / RESULT_FILE, result))
        elif text.strip():
            say(text)  # a log line of the entry: to the job's output

    def _write(self, write: Callable[[], None]) -> bool:
        try:
            write()
        except OSError as e:
            if e.errno not in _FULL:
                raise
            self.full = e
            say(f"{self.spool}: {e.strerror}; events from here on are dropped", sys.stderr)
            return False
        return True

    def ended(self) -> None:
        """Write the result once more with the job's end: the entry has finished its
        cleanup, the job's last work (the result went out before it, so that the image
        is usable at once)."""
        if self.result is None:
            return
        self.result = replace(self.result, ended_at=time.time())
        try:
            write_result(self.spool / RESULT_FILE, self.result)
        except OSError as e:  # the spool removed meanwhile: the save itself is done
            log.warning("cannot record the save's end in %s: %s", self.spool, e)

    def started(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def forward(self, signum: int, frame: object) -> None:
        """scancel/qdel: pass the signal on (sudo relays it to the entry), keep reading
        so the entry's cleanup and its FAILED result still reach the spool."""
        self.cancelled = signum
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except OSError:
                pass


def say(text: str, stream: TextIO | None = None) -> None:
    """One line to the job's output (``job.out``, in the spool): a full spool loses it."""
    try:
        print(" ".join(text.split()), file=stream or sys.stdout, flush=True)
    except OSError:
        pass


def set_aside_reserve(spool: Path) -> None:
    """Write :data:`RESERVE_BYTES` into the spool; raises OSError if they do not fit."""
    path = spool / RESERVE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, bytes(RESERVE_BYTES))
        os.fsync(fd)  # a network home may say "full" only here
    except OSError:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def release_reserve(spool: Path) -> None:
    (spool / RESERVE_FILE).unlink(missing_ok=True)


def spool_full(spool: Path, error: OSError) -> int:
    """The spool cannot take even the reserve: nothing is saved; say so where possible."""
    message = (f"the save job could not write into its spool {spool}: {error.strerror}; "
               "free some space there (your home directory) and save again")  # fmt: skip
    try:
        write_result(spool / RESULT_FILE,
                     SaveResult(ok=False, failure=FailureKind.NO_SPACE, error=message))
    except OSError:
        pass  # the exit status tells the scheduler; status says it from there
    say(message, sys.stderr)
    return SPOOL_FULL_EXIT


def fail(spool: Path, message: str, kind: FailureKind = FailureKind.INTERNAL) -> int:
    """Record a save that could not even reach the privileged entry."""
    try:
        EventLog(spool / EVENTS_FILE).emit(ProgressEvent(Stage.FAILED, message=message))
        write_result(spool / RESULT_FILE, SaveResult(ok=False, failure=kind, error=message))
    except OSError as e:
        if e.errno in _FULL:
            return spool_full(spool, e)
        raise
    say(message, sys.stderr)
    return 1


def run(spec_path: Path, env: Mapping[str, str]) -> int:
    started_at = time.time()  # the job script execs this at once: the job's start
    spool = spec_path.parent
    try:
        spec = SaveSpec.from_json(spec_path.read_text())
        site: SiteConfig = load_site_config(spec.site_config)
    except (OSError, ImgsaveError) as e:
        return fail(spool, f"cannot start the save from {spec_path}: {e}", FailureKind.INVALID)
    job_id = job_id_from(env)
    if not job_id:
        return fail(spool, f"not inside a batch job: no {JOB_ID_VARIABLE}",
                    FailureKind.INVALID)  # fmt: skip
    try:
        set_aside_reserve(spool)
    except OSError as e:
        if e.errno in _FULL:
            return spool_full(spool, e)
        raise
    try:
        return relay_save(spool, [*site.node.privileged_command, job_id, spec.request_id],
                          started_at)
    finally:
        release_reserve(spool)


def relay_save(spool: Path, argv: list[str], started_at: float) -> int:
    """Run the privileged entry, relaying what it reports into the spool."""
    relay = Relay(spool, started_at)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay.forward)
    try:
        code = run_streaming(
            argv, relay.line, timeout=ENTRY_TIMEOUT_SECONDS, on_start=relay.started
        )
    except CommandFailed as e:
        return fail(spool, f"the node's privileged entry {argv[0]} could not run: {e}")
    relay.ended()
    if relay.full is not None and not relay.result_written:
        say(f"the save's result could not be written into {spool}: {relay.full.strerror}",
            sys.stderr)
        return SPOOL_FULL_EXIT
    if relay.result is None and read_result(spool / RESULT_FILE) is None:
        why = f"signal {-code}" if code < 0 else f"exit status {code}"
        hint = (" (is imgsave-node-save installed and allowed by sudoers on this node? "
                "see docs/security.md)") if code == 1 else ""  # fmt: skip
        return fail(spool, f"the node's privileged entry ended without a result ({why}){hint}")
    if relay.result is not None and relay.result.ok:
        return 0
    return code or 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -I -m builder_jobs.job_side SPEC_PATH", file=sys.stderr)
        return 2
    os.umask(0o077)  # the spool is its owner's alone
    code = run(Path(args[0]).absolute(), os.environ)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        os._exit(code)  # a full job.out: Python's own exit would make this status 120
    return code


if __name__ == "__main__":
    sys.exit(main())
