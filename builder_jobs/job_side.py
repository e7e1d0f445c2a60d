"""The save job's unprivileged half: ``python -I -m builder_jobs.job_side SPEC_PATH``.

The batch job runs as its owner (the user in CLI mode, the portal's service account in
portal mode) and this is all it runs. It asks the node's one privileged entry to do the
save (``sudo -n imgsave-node-save JOBID REQUEST_ID``, the site's
``node.privileged_command``), and writes what that entry reports on its stdout (typed
events, then the result) into the owner's own spool, with the owner's own credentials:
root never writes into a user's directory. The privileged entry trusts nothing from
here: it asks the scheduler who owns the job and what it was submitted for.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder_jobs.events import (
    EventLog,
    FailureKind,
    ProgressEvent,
    SaveResult,
    Stage,
    parse_stream_line,
    read_result,
    write_result,
)
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE, SaveSpec
from site_configs.errors import CommandFailed, ImgsaveError
from site_configs.runner import run_streaming
from site_configs.schema import SiteConfig, load_site_config

log = logging.getLogger("builder_jobs.job_side")

# The privileged entry's own limit is the job's time limit; this one only stops a
# wedged entry from outliving the job by much.
ENTRY_TIMEOUT_SECONDS = 48 * 3600.0


def job_id_from(env: Mapping[str, str]) -> str:
    """The job's id as its scheduler exports it to the job."""
    return env.get("SLURM_JOB_ID") or env.get("PBS_JOBID") or ""


class Relay:
    """Writes the entry's events and result into the spool; forwards cancel signals."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.events = EventLog(spool / EVENTS_FILE)
        self.result: SaveResult | None = None
        self.process: subprocess.Popen[str] | None = None
        self.cancelled = 0

    def line(self, text: str) -> None:
        item = parse_stream_line(text)
        if isinstance(item, ProgressEvent):
            self.events.emit(item)
        elif isinstance(item, SaveResult):
            self.result = item
            write_result(self.spool / RESULT_FILE, item)
        elif text.strip():
            print(text, flush=True)  # a log line of the entry: to the job's output

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


def fail(spool: Path, message: str, kind: FailureKind = FailureKind.INTERNAL) -> int:
    """Record a save that could not even reach the privileged entry."""
    EventLog(spool / EVENTS_FILE).emit(ProgressEvent(Stage.FAILED, message=message))
    write_result(spool / RESULT_FILE, SaveResult(ok=False, failure=kind, error=message))
    print(" ".join(message.split()), file=sys.stderr)
    return 1


def run(spec_path: Path, env: Mapping[str, str]) -> int:
    spool = spec_path.parent
    try:
        spec = SaveSpec.from_json(spec_path.read_text())
        site: SiteConfig = load_site_config(spec.site_config)
    except (OSError, ImgsaveError) as e:
        return fail(spool, f"cannot start the save from {spec_path}: {e}", FailureKind.INVALID)
    job_id = job_id_from(env)
    if not job_id:
        return fail(spool, "not inside a batch job: no SLURM_JOB_ID or PBS_JOBID",
                    FailureKind.INVALID)  # fmt: skip
    relay = Relay(spool)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay.forward)
    argv = [*site.node.privileged_command, job_id, spec.request_id]
    try:
        code = run_streaming(
            argv, relay.line, timeout=ENTRY_TIMEOUT_SECONDS, on_start=relay.started
        )
    except CommandFailed as e:
        return fail(spool, f"the node's privileged entry {argv[0]} could not run: {e}")
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
    return run(Path(args[0]).absolute(), os.environ)


if __name__ == "__main__":
    sys.exit(main())
