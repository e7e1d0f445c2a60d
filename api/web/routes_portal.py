"""The web portal: one page per user, plus token login and logout.

The page is rendered by Jinja with the user's name, the site's formats and categories,
and a CSRF token; ``static/portal.js`` then fills it from the same REST API that
scripts use, with the session cookie this module sets.

Every form carries the session's CSRF token, the login form too: before login the
session holds only that token (no user), so another site cannot post a token of its
own choosing and log the browser in as someone else. Logging in replaces the token.
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from api.web.auth import (
    PROXY_USER_HEADER,
    Principal,
    Unauthorized,
    csrf_matches,
    find_token,
    new_csrf,
    open_session,
)
from api.web.portal_usage import usage_view
from api.web.state import principal, state
from registry.refs import host_of

bp = Blueprint("portal", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


def _login_page(error: Unauthorized) -> tuple[str, int]:
    """The login form; with the reason when credentials were sent and refused."""
    forged = request.headers.get(PROXY_USER_HEADER) is not None
    message = error.message if forged or "Authorization" in request.headers else ""
    return render_template("login.html", error=message, csrf=_login_csrf()), (
        401 if message else 200)


def _login_csrf() -> str:
    """The CSRF token of the login form: the session's, made now if it has none."""
    csrf = session.get("csrf")
    if not isinstance(csrf, str) or not csrf:
        csrf = session["csrf"] = new_csrf()
    return csrf


def _csrf(caller: Principal) -> str:
    """The session's CSRF token (opening the session for this caller if needed)."""
    csrf = session.get("csrf")
    if session.get("user") != caller.user or not isinstance(csrf, str) or not csrf:
        csrf = open_session(caller)
    return csrf


@bp.get("/")
def index() -> str | tuple[str, int]:
    """The portal page, or the login form when nobody is logged in."""
    try:
        caller = principal()
    except Unauthorized as e:
        return _login_page(e)
    config = state().config
    return render_template(
        "index.html",
        user=caller.user,
        admin=caller.admin,
        csrf=_csrf(caller),
        formats=[f.value for f in config.formats],
        categories=list(config.categories),
        registry=host_of(config.registry.url),
        site_name=config.name,
    )


@bp.get("/usage")
def usage() -> str | tuple[str, int]:
    """Admins: the usage report of every user as a table and the chart (a 403 page for
    anyone else)."""
    try:
        caller = principal()
    except Unauthorized as e:
        return _login_page(e)
    page = {"user": caller.user, "admin": caller.admin, "csrf": _csrf(caller),
            "site_name": state().config.name}
    if not caller.admin:
        return render_template(
            "message.html", **page, title="Not allowed",
            message="The usage report of every user is for imgsave admins. Your own "
                    "saves and their usage are on your page."), 403
    view = usage_view(request.args)
    return render_template("usage.html", **page, view=view), view.status


@bp.post("/login")
def login() -> BaseResponse | tuple[str, int]:
    """Open a portal session with an API token typed into the login form (which must
    carry the CSRF token its page was rendered with)."""
    if not csrf_matches(request.form.get("csrf"), session.get("csrf")):
        return render_template("login.html", csrf=_login_csrf(),
                               error="The login form has expired or came from another "
                                     "site; please log in again."), 400
    token = request.form.get("token", "").strip()
    row = find_token(state().db, token, state().account_exists) if token else None
    if row is None:
        return render_template("login.html", csrf=_login_csrf(),
                               error="That token is unknown, expired or revoked."), 401
    admin = row.admin or row.user in state().config.api.admins
    open_session(Principal(row.user, admin, "token", row.id))
    return redirect(url_for("portal.index"), code=303)


@bp.post("/logout")
def logout() -> Response | BaseResponse:
    """End the portal session (the form carries the session's CSRF token)."""
    if csrf_matches(request.form.get("csrf"), session.get("csrf")):
        session.clear()
    return redirect(url_for("portal.index"), code=303)
