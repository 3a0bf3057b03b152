"""Server-rendered pages: login, logout, the overview and the supervision tree."""

from __future__ import annotations

import logging
import math
import unicodedata
from typing import Final
from urllib.parse import urlsplit

from flask import Blueprint, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from admin_web.audit import audit
from admin_web.auth import Role
from admin_web.context import services
from admin_web.guards import (
    check_csrf,
    csrf_valid,
    end_session,
    require_login,
    session_user,
    start_session,
)
from runtime.errors import AuthError

audit_log: Final = logging.getLogger("commandpost.audit")

pages = Blueprint("pages", __name__)

# Longer form values are refused before hashing anything.
_MAX_FIELD: Final = 1024


# Longer ``next`` values are not paths of this site.
_MAX_NEXT: Final = 2048


def is_local_path(target: str) -> bool:
    """Whether ``target`` is a path on this site, safe to redirect to after a login.

    Browsers are lenient with a ``Location``: they drop tabs and newlines
    anywhere (``/<TAB>/evil.example`` becomes ``//evil.example``, another
    host), strip leading and trailing spaces and controls, and read ``\\`` as
    ``/``. So only a value starting with one ``/``, holding no backslash, no
    whitespace and no control, format or separator character, and with
    neither scheme nor host once split, is taken.
    """
    if not target or len(target) > _MAX_NEXT:
        return False
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return False
    if any(ch.isspace() or unicodedata.category(ch)[0] in "CZ" for ch in target):
        return False
    parts = urlsplit(target)
    return not (parts.scheme or parts.netloc)


def _safe_next(target: str | None) -> str:
    """``target`` if it is a local path (:func:`is_local_path`), else the overview."""
    if target is None or not is_local_path(target):
        return url_for("pages.index")
    return target


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


def _login_form(error: str | None, status: int) -> ResponseReturnValue:
    return render_template(
        "login.html",
        error=error,
        name=request.form.get("name", "")[:64],
        next=_safe_next(request.values.get("next")),
    ), status


@pages.get("/login")
def login() -> ResponseReturnValue:
    """The login form (or straight on when already logged in)."""
    if session_user() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return _login_form(None, 200)


@pages.post("/login")
def login_submit() -> ResponseReturnValue:
    """Check the form; on success start a fresh session and go on to ``next``."""
    name = request.form.get("name", "")
    if not csrf_valid():
        audit("login", user=name[:64], outcome="refused", code="csrf",
              detail="the form had expired")
        return _login_form("The form had expired; please try again.", 400)
    password = request.form.get("password", "")
    throttle, address = services().throttle, request.remote_addr
    wait = throttle.retry_after(name, address)
    if wait is not None:
        # Refused before the password is looked at: right or wrong, it is not checked.
        seconds = max(1, math.ceil(wait))
        audit("login", user=name[:64], outcome="refused", code="throttled",
              detail=f"too many failed logins; next try in {seconds} s")
        response = make_response(_login_form(
            f"Too many failed logins; try again in {_duration(seconds)}.", 429))
        response.headers["Retry-After"] = str(seconds)
        return response
    with throttle.slot() as granted:
        if not granted:
            audit("login", user=name[:64], outcome="refused", code="busy",
                  detail="too many password checks at once")
            response = make_response(_login_form(
                "Too many logins at once; try again in a moment.", 503))
            response.headers["Retry-After"] = "1"
            return response
        try:
            if len(name) > _MAX_FIELD or len(password) > _MAX_FIELD:
                raise AuthError("field too long")
            user = services().users.check_password(name, password)
        except AuthError:
            throttle.failed(name, address)
            audit_log.warning("login refused name=%r from=%s", name[:64], address)
            audit("login", user=name[:64], outcome="refused", code="bad_credentials")
            return _login_form("Wrong name or password.", 401)
    throttle.succeeded(name, address)
    start_session(user)
    audit("login")
    return redirect(_safe_next(request.form.get("next")))


@pages.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session, and every other session of the same user (his cookies all stop
    working, copies included)."""
    user = session_user()
    if user is not None:
        check_csrf()
        audit("logout")
    end_session()
    return redirect(url_for("pages.login"))


@pages.get("/")
@require_login(Role.VIEWER)
def index() -> ResponseReturnValue:
    """Health and the supervision tree."""
    backend = services().backend
    return render_template("index.html", health=backend.health(), tree=backend.tree())


@pages.get("/tree")
@require_login(Role.VIEWER)
def tree() -> ResponseReturnValue:
    """The supervision tree alone: processes, hosts, the priority pool, restarts, last exits."""
    return render_template("tree.html", tree=services().backend.tree())
