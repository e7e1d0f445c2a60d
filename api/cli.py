"""``imgsave``: sbatch/squeue-style commands for saving containers as images.

Output is a table by default and JSON with ``--json``. Exit codes follow sbatch: 0 on
success, 1 with ``imgsave: error: <reason>`` on stderr when a request fails, 2 for usage.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from api.context import Site
from api.progress import SaveStatus
from api.report import GROUPINGS, usage_report
from api.service import SaveRequest
from api.tables import human_bytes, render_table
from builder_jobs.events import Stage
from site_configs.errors import ImgsaveError
from site_configs.schema import CONFIG_ENV, ImageFormat, get_site_config

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self, config_path: str | None, as_json: bool, user: str | None) -> None:
        self.config_path = config_path
        self.as_json = as_json
        self.real_user = getpass.getuser()
        is_root = os.geteuid() == 0
        if user and user != self.real_user and not is_root:
            raise click.UsageError("only root may act for another user (--user)")
        self.user = user or self.real_user
        # root acting for a user sees exactly what that user sees; root itself sees all
        self.admin = is_root and self.user == self.real_user
        self._site: Site | None = None

    @property
    def site(self) -> Site:
        if self._site is None:
            self._site = Site(get_site_config(self.config_path))
        return self._site

    def emit(self, data: object, table: Callable[[], str]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            text = table()
            if text:
                click.echo(text)


def reports_errors(func: F) -> F:
    """Turn an ImgsaveError into ``imgsave: error: ...`` and exit 1."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ImgsaveError as e:
            hint = " (temporary; try again)" if e.retryable else ""
            click.echo(f"imgsave: error: {e.message}{hint}", err=True)
            sys.exit(1)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--config", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
              help=f"Site config file (default: ${CONFIG_ENV} or the bundled local.toml).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--user", default=None, help="Act for this user (root/admin only).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, as_json: bool, user: str | None) -> None:
    """Save running containers as images through the batch scheduler."""
    ctx.obj = Context(config_path, as_json, user)


def _formats(value: str) -> tuple[ImageFormat, ...]:
    try:
        return tuple(ImageFormat(v.strip()) for v in value.split(",") if v.strip())
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: formats are oci, sif or oci,sif") from e


@main.command()
@click.argument("container")
@click.argument("target")
@click.option("--node", "-w", default="", help="Node hosting the container (like sbatch -w).")
@click.option("--job", "job_id", default="", help="A running job of yours hosting the container.")
@click.option("--format", "formats", default="oci", show_default=True,
              help="oci, sif, or oci,sif (both from one commit).")
@click.option("--category", default="cpu", show_default=True, help="cpu or gpu.")
@click.pass_obj
@reports_errors
def submit(obj: Context, container: str, target: str, node: str, job_id: str,
           formats: str, category: str) -> None:
    """Save CONTAINER as TARGET (name:tag) with a job pinned to its node."""
    request = SaveRequest(
        user=obj.user, container=container, target=target, formats=_formats(formats),
        category=category, node=node, job_id=job_id,
    )
    submitted = obj.site.saves.submit(request, admin=obj.admin)
    obj.emit(
        {"job_id": submitted.job_id, "request_id": submitted.request_id,
         "target": str(submitted.target), "node": submitted.node},
        lambda: f"Submitted image save job {submitted.job_id}",
    )


def _status_rows(statuses: Sequence[SaveStatus]) -> str:
    return render_table(
        ["JOBID", "USER", "CONTAINER", "TARGET", "NODE", "STATE", "STAGE", "PROGRESS", "REASON"],
        [[s.job_id, s.user, s.container, s.target, s.node, s.state.label.upper(), s.stage.value,
          f"{s.percent}%", s.reason] for s in statuses],
    )


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Follow until the save ends, with a progress bar.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
@reports_errors
def status(obj: Context, job_ids: tuple[str, ...], wait: bool, timeout: float) -> None:
    """Show the state of save jobs (from scheduler accounting and the node's events)."""
    saves = obj.site.saves
    statuses = saves.status(job_ids, obj.user, admin=obj.admin)
    if wait:
        statuses = _follow(obj, job_ids, statuses, timeout)
    obj.emit([s.to_dict() for s in statuses], lambda: _status_rows(statuses))
    if wait and any(s.stage is not Stage.DONE for s in statuses):
        for s in statuses:
            if s.stage is not Stage.DONE:
                click.echo(f"imgsave: error: job {s.job_id}: {s.reason or s.state.label}",
                           err=True)
        sys.exit(1)


def _follow(obj: Context, job_ids: Sequence[str], statuses: list[SaveStatus],
            timeout: float) -> list[SaveStatus]:
    deadline = time.monotonic() + timeout
    interactive = sys.stderr.isatty() and not obj.as_json
    last_line = ""
    delay = 0.5
    while True:
        line = "  ".join(_bar(s) for s in statuses)
        if line != last_line:
            click.echo(("\r" + line) if interactive else line, err=True, nl=not interactive)
            last_line = line
        if all(s.finished for s in statuses) or time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
        statuses = obj.site.saves.status(job_ids, obj.user, admin=obj.admin)
    if interactive:
        click.echo("", err=True)
    return statuses


def _bar(s: SaveStatus, width: int = 24) -> str:
    filled = width * s.percent // 100
    detail = ""
    if s.bytes_total:
        detail = f" {human_bytes(s.bytes_done)}/{human_bytes(s.bytes_total)}"
    bar = "#" * filled + "." * (width - filled)
    return f"{s.job_id} [{bar}] {s.percent:3d}% {s.stage.value}{detail}"


@main.command()
@click.option("--days", default=7, show_default=True, help="How far back to look.")
@click.option("--all-users", is_flag=True, help="Every user's saves (root/admin only).")
@click.pass_obj
@reports_errors
def queue(obj: Context, days: int, all_users: bool) -> None:
    """List your save jobs, finished ones included (squeue-style)."""
    if all_users and not obj.admin:
        raise click.UsageError("--all-users needs root/admin")
    since = datetime.now(UTC).timestamp() - days * 86400
    statuses = obj.site.saves.queue(
        obj.user, since=datetime.fromtimestamp(since, UTC), admin=all_users
    )
    obj.emit([s.to_dict() for s in statuses], lambda: _status_rows(statuses))


@main.command()
@click.argument("job_id")
@click.pass_obj
@reports_errors
def cancel(obj: Context, job_id: str) -> None:
    """Cancel a queued or running save job."""
    obj.site.saves.cancel(job_id, obj.user, admin=obj.admin)
    obj.emit({"job_id": job_id, "cancelled": True}, lambda: f"Cancelled save job {job_id}")


@main.command()
@click.pass_obj
@reports_errors
def images(obj: Context) -> None:
    """List your images in the registry: name, tag, size, created."""
    found = obj.site.images.list(obj.user)
    obj.emit(
        [i.to_dict() for i in found],
        lambda: render_table(
            ["IMAGE", "TAG", "FORMAT", "CATEGORY", "SIZE", "CREATED", "DIGEST"],
            [[i.repository, i.tag, i.format, i.category, human_bytes(i.size_bytes), i.created,
              i.digest[:19]] for i in found],
        ),
    )


@main.command()
@click.argument("image")
@click.pass_obj
@reports_errors
def delete(obj: Context, image: str) -> None:
    """Delete one of your images (name:tag) from the registry."""
    digest = obj.site.images.delete(obj.user, image)
    obj.emit({"image": image, "digest": digest, "deleted": True},
             lambda: f"Deleted {image} ({digest})")


@main.command()
@click.option("--since", default=None, help="Start date, YYYY-MM-DD (default: 30 days ago).")
@click.option("--until", default=None, help="End date, YYYY-MM-DD (default: now).")
@click.option("--by", "by", default="user", show_default=True,
              help=f"Comma-separated groupings: {', '.join(GROUPINGS)}.")
@click.pass_obj
@reports_errors
def report(obj: Context, since: str | None, until: str | None, by: str) -> None:
    """Image-build usage from scheduler accounting (root/admin sees every user)."""
    rows = usage_report(obj.site, since=since, until=until, by=by,
                        user=None if obj.admin else obj.user)
    obj.emit([r.to_dict() for r in rows], lambda: _report_table(rows))


def _report_table(rows: Sequence[Any]) -> str:
    if not rows:
        return "no save jobs in this period"
    keys = list(rows[0].group)
    return render_table(
        [k.upper() for k in keys] + ["SAVES", "OK", "FAILED", "MEDIAN_RUN_S", "P95_RUN_S",
                                     "CPU_S", "PUSHED"],
        [[r.group[k] for k in keys] + [r.saves, r.succeeded, r.failed, r.median_run,
                                       r.p95_run, r.cpu_seconds, human_bytes(r.bytes_pushed)]
         for r in rows],
    )


from api.serve import serve, token  # noqa: E402 - the REST API and portal commands

main.add_command(serve)
main.add_command(token)

if __name__ == "__main__":
    main()
