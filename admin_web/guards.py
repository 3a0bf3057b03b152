"""Who is calling, and may he: bearer tokens for the API, a login session for pages.

    @api.get("/tree")
    @require(Role.VIEWER)
    def tree() -> ResponseReturnValue: ...

    @pages.get("/")
    @require_login(Role.VIEWER)
    def index() -> ResponseReturnValue: ...

The authenticated :class:`User` of a request is ``current_user()``; a view
acting on one municipality checks the operator's scope with
:func:`ensure_scope`, and one reading or commanding equipment his desks
(:mod:`admin_web.desks`) with :func:`ensure_desk_reads`,
:func:`ensure_desk_commands` and :func:`desk_hidden`. Pages posting forms
carry the session's CSRF token (:func:`csrf_token` in the template,
:func:`check_csrf` in the view).

The API takes either credential (:func:`authenticate_api`): a bearer token,
which needs no CSRF token since a browser never sends one by itself, or the
pages' login session, which reads freely but changes something only with the
session's CSRF token in the ``X-CSRF-Token`` header (the pages' scripts add
it; another site's form cannot).
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import Final, ParamSpec

from flask import abort, g, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from admin_web.audit import audit
from admin_web.auth import Role, User
from admin_web.context import services
from admin_web.desks import Hidden
from admin_web.http_errors import ApiError
from runtime.errors import AuthError

P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]

#: The name of the login session's cookie.
SESSION_COOKIE: Final = "commandpost_session"
SESSION_USER: Final = "user"
#: The user's session nonce at login (:meth:`UserRegistry.session_nonce`).
SESSION_NONCE: Final = "nonce"
SESSION_CSRF: Final = "csrf"
CSRF_FIELD: Final = "csrf_token"
#: The header carrying the session's CSRF token on the pages' API mutations.
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_BEARER_CHALLENGE: Final = 'Bearer realm="commandpost"'
_INVALID_TOKEN_CHALLENGE: Final = 'Bearer realm="commandpost", error="invalid_token"'


def current_user() -> User:
    """The user authenticated for this request; raises :class:`AuthError` if none."""
    user = g.get("user")
    if not isinstance(user, User):
        raise AuthError("not authenticated")
    return user


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate_bearer() -> User:
    """The user of the request's bearer token, remembered as :func:`current_user`.

    Raises :class:`ApiError` 401 (with ``WWW-Authenticate: Bearer``) when the
    token is missing or unknown.
    """
    token = _bearer_token()
    if token is None:
        raise ApiError(
            401, "authentication required", headers={"WWW-Authenticate": _BEARER_CHALLENGE}
        )
    try:
        user = services().users.by_token(token)
    except AuthError:
        # A failed login of an API client (a request without a token is not one).
        audit("login.token", outcome="refused", code="invalid_token")
        raise ApiError(
            401, "invalid token", headers={"WWW-Authenticate": _INVALID_TOKEN_CHALLENGE}
        ) from None
    g.user = user
    return user


def authenticate_api() -> User:
    """The user of an API request, remembered as :func:`current_user`.

    A bearer token when the request has an ``Authorization`` header (only it
    is looked at then); else the pages' login session, for a change only with
    the session's CSRF token in the :data:`CSRF_HEADER` header (403 without).
    Raises :class:`ApiError` 401 when there is neither.
    """
    if "Authorization" in request.headers:
        return authenticate_bearer()
    user = session_user()
    if user is None:
        raise ApiError(
            401, "authentication required", headers={"WWW-Authenticate": _BEARER_CHALLENGE}
        )
    if request.method not in _SAFE_METHODS and not _csrf_matches(
            request.headers.get(CSRF_HEADER, "")):
        audit("csrf", user=user.name, outcome="refused", code="csrf",
              detail=f"{request.method} {request.path} without the session's CSRF token")
        raise ApiError(403, f"a change through the login session needs the {CSRF_HEADER} "
                            "header of the page", field=CSRF_HEADER)
    return user


def require(role: Role) -> Callable[[View[P]], View[P]]:
    """Decorate an API view: a bearer token or a login session (:func:`authenticate_api`;
    401 without), ``role`` or above (403)."""

    def decorate(view: View[P]) -> View[P]:
        @functools.wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            user = authenticate_api()
            if not user.can(role):
                raise ApiError(403, f"requires the {role} role")
            return view(*args, **kwargs)

        return guarded

    return decorate


def ensure_scope(role: Role, municipality: str) -> None:
    """Refuse (403) unless the current user holds ``role`` within ``municipality``."""
    if not current_user().can(role, municipality):
        raise ApiError(403, f"not allowed in municipality {municipality}", field="municipality")


def desk_hidden() -> Hidden:
    """What the current user's desks keep from him (nothing without desks, or for an
    admin): :meth:`admin_web.desks.DeskBook.hidden`."""
    return services().desks.hidden(current_user())


def ensure_desk_reads(kind: str | None) -> None:
    """Refuse (403) unless the current user's desks read equipment of ``kind``."""
    refusal = services().desks.read_refusal(current_user(), kind)
    if refusal is not None:
        raise ApiError(403, refusal, field="kind")


def ensure_desk_commands(kind: str | None, action: str) -> None:
    """Refuse (403) unless the current user's desks own ``action`` on equipment of ``kind``
    (a kind in a view they do not read is refused as such)."""
    desks, user = services().desks, current_user()
    refusal = desks.read_refusal(user, kind) or desks.command_refusal(user, kind, action)
    if refusal is not None:
        raise ApiError(403, refusal, field="action")


def ensure_desk_crisis(mode: str, current: list[str]) -> None:
    """Refuse (403) unless the current user's desks switch ``mode`` (for ``normal``:
    every mode in ``current`` it ends)."""
    refusal = services().desks.crisis_refusal(current_user(), mode, current)
    if refusal is not None:
        raise ApiError(403, refusal, field="mode")


def ensure_desk_requests() -> None:
    """Refuse (403) unless the current user's desks take citizens' calls."""
    refusal = services().desks.requests_refusal(current_user())
    if refusal is not None:
        raise ApiError(403, refusal)


def start_session(user: User) -> None:
    """Log ``user`` in: a fresh session (a cookie planted before is useless) with his
    current session nonce and a new CSRF token."""
    session.clear()
    session[SESSION_USER] = user.name
    session[SESSION_NONCE] = services().users.session_nonce(user.name)
    new_csrf_token()
    g.user = user


def end_session() -> None:
    """Log the session's user out: every session of his ends, this cookie first."""
    name = session.get(SESSION_USER)
    if isinstance(name, str):
        services().users.end_sessions(name)
    session.clear()


def session_user() -> User | None:
    """The user logged in through the session cookie, remembered as :func:`current_user`.

    None when nobody is logged in, or the session has been ended since it
    began (a logout, a new password: the cookie's nonce is no longer the
    user's), or the user has been removed.
    """
    name = session.get(SESSION_USER)
    nonce = session.get(SESSION_NONCE)
    if not isinstance(name, str):
        return None
    if not isinstance(nonce, str):
        session.clear()
        return None
    try:
        user = services().users.check_session(name, nonce)
    except AuthError:
        session.clear()
        return None
    g.user = user
    return user


def require_login(role: Role = Role.VIEWER) -> Callable[[View[P]], View[P]]:
    """Decorate a page: login required (redirect to the form), ``role`` or above (403)."""

    def decorate(view: View[P]) -> View[P]:
        @functools.wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            user = session_user()
            if user is None:
                return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
            if not user.can(role):
                abort(403, f"this page requires the {role} role")
            return view(*args, **kwargs)

        return guarded

    return decorate


def csrf_token() -> str:
    """The session's CSRF token, created on first use; put it in every form."""
    token = session.get(SESSION_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[SESSION_CSRF] = token
    return token


def new_csrf_token() -> str:
    """Replace the session's CSRF token (at login, with the new session)."""
    token = secrets.token_urlsafe(32)
    session[SESSION_CSRF] = token
    return token


def _csrf_matches(posted: str) -> bool:
    expected = session.get(SESSION_CSRF)
    if not isinstance(expected, str) or not posted:
        return False
    return hmac.compare_digest(expected.encode(), posted.encode())


def csrf_valid() -> bool:
    """Whether the posted form carries the session's CSRF token."""
    return _csrf_matches(request.form.get(CSRF_FIELD, ""))


def check_csrf() -> None:
    """Refuse (400) a form post without the session's CSRF token."""
    if not csrf_valid():
        abort(400, "the form has expired; reload the page and try again")
