"""``imgsave``: sbatch/squeue-style commands for saving containers as images.

Output is a table by default and JSON with ``--json``. Exit codes follow sbatch: 0 on
success, 1 with ``imgsave: error: <reason>`` on stderr when a request fails, 2 for usage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from api.cli.follow import follow
from api.cli.lazy import LazyGroup
from api.service.progress import SaveStatus
from api.service.save_request import SaveRequest
from api.tables import human_bytes, render_table
from builder_jobs.events import Stage
from core.errors import ImgsaveError
from site_configs.schema import CONFIG_ENV, ImageFormat, current_account, get_site_config

if TYPE_CHECKING:  # imported where used: a small start-up (docs/benchmarks.md, CLI start-up)
    from api.cli.remote import RemoteSite
    from api.service.site import Site

F = TypeVar("F", bound=Callable[..., Any])

# Commands whose module is imported only when they run: the REST API's (Flask,
# SQLAlchemy) would cost every submit and status ~0.1 s of start-up.
LAZY_COMMANDS = {"serve": "api.web.serve:serve", "token": "api.web.serve:token",
                 "check": "api.cli.check:check", "warmup": "api.cli.warmup:warmup",
                 "warmup-status": "api.cli.warmup:warmup_status"}
# The report's groupings (api.reports.usage_report.GROUPINGS, which imports SQLAlchemy),
# for its --help; tests/unit/test_cli_latency.py keeps the two equal.
REPORT_GROUPINGS = ("user", "account", "day", "week", "month", "node", "format", "category",
                    "outcome")


class Context:
    def __init__(self, config_path: str | None, as_json: bool, user: str | None,
                 api_url: str | None = None, token_file: str | None = None) -> None:
        self.config_path = config_path
        self.as_json = as_json
        self.api_url = api_url
        self.token_file = token_file
        if api_url and user:
            raise click.UsageError("--user does not apply with --api: the token says who you are")
        # the kernel's idea of who runs this, never $USER/$LOGNAME (a user sets those)
        self.real_user = current_account()
        is_root = os.geteuid() == 0
        if user and user != self.real_user and not is_root and not self._is_service(config_path):
            raise click.UsageError(
                "only root and the portal's service account may act for another user (--user)"
            )
        self.user = user or self.real_user
        # root acting for a user sees exactly what that user sees; root itself sees all
        self.admin = is_root and self.user == self.real_user
        self._site: Site | None = None
        self._remote: RemoteSite | None = None

    def _is_service(self, config_path: str | None) -> bool:
        try:
            return get_site_config(config_path).service_account == self.real_user
        except ImgsaveError:
            return False

    @property
    def site(self) -> Site:
        """The site itself: its scheduler, registry and spool (direct mode)."""
        if self.api_url:
            raise click.UsageError("this command talks to the scheduler directly; drop --api")
        if self._site is None:
            from api.service.site import Site

            self._site = Site(get_site_config(self.config_path))
        return self._site

    @property
    def backend(self) -> Site | RemoteSite:
        """Where saves and images are handled: the site directly, or an imgsave API."""
        if self.api_url:
            if self._remote is None:
                from api.cli.remote import RemoteSite

                self._remote = RemoteSite(self.api_url, self.token_file)
            return self._remote
        return self.site

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


@click.group(cls=LazyGroup, lazy_commands=LAZY_COMMANDS)
@click.option("--config", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
              help=f"Site config file (default: ${CONFIG_ENV} or the bundled local.toml).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--user", default=None,
              help="Act for this user (root: to look; the service account: to save).")
@click.option("--api", "api_url", envvar="IMGSAVE_API", default=None, metavar="URL",
              help="Talk to an imgsave REST API at URL instead of the scheduler "
                   "(token from $IMGSAVE_TOKEN or --token-file).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="API token file, mode 0600 (default: ~/.config/imgsave/token).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, as_json: bool, user: str | None,
         api_url: str | None, token_file: str | None) -> None:
    """Save running containers as images through the batch scheduler."""
    ctx.obj = Context(config_path, as_json, user, api_url, token_file)


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
@click.option("--in-job", is_flag=True,
              help="Run the save as a step of that --job (srun --overlap, inside your own "
                   "allocation: works in a whole-node or --exclusive job); --node picks "
                   "one of the job's nodes (docs/install-slurm.md).")
@click.option("--format", "formats", default="oci", show_default=True,
              help="oci, sif, or oci,sif (both from one commit).")
@click.option("--category", default="cpu", show_default=True, help="cpu or gpu.")
@click.option("--full", is_flag=True,
              help="Save everything again, not only what changed since this container's "
                   "last save (docs/incremental-save.md).")
@click.option("--wait", is_flag=True,
              help="Then follow the save with a progress bar until it ends, as status --wait "
                   "does; exit 1 if it failed.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
@reports_errors
def submit(obj: Context, container: str, target: str, node: str, job_id: str, in_job: bool,
           formats: str, category: str, full: bool, wait: bool, timeout: float) -> None:
    """Save CONTAINER as TARGET (name:tag) with a job pinned to its node."""
    # the spool's files and the job's output (sbatch passes its umask on) are yours alone
    os.umask(0o077)
    request = SaveRequest(
        user=obj.user, container=container, target=target, formats=_formats(formats),
        category=category, node=node, job_id=job_id, full=full, in_job=in_job,
    )
    submitted = obj.backend.saves.submit(request, admin=obj.admin)
    answer: dict[str, object] = {
        "job_id": submitted.job_id, "request_id": submitted.request_id,
        "target": str(submitted.target), "node": submitted.node,
    }  # fmt: skip
    if not wait:
        obj.emit(answer, lambda: f"Submitted image save job {submitted.job_id}")
        return
    # the job id at once (on stderr beside the progress with --json: stdout is one document)
    click.echo(f"Submitted image save job {submitted.job_id}", err=obj.as_json)
    (final,) = _wait(obj, [submitted.job_id], obj.backend.saves.status(
        [submitted.job_id], obj.user, admin=obj.admin), timeout)
    if obj.as_json:
        click.echo(json.dumps({**answer, "status": final.to_dict()}, indent=2, sort_keys=True,
                              default=str))
    else:
        click.echo(_status_rows([final]))
    _exit_unless_done([final])


def _status_rows(statuses: Sequence[SaveStatus]) -> str:
    return render_table(
        ["JOBID", "USER", "CONTAINER", "TARGET", "NODE", "STATE", "STAGE", "PROGRESS", "SAVED",
         "REASON"],
        [[s.job_id, s.user, s.container, s.target, s.node, s.state.label.upper(), s.stage.value,
          f"{s.percent}%", s.result.save_kind if s.result else "", s.reason]
         for s in statuses],
    )


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Follow until the save ends, with a progress bar.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
@reports_errors
def status(obj: Context, job_ids: tuple[str, ...], wait: bool, timeout: float) -> None:
    """Show the state of save jobs (from scheduler accounting and the node's events)."""
    saves = obj.backend.saves
    statuses = saves.status(job_ids, obj.user, admin=obj.admin)
    if wait:
        statuses = _wait(obj, job_ids, statuses, timeout)
    obj.emit([s.to_dict() for s in statuses], lambda: _status_rows(statuses))
    if wait:
        _exit_unless_done(statuses)


def _wait(obj: Context, job_ids: Sequence[str], statuses: list[SaveStatus],
          timeout: float) -> list[SaveStatus]:
    """Follow ``job_ids`` to their end (api/cli/follow.py): in direct mode by watching
    the saves' files in the spool, with --api by asking the API."""
    saves = obj.backend.saves
    files = [] if obj.api_url else obj.site.saves.progress_files(
        [s.job_id for s in statuses], obj.user, admin=obj.admin)
    return follow(lambda: saves.status(job_ids, obj.user, admin=obj.admin), statuses, files,
                  timeout, as_json=obj.as_json)


def _exit_unless_done(statuses: Sequence[SaveStatus]) -> None:
    """Exit 1, saying why, unless every save is done (pushed)."""
    failed = [s for s in statuses if s.stage is not Stage.DONE]
    for s in failed:
        click.echo(f"imgsave: error: job {s.job_id}: {s.reason or s.state.label}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@click.option("--days", default=7, show_default=True, help="How far back to look.")
@click.option("--all-users", is_flag=True, help="Every user's saves (root/admin only).")
@click.pass_obj
@reports_errors
def queue(obj: Context, days: int, all_users: bool) -> None:
    """List your save jobs, finished ones included (squeue-style)."""
    if all_users and not obj.admin and not obj.api_url:  # the API decides for itself
        raise click.UsageError("--all-users needs root/admin")
    since = datetime.now(UTC).timestamp() - days * 86400
    statuses = obj.backend.saves.queue(
        obj.user, since=datetime.fromtimestamp(since, UTC), admin=all_users
    )
    obj.emit([s.to_dict() for s in statuses], lambda: _status_rows(statuses))


@main.command()
@click.argument("job_id")
@click.pass_obj
@reports_errors
def cancel(obj: Context, job_id: str) -> None:
    """Cancel a queued or running save job."""
    obj.backend.saves.cancel(job_id, obj.user, admin=obj.admin)
    obj.emit({"job_id": job_id, "cancelled": True}, lambda: f"Cancelled save job {job_id}")


@main.command()
@click.pass_obj
@reports_errors
def images(obj: Context) -> None:
    """List your images in the registry: name, tag, size, created."""
    found = obj.backend.images.list(obj.user)
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
    digest = obj.backend.images.delete(obj.user, image)
    obj.emit({"image": image, "digest": digest, "deleted": True},
             lambda: f"Deleted {image} ({digest})")


@main.command()
@click.option("--since", default=None,
              help="First day, YYYY-MM-DD or an ISO date-time (default: 30 days before --until).")
@click.option("--until", default=None,
              help="Last day, included (YYYY-MM-DD), or an exact ISO date-time (default: now).")
@click.option("--by", "by", default="user", show_default=True,
              help=f"Comma-separated groupings: {', '.join(REPORT_GROUPINGS)}.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]),
              default=None, help="Output format (default: table; json with --json).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also draw stacked succeeded/failed bars per group to this PNG.")
@click.option("--check-registry", is_flag=True,
              help="Count saved images still in the registry vs deleted (slow: asks the registry).")
@click.option("--no-sync", is_flag=True,
              help="Report from the cache as it is, without asking the scheduler.")
@click.option("--rebuild", is_flag=True,
              help="Drop the usage cache and fetch it again from accounting (root/admin only).")
@click.pass_obj
@reports_errors
def report(obj: Context, since: str | None, until: str | None, by: str,
           output_format: str | None, plot_path: Path | None, check_registry: bool,
           no_sync: bool, rebuild: bool) -> None:
    """Image-build usage from scheduler accounting, via the usage cache (root/admin sees
    every user; others see their own saves). With --api, the API's report: an admin's
    token sees every user, anyone else's their own."""
    if obj.api_url:
        _remote_report(obj, since, until, by, output_format, plot_path,
                       check_registry or no_sync or rebuild)
        return
    if rebuild and not obj.admin:
        raise click.UsageError("--rebuild needs root/admin")
    from api.reports.report import build_report
    from api.reports.report_output import render, write_png

    usage = build_report(obj.site, since=since, until=until, by=by,
                         user=None if obj.admin else obj.user, check_registry=check_registry,
                         sync=not no_sync, rebuild=rebuild)
    if plot_path is not None:
        write_png(usage, plot_path)
    click.echo(render(usage, output_format or ("json" if obj.as_json else "table")))


def _remote_report(obj: Context, since: str | None, until: str | None, by: str,
                   output_format: str | None, plot_path: Path | None,
                   direct_only: bool) -> None:
    """``imgsave --api URL report``: the API's report (an admin's token sees every user,
    anyone else's their own), printed as in direct mode."""
    if direct_only:
        raise click.UsageError("--check-registry, --no-sync and --rebuild work without --api "
                               "only (the API keeps its own cache)")
    from api.cli.remote import RemoteSite
    from api.reports.report_output import render_document

    params = {"by": by}
    params.update({k: v for k, v in (("since", since), ("until", until)) if v})
    remote = obj.backend
    assert isinstance(remote, RemoteSite)
    doc = remote.usage(params)
    if plot_path is not None:
        plot_path.write_bytes(remote.usage_png(params))
    click.echo(render_document(doc, output_format or ("json" if obj.as_json else "table")))


if __name__ == "__main__":
    main()
