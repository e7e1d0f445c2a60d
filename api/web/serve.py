"""``imgsave serve`` (the REST API and portal under waitress) and ``imgsave token``.

The server runs as the portal's service account (portal mode in DESIGN.md): it submits
saves for the users it authenticates and records the requesting user in each job.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from api.db import ApiToken, Database, database_url
from api.web.auth import UNIX_SOCKET_ENVIRON, issue_token, list_tokens, revoke_tokens
from core.errors import ImgsaveError
from site_configs.schema import current_account, get_site_config

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def _config_path(ctx: click.Context) -> str | None:
    path = getattr(ctx.obj, "config_path", None)
    return path if isinstance(path, str) else None


def _as_json(ctx: click.Context) -> bool:
    return bool(getattr(ctx.obj, "as_json", False))


def _require_service_account(ctx: click.Context, what: str) -> None:
    """``serve`` and ``token`` run as the portal's service account, never root: the
    site's database (tokens, every user's usage) is that account's alone (0600)."""
    config = get_site_config(_config_path(ctx))
    account = current_account()
    if account != config.service_account:
        raise click.UsageError(
            f"{what} runs as the portal's service account {config.service_account}, not "
            f"{account}: runuser -u {config.service_account} -- imgsave ... (docs/security.md)"
        )


def _require_admin(ctx: click.Context) -> None:
    _require_service_account(ctx, "imgsave token")


def _database(ctx: click.Context) -> Database:
    try:
        return Database(database_url(get_site_config(_config_path(ctx))))
    except ImgsaveError as e:
        raise click.ClickException(e.message) from e


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (put a TLS reverse proxy in front).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--unix-socket", "unix_socket", default=None, metavar="PATH",
              help="Listen on this unix socket instead of --host/--port: the proxy's way in "
                   "on a host users log in to (its directory decides who may connect; "
                   'trusted_proxies = ["unix"] believes its Remote-User).')
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads (each request holds one while the scheduler answers).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, unix_socket: str | None,
          threads: int) -> None:
    """Serve the REST API (/api/v1) and the web portal (/) with waitress."""
    import waitress

    from api.web.app import create_app

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _require_service_account(ctx, "imgsave serve")
    os.umask(0o077)
    try:
        app = create_app({"SITE_CONFIG": _config_path(ctx)})
    except ImgsaveError as e:
        raise click.ClickException(e.message) from e
    if unix_socket is None:
        click.echo(f"imgsave API and portal on http://{host}:{port}/", err=True)
        waitress.serve(app, host=host, port=port, threads=threads, ident="imgsave")
        return
    _check_socket_dir(Path(unix_socket))
    click.echo(f"imgsave API and portal on unix:{unix_socket}", err=True)
    # 0666 on the socket itself: who may connect is its directory's business (0750,
    # group of the proxy), which the admin sets up and this checks above.
    waitress.serve(_marked_unix(app.wsgi_app), unix_socket=unix_socket,
                   unix_socket_perms="666", threads=threads, ident="imgsave")


def _marked_unix(wsgi: WSGIApplication) -> WSGIApplication:
    """Mark every request as having come over the unix socket (see auth.py)."""

    def marked(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[UNIX_SOCKET_ENVIRON] = True
        return wsgi(environ, start_response)

    return marked


def _check_socket_dir(socket: Path) -> None:
    """Refuse a socket whose directory lets everyone in: then anyone on this host could
    send Remote-User as the proxy does."""
    directory = socket.parent
    try:
        st = directory.stat()
    except OSError as e:
        raise click.ClickException(f"{directory}: {e.strerror}; create it (0750, owned by "
                                   "the service account, group of the proxy)") from e
    if st.st_mode & 0o007 or directory.is_symlink():
        raise click.ClickException(
            f"{directory} lets every user reach the socket (mode {st.st_mode & 0o777:o}): "
            "make it 0750, owned by the service account, group of the proxy")
    if st.st_uid != os.geteuid():
        raise click.ClickException(f"{directory} is not owned by the service account")


@click.group()
def token() -> None:
    """Create, list and revoke API tokens (as the portal's service account)."""


@token.command("create")
@click.argument("user")
@click.option("--admin", is_flag=True, help="The token may see every user's saves and reports.")
@click.option("--days", type=click.IntRange(1, 3650), default=None,
              help="Lifetime in days (default: [api] token_ttl_days).")
@click.option("--label", default="", help="A note shown by 'token list'.")
@click.pass_context
def token_create(ctx: click.Context, user: str, admin: bool, days: int | None,
                 label: str) -> None:
    """Make a token for USER and print it once (only its hash is stored)."""
    _require_admin(ctx)
    config = get_site_config(_config_path(ctx))
    try:
        row, secret = issue_token(_database(ctx), user, admin=admin, label=label,
                                  ttl_days=days or config.api.token_ttl_days)
    except ImgsaveError as e:
        raise click.ClickException(e.message) from e
    if _as_json(ctx):
        click.echo(json.dumps({"id": row.id, "user": row.user, "admin": row.admin,
                               "expires": _utc(row.expires), "token": secret}))
        return
    click.echo(f"token {row.id} for {row.user}{' (admin)' if admin else ''}, expires "
               f"{row.expires:%Y-%m-%d}; it is shown only now:", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--user", default=None, help="Only this user's tokens.")
@click.pass_context
def token_list(ctx: click.Context, user: str | None) -> None:
    """List tokens: id, user, admin, created, expires, revoked (never the tokens)."""
    _require_admin(ctx)
    rows = [_row(t) for t in list_tokens(_database(ctx), user)]
    if _as_json(ctx):
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo("  ".join(str(r[k] or "-") for k in
                             ("id", "user", "admin", "created", "expires", "revoked", "label")))


@token.command("revoke")
@click.argument("token_id", type=int, required=False)
@click.option("--user", default=None, help="Revoke every token of this user.")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int | None, user: str | None) -> None:
    """Revoke token TOKEN_ID, or all of a user's tokens with --user."""
    _require_admin(ctx)
    if (token_id is None) == (user is None):
        raise click.UsageError("give a TOKEN_ID or --user USER")
    count = revoke_tokens(_database(ctx), token_id=token_id, user=user)
    if count == 0:
        raise click.ClickException("no such usable token")
    click.echo(f"revoked {count} token(s)")


def _row(t: ApiToken) -> dict[str, object]:
    return {"id": t.id, "user": t.user, "admin": t.admin, "label": t.label,
            "created": _utc(t.created), "expires": _utc(t.expires),
            "revoked": _utc(t.revoked) if t.revoked else None}


def _utc(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"
