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
where (``request.remote_addr``: the app trusts no proxy header) are taken
from the request. The record goes to the backend's audit stream; when the
store cannot take it, it is logged at ERROR with everything it holds, and
the action is not undone: its outcome stands, the trail has a hole that the
log shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from flask import g, has_request_context, request

from admin_web.auth import User
from admin_web.context import services
from admin_web.http_errors import ApiError
from runtime.audit import AuditRecord
from runtime.errors import AuthError, CommandpostError, RejectedError, RetryableError

__all__ = ["AuditNote", "audit", "audited"]

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
) -> None:
    """Record one operator action (``outcome`` ``ok`` or ``refused`` with a ``code``).

    ``user`` defaults to the request's authenticated user (the name tried, for
    a failed login). Never raises for a store that is away: see the module doc.
    """
    who = g.get("user") if has_request_context() else None
    name = user if user is not None else who.name if isinstance(who, User) else ""
    role = str(who.role) if isinstance(who, User) and who.name == name else ""
    source = (request.remote_addr or "") if has_request_context() else ""
    record = AuditRecord(
        user=_cut(name, _MAX_NAME), role=role, action=action, target=_cut(target, _MAX_TEXT),
        source=_cut(source, _MAX_TEXT), params=params, before=before, after=after,
        outcome=outcome, code=_cut(code, _MAX_NAME), detail=_cut(detail, _MAX_TEXT),
        ts=time.time())
    try:
        services().backend.audit(record)
    except CommandpostError as exc:
        log.error("audit record not stored (%s): %r", exc, record)


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
              detail=note.detail or detail)
        raise
    audit(action, note.target or target, params=note.params, before=note.before,
          after=note.after, code=note.code, detail=note.detail)
