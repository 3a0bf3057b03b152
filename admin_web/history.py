"""History under ``/api/v1``: the event stream and the audit trail, paged newest first.

    GET /api/v1/events?entity=&kind=&event=&since=&limit=&before=   (any authenticated user)
    GET /api/v1/audit?user=&action=&outcome=&since=&until=&limit=&before=   (admin)

Both answer a JSON list, newest first, at most ``limit`` items (default 100,
at most 1000). ``since`` is epoch seconds (a float): nothing older is listed;
the audit's ``until`` likewise keeps what is older than it. The audit's
``action`` keeps one action (``alarm.ack``) or a family of them (``alarm``:
``alarm.ack``, ``alarm.shelve``…), ``outcome`` ``ok`` or ``refused``.
When more may follow, the ``X-Next-Before`` header carries a cursor: pass it
as ``before`` for the next page. A page may be short (even empty) and still
carry a cursor when its filters matched little of the stretch one request
reads; no header means the range is exhausted.

An operator limited to some municipalities sees only the events of equipment
in them; naming another municipality's equipment (or anything that is not
equipment) in ``entity`` answers 404, as if it did not exist. A user held by
desks (:mod:`admin_web.desks`) does not see the events of views they do not
read, and naming such a ``kind`` or equipment is a 403.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from admin_web.auth import Role, User
from admin_web.context import services
from admin_web.guards import current_user, desk_hidden, ensure_desk_reads, require
from admin_web.http_errors import ApiError
from runtime.audit import OUTCOMES
from runtime.errors import RetryableError
from runtime.inventory import KINDS
from runtime.store import MAX_STREAM_ID_PART

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
NEXT_HEADER: Final = "X-Next-Before"
_CURSOR_RE: Final = re.compile(r"\d{1,20}-\d{1,20}")
#: The longest text filter (an entity, an event name, a user).
MAX_TEXT_FILTER: Final = 200

history = Blueprint("history", __name__, url_prefix="/api/v1")


def _text(name: str) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_TEXT_FILTER:
        raise ApiError(422, f"{name} is longer than {MAX_TEXT_FILTER} characters", field=name)
    return value


def _since(name: str = "since") -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        since = float(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be epoch seconds (a number)", field=name) from None
    if not math.isfinite(since) or since < 0:
        raise ApiError(422, f"{name} must be finite epoch seconds >= 0", field=name)
    return since


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(422, f"limit must be a whole number in 1..{MAX_LIMIT}", field="limit")
    return int(raw)


def _before() -> str | None:
    raw = request.args.get("before")
    if raw is None or raw == "":
        return None
    if not _CURSOR_RE.fullmatch(raw) or any(
            int(part) > MAX_STREAM_ID_PART for part in raw.split("-")):
        raise ApiError(422, f"before must be a cursor from {NEXT_HEADER}", field="before")
    return raw


def _page(items: list[dict[str, Any]], cursor: str | None) -> ResponseReturnValue:
    response = jsonify(items)
    if cursor is not None:
        response.headers[NEXT_HEADER] = cursor
    return response


def _scope(user: User) -> frozenset[str] | None:
    """The municipalities ``user`` may read, None when all of them."""
    if user.role is Role.ADMIN or not user.municipalities:
        return None
    return user.municipalities


@history.get("/events")
@require(Role.VIEWER)
def events() -> ResponseReturnValue:
    """The event history: ``entity``, ``kind`` (of equipment), ``event`` (its name) filters.

    Each item is one event as entities and supervisors emitted it
    (``{"event_id", "ts", "entity", "event", …}``), with the equipment's
    ``kind`` and ``municipality`` added where the entity is equipment.
    """
    entity, kind, event = _text("entity"), _text("kind"), _text("event")
    if kind is not None and kind not in KINDS:
        raise ApiError(422, f"kind must be one of {', '.join(KINDS)}", field="kind")
    since, limit, before = _since(), _limit(), _before()
    backend = services().backend
    scope = _scope(current_user())
    if entity is not None and scope is not None:
        try:
            municipality = backend.equipment_municipality(entity)
        except KeyError:
            raise ApiError(404, "unknown equipment") from None
        if municipality not in scope:
            raise ApiError(404, "unknown equipment")
    hidden = desk_hidden()
    if hidden:
        ensure_desk_reads(kind)
        if entity is not None:
            try:
                ensure_desk_reads(backend.equipment_kind(entity))
            except KeyError:
                pass  # not equipment: a coordinator's or a host's events
    try:
        items, cursor = backend.events(entity=entity, kind=kind, event=event,
                                       municipalities=scope, since=since, before=before,
                                       limit=limit)
    except RetryableError:
        raise ApiError(503, "store unavailable, try again", headers={"Retry-After": "1"}) from None
    if hidden:
        items = [i for i in items if not hidden.hides_event(
            str(i.get("kind") or ""), str(i.get("event") or ""))]
    return _page(items, cursor)


@history.get("/audit")
@require(Role.ADMIN)
def audit_trail() -> ResponseReturnValue:
    """The audit trail: who did what, when, from where, with what outcome.

    Items are ``{"id", "ts", "user", "role", "source", "action", "target",
    "params", "before", "after", "outcome": "ok" | "refused", "code", "detail"}``;
    filters ``user``, ``action`` (one, or a family by its first part), ``outcome``,
    ``since`` and ``until`` (by the time the entry was written).
    """
    user, action, since, until = _text("user"), _text("action"), _since(), _since("until")
    limit, before = _limit(), _before()
    outcome = request.args.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise ApiError(422, f"outcome must be one of {', '.join(OUTCOMES)}", field="outcome")
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "until must come after since", field="until")
    try:
        items, cursor = services().backend.audit_trail(
            user=user, action=action, outcome=outcome, since=since, until=until,
            before=before, limit=limit)
    except RetryableError:
        raise ApiError(503, "store unavailable, try again", headers={"Retry-After": "1"}) from None
    return _page(items, cursor)
