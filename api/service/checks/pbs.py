"""PBS Pro's side of ``imgsave check``: job history as the site config expects, the queue.

Pure parsers of ``qstat -Bf -F json`` and ``qstat -Qf -F json QUEUE`` (real captures:
tests/captures/pbs/20, 20b; history off: 31i) and checks on what they parse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from api.service.checks.results import CheckResult, fail, ok, warn
from core.errors import ImgsaveError
from core.runner import Runner
from site_configs.schema import SchedulerSection, SiteConfig

HISTORY = "pbs job history"
QUEUE = "pbs queue"
DOC = "docs/install-pbs.md"


def _object(stdout: str, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(stdout) if stdout.strip() else {}
    except ValueError:
        return {}
    found = data.get(kind, {}) if isinstance(data, dict) else {}
    return found if isinstance(found, dict) else {}


def parse_server(stdout: str) -> dict[str, Any]:
    """The one server's attributes from ``qstat -Bf -F json`` ({} if none)."""
    servers = _object(stdout, "Server")
    return next(iter(servers.values()), {}) if servers else {}


def parse_queue(stdout: str, name: str) -> dict[str, Any] | None:
    """Queue ``name``'s attributes from ``qstat -Qf -F json`` (None if absent)."""
    found = _object(stdout, "Queue").get(name)
    return found if isinstance(found, dict) else None


def history_checks(server: Mapping[str, Any], section: SchedulerSection,
                   log_dir_readable: bool | None) -> list[CheckResult]:
    """The server keeps history exactly when the site config says it does (PBS default: off,
    and then the attribute is unset)."""
    enabled = str(server.get("job_history_enable", "False")) == "True"
    set_on = 'qmgr -c "set server job_history_enable = True"'
    if section.pbs_job_history and not enabled:
        return [fail(HISTORY, "scheduler.pbs_job_history is true but the server keeps no job "
                     "history: qstat -fx forgets each save when it ends",
                     f"{set_on} ({DOC} section 1), or set pbs_job_history = false and "
                     "pbs_accounting_log_dir")]
    results = []
    if enabled and not section.pbs_job_history:
        results.append(warn(HISTORY, "the server keeps job history but "
                            "scheduler.pbs_job_history is false: imgsave reads logs instead",
                            "set scheduler.pbs_job_history = true in the site config"))
    if not enabled and not section.pbs_accounting_log_dir:
        results.append(warn(HISTORY, "no job history and no pbs_accounting_log_dir: finished "
                            "saves are read from tracejob alone, which needs log access",
                            f"{set_on}, or a read-only copy of server_priv/accounting as "
                            "scheduler.pbs_accounting_log_dir"))
    if section.pbs_accounting_log_dir and log_dir_readable is False:
        results.append(fail(HISTORY, f"pbs_accounting_log_dir {section.pbs_accounting_log_dir} "
                            "is missing or not readable by this account",
                            f"give this account a read-only copy of the accounting logs ({DOC} "
                            "section 4)"))
    if not results:
        results.append(ok(HISTORY, f"job_history_enable={enabled}, as the site config says"))
    return results


def queue_check(name: str, queue: Mapping[str, Any] | None) -> CheckResult:
    """The save queue exists, is an execution queue, enabled and started."""
    if queue is None:
        return fail(QUEUE, f"queue {name} does not exist (qsub would exit 170, Unknown queue)",
                    f'qmgr -c "create queue {name} queue_type = execution" ({DOC} section 2), '
                    "or fix scheduler.partition")
    problems = []
    if str(queue.get("queue_type", "")).lower() != "execution":
        problems.append(f"queue_type is {queue.get('queue_type')}")
    for flag in ("enabled", "started"):
        if str(queue.get(flag, "False")) != "True":
            problems.append(f"{flag} is not True")
    if problems:
        return fail(QUEUE, f"queue {name}: {', '.join(problems)}",
                    f'qmgr -c "set queue {name} queue_type = execution", then enabled and '
                    "started = True")
    return ok(QUEUE, f"{name}: execution queue, enabled and started")


def pbs_checks(config: SiteConfig, runner: Runner) -> list[CheckResult]:
    """Run the PBS checks against the live server."""
    section = config.scheduler
    timeout = section.command_timeout_seconds
    try:
        server = parse_server(runner(["qstat", "-Bf", "-F", "json"], timeout=timeout).stdout)
    except ImgsaveError as e:
        return [fail(HISTORY, f"qstat -Bf failed: {e.message}",
                     "run this where the PBS client commands reach the server")]
    log_dir = section.pbs_accounting_log_dir
    readable = os.access(log_dir, os.R_OK | os.X_OK) if log_dir else None
    results = history_checks(server, section, readable)
    answer = runner(["qstat", "-Qf", "-F", "json", section.partition], timeout=timeout,
                    check=False)
    results.append(queue_check(section.partition, parse_queue(answer.stdout, section.partition)))
    return results
