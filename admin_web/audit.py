"""Recording operator actions in the audit trail, one call per action.

A view records what it did with :func:`audit`, or wraps the action in
:func:`audited`, which records a refusal by itself (any exception leaving
the block, with its code) and success otherwise::

    audit("login", user=user.name)

    with audited("alarm.ack", alarm_id, params=body) as note:
        note.before = {"state": alarm["state"]}
        ...                                   # raise ApiError(...) to refuse
        note.after = {"state": "acknowledged"}

Who (the authenticated user unless ``user`` says otherwise), when, and from
where (``request.remote_addr``: the app trusts no proxy header unless
``create_app`` is told how many proxies stand in front) are taken from the
request. ``params``, ``before`` and ``after`` are kept with their
secrets masked (:func:`admin_web.redact.redact_secrets`: a field named like
a password, token or key, a URL's password). The record goes to the
backend's audit stream (Redis, once the runtime runs), whatever the logging
levels; when the store cannot take it, it is logged at ERROR with everything
it holds, and the action is not undone: its outcome stands, the trail has a
hole that the log shows.

A change asked of the app that no view recorded (refused before the view
ran, a 403 on the role, a body too large, or a route that records nothing
of its own) is recorded once the answer is known, by :func:`audit_unrecorded`,
as ``http.post`` (the method) on the path, the request's JSON body as params:
every mutating call by an authenticated user leaves a record. Requests
with no credential at all are not recorded; a credential that fails (a
password, a token, an Open311 key) is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from flask import Response, current_app, g, has_request_context, request
from werkzeug.exceptions import HTTPException

from admin_web.auth import User
from admin_web.context import services
from admin_web.http_errors import ApiError
from admin_web.redact import redact_secrets
from runtime.audit import AuditRecord
from runtime.errors import AuthError, CommandpostError, RejectedError, RetryableError

__all__ = ["MUTATING_METHODS", "AuditNote", "audit", "audit_unrecorded", "audited"]

#: The methods of requests that change something: each is recorded.
MUTATING_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_RECORDED: Final = "audit_recorded"

log: Final = logging.getLogger("commandpost.audit")

_MAX_NAME: Final = 64
_MAX_TEXT: Final = 200


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def audit(
    action: str,
    target: str = "",
    *,
    params: Any = None,
    before: Any = None,
    after: Any = None,
    outcome: str = "ok",
    code: str = "",
    detail: str = "",
    user: str | None = None,
    role: str | None = None,
) -> None:
    """Record one operator action (``outcome`` ``ok`` or ``refused`` with a ``code``).

    ``user`` defaults to the request's authenticated user (the name tried, for
    a failed login), ``role`` to his. Never raises for a store that is away:
    see the module doc.
    """
    in_request = has_request_context()
    who = g.get("user") if in_request else None
    name = user if user is not None else who.name if isinstance(who, User) else ""
    if role is None:
        role = str(who.role) if isinstance(who, User) and who.name == name else ""
    source = (request.remote_addr or "") if in_request else ""
    record = AuditRecord(
        user=_cut(name, _MAX_NAME), role=_cut(role, _MAX_NAME), action=_cut(action, _MAX_NAME),
        target=_cut(target, _MAX_TEXT), source=_cut(source, _MAX_TEXT),
        params=redact_secrets(params), before=redact_secrets(before),
        after=redact_secrets(after), outcome=outcome, code=_cut(code, _MAX_NAME),
        detail=_cut(detail, _MAX_TEXT), ts=time.time())
    if in_request:
        g.setdefault(_RECORDED, True)
    try:
        services().backend.audit(record)
    except CommandpostError as exc:
        log.error("audit record not stored (%s): %r", exc, record)
    except KeyError:
        log.error("audit record not stored (no admin services on this app): %r", record)


@dataclass
class AuditNote:
    """What an :func:`audited` block learns as it goes: recorded when it ends.

    ``code`` and ``detail`` name a refusal more precisely than the exception
    that carries it (a 422's ``out_of_range`` rather than ``422``).
    """

    params: Any = None
    before: Any = None
    after: Any = None
    code: str = ""
    detail: str = ""
    target: str = ""  # when the block learns it (from the body), over audited()'s
    user: str | None = None  # who acted, when not the authenticated user (an Open311 app)
    role: str | None = None


def _refusal(exc: Exception) -> tuple[str, str]:
    """``(code, detail)`` of an exception that ends an audited action."""
    if isinstance(exc, ApiError):
        return str(exc.status), exc.error
    if isinstance(exc, RejectedError):
        return exc.code, str(exc)
    if isinstance(exc, AuthError):
        return "401", str(exc)
    if isinstance(exc, RetryableError):
        return "503", str(exc)
    if isinstance(exc, HTTPException) and exc.code is not None:
        return str(exc.code), (exc.name or "").lower()  # a body too large (413)
    return "500", type(exc).__name__


@contextmanager
def audited(action: str, target: str = "", *, params: Any = None) -> Iterator[AuditNote]:
    """Record the action done in the block: refused if an exception leaves it, else ok.

    The exception is raised again, unchanged, once recorded.
    """
    note = AuditNote(params=params)
    try:
        yield note
    except Exception as exc:
        code, detail = _refusal(exc)
        audit(action, note.target or target, params=note.params, before=note.before,
              after=note.after, outcome="refused", code=note.code or code,
              detail=note.detail or detail, user=note.user, role=note.role)
        raise
    audit(action, note.target or target, params=note.params, before=note.before,
          after=note.after, code=note.code, detail=note.detail, user=note.user, role=note.role)


def _body_params() -> Any:
    """The request's JSON body, if it has one that parses and was within the size limit."""
    length = request.content_length
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if not request.is_json or length is None or (limit is not None and length > limit):
        return None
    try:
        return request.get_json(silent=True)
    except Exception:  # the body could not be read at all: say so rather than fail the answer
        return {"omitted": "unreadable body"}


def audit_unrecorded(response: Response) -> None:
    """Record a mutating request by an authenticated user that no view recorded.

    Called once the answer is known (an ``after_request`` hook): the outcome
    is ``ok`` below 400, else ``refused`` with the status as code and the
    answer's ``error`` as detail.
    """
    if (request.method not in MUTATING_METHODS or g.get(_RECORDED)
            or not isinstance(g.get("user"), User)):
        return
    refused = response.status_code >= 400
    detail = ""
    if refused and response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            detail = body["error"]
    audit(f"http.{request.method.lower()}", request.path,
          params={"endpoint": request.endpoint, "query": request.args.to_dict(),
                  "body": _body_params()},
          after={"status": response.status_code},
          outcome="refused" if refused else "ok",
          code=str(response.status_code) if refused else "", detail=detail)
