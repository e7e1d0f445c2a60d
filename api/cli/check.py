"""``imgsave check``: verify a site, a node or the portal host; print what to fix.

Like enroot's ``enroot-check``: each check prints OK, or what is wrong and the fix;
the exit status is 1 when any check failed. The checks are in api/service/checks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from api.service.checks.privilege import DEFAULT_SUDOERS
from api.service.checks.results import CheckResult, CheckStatus, Scope, any_failed
from api.service.checks.site_check import CheckOptions, run_checks
from api.web.app import SECRET_FILE
from core.errors import ImgsaveError
from core.runner import run_command
from site_configs.schema import get_site_config

_USER = re.compile(r"[a-z_][a-z0-9_.-]*[$]?")


def _users(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not _USER.fullmatch(value):
            raise click.BadParameter(f"{value!r} is not a user name", param_hint="--for-user")
    return values


def render(results: list[CheckResult]) -> str:
    """One line per check, the fix under each one that is not OK, then a count."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.status.name:<4}  {r.name:<{width}}  {r.detail}")
        if r.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    counts = {s: sum(r.status is s for r in results) for s in CheckStatus}
    lines.append(", ".join(f"{n} {s.name.lower()}" for s, n in counts.items()))
    return "\n".join(lines)


@click.command()
@click.option("--scope", "scopes", multiple=True, type=click.Choice([s.value for s in Scope]),
              help="What to check: site (scheduler accounting, partition/queue, associations, "
                   "registry), node (state dir, credentials, sudoers rule, the privileged "
                   "entry, the engine), portal (service spool, instance dir, secret key, "
                   "database). Repeat for several; default all three.")
@click.option("--for-user", "users", multiple=True, metavar="USER",
              help="Also check this user's Slurm association and spool. Repeatable.")
@click.option("--sudoers", type=click.Path(dir_okay=False, readable=False, path_type=Path),
              default=DEFAULT_SUDOERS, show_default=True,
              help="The sudoers file holding imgsave's rule.")
@click.option("--probe-user", default="", metavar="USER",
              help="As root: whose sudo rights to ask about (default: the service account).")
@click.option("--instance-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The portal's instance directory (default: $IMGSAVE_INSTANCE_DIR or "
                   "/var/lib/imgsave/api).")
@click.pass_context
def check(ctx: click.Context, scopes: tuple[str, ...], users: tuple[str, ...], sudoers: Path,
          probe_user: str, instance_dir: Path | None) -> None:
    """Check this site, node or portal host; print each problem and its fix.

    Run it as root on a compute node (all scopes) and as root or the service account on
    the portal host (--scope site --scope portal). Exits 1 if any check failed; WARN
    marks a documented pitfall, SKIP what cannot be seen from here.
    """
    obj = ctx.obj
    if obj.api_url:
        raise click.UsageError("imgsave check looks at this machine: drop --api")
    _users(users)
    if probe_user:
        _users((probe_user,))
    try:
        config = get_site_config(obj.config_path)
    except ImgsaveError as e:
        click.echo(f"imgsave: error: {e.message}", err=True)
        sys.exit(1)
    options = CheckOptions(
        scopes=frozenset(Scope(s) for s in scopes) if scopes else frozenset(Scope),
        users=users, sudoers=sudoers, probe_user=probe_user, secret_key_name=SECRET_FILE,
        **({"instance": instance_dir} if instance_dir else {}),
    )
    results = run_checks(config, run_command, options)
    obj.emit([r.to_json() for r in results], lambda: render(results))
    if any_failed(results):
        failed = sum(r.status is CheckStatus.FAIL for r in results)
        click.echo(f"imgsave: error: {failed} check(s) failed", err=True)
        sys.exit(1)
