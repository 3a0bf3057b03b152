"""The JSON API under ``/api/v1`` (CONTRACT.md "HTTP API")."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any, Final

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from admin_web.audit import audited
from admin_web.auth import Role
from admin_web.backend import HEALTH_STATUSES
from admin_web.context import services
from admin_web.guards import (
    current_user,
    desk_hidden,
    ensure_desk_commands,
    ensure_desk_crisis,
    ensure_desk_reads,
    ensure_scope,
    require,
)
from admin_web.http_errors import ApiError, json_object_body, store_unavailable
from admin_web.redact import redact_urls
from runtime.clock import CITY_TZ
from runtime.commands import check_command_shape, shown
from runtime.energy import MAX_RANGE_S as MAX_ENERGY_RANGE_S
from runtime.energy import STEPS as ENERGY_STEPS
from runtime.errors import (
    ConflictError,
    InvalidCommandError,
    RejectedError,
    StoreUnavailableError,
    UnknownEntityError,
)
from runtime.inventory import KINDS

API_PREFIX: Final = "/api/v1"

MAX_IDEMPOTENCY_KEY_LENGTH: Final = 200
COMMAND_FIELDS: Final = frozenset({"action", "params", "idempotency_key"})

api = Blueprint("api", __name__, url_prefix=API_PREFIX)


@api.get("/health")
def health() -> ResponseReturnValue:
    """Runtime health, without authentication: 200 when ok or starting, 503 when degraded."""
    body = services().backend.health()
    status = body.get("status")
    if status not in HEALTH_STATUSES:
        raise ValueError(f"backend health status {status!r} is not one of the contract's")
    return jsonify(body), 503 if status == "degraded" else 200


@api.get("/tree")
@require(Role.VIEWER)
def tree() -> ResponseReturnValue:
    """The root node of the supervision tree."""
    return jsonify(services().backend.tree())


@api.get("/system")
@require(Role.ADMIN)
def system() -> ResponseReturnValue:
    """Versions and connections; every URL has its credentials redacted here."""
    return jsonify(redact_urls(services().backend.system()))


def _command_body() -> tuple[str, dict[str, Any], str | None]:
    """``(action, params, idempotency_key)`` of a command request.

    Raises :class:`ApiError` (400, 422) or :class:`InvalidCommandError` (past
    the limits of every command). Only checks whose cost the limits bound run
    here: a 60,000-name body or a 100 KB action is refused without being walked.
    """
    body = json_object_body()
    # A misspelt optional field ("param") would otherwise send the command without it.
    unknown = next((name for name in body if name not in COMMAND_FIELDS), None)
    if unknown is not None:
        raise ApiError(422, f"unknown field {shown(unknown)}", field=unknown[:64])
    action = body.get("action")
    params = check_command_shape(action, body.get("params", {}))
    assert isinstance(action, str)
    key = body.get("idempotency_key")
    if key is not None or "idempotency_key" in body:
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ApiError(
                422,
                f"idempotency_key must be a string of 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters",
                field="idempotency_key",
            )
    return action, params, key


@api.post("/equipment/<entity_id>/commands")
@require(Role.OPERATOR)
def submit_command(entity_id: str) -> ResponseReturnValue:
    """Queue a command for one equipment: 202 once it is journaled durably.

    Body ``{"action": str, "params": {...}?, "idempotency_key": str?}``; a
    repeat with the same key from the same user for the same equipment
    answers the first command's id. A command the equipment's kind would
    refuse is a 422 naming the field (``params.dim``) and is not journaled.
    Accepted or refused, the submission is audited (``command.submit``).
    """
    backend = services().backend
    with audited("command.submit", entity_id) as note:
        try:
            municipality = backend.equipment_municipality(entity_id)
        except KeyError:
            raise ApiError(404, "unknown equipment") from None
        except StoreUnavailableError:
            raise store_unavailable("command not accepted") from None
        if not current_user().can(Role.VIEWER, municipality):
            # Another municipality's equipment does not exist for this user.
            raise ApiError(404, "unknown equipment")
        ensure_scope(Role.OPERATOR, municipality)
        try:
            action, params, key = _command_body()
            # Within the limits of every command now: small enough to keep in the trail.
            note.params = {"action": action, "params": params,
                           **({"idempotency_key": key} if key is not None else {})}
            if services().desks.held(current_user()):
                ensure_desk_commands(backend.equipment_kind(entity_id), action)
            result = backend.submit_command(
                entity_id, action, params, caller=current_user().name, idempotency_key=key
            )
        except StoreUnavailableError:
            raise store_unavailable("command not accepted") from None
        except (UnknownEntityError, KeyError):
            # Removed from the inventory since the lookup above.
            raise ApiError(404, "unknown equipment") from None
        except InvalidCommandError as exc:
            note.code = exc.code
            raise ApiError(422, str(exc), field=exc.field) from None
        except RejectedError as exc:
            note.code = exc.code
            raise ApiError(422, str(exc)) from None
        command_id = result["command_id"]
        note.after = {"command_id": command_id, "status": result["status"],
                      "created": bool(result.get("created", True))}
    response = jsonify({"command_id": command_id, "status": result["status"]})
    response.status_code = 202
    response.headers["Location"] = url_for("api.command", command_id=command_id)
    return response


@api.get("/commands/<command_id>")
@require(Role.VIEWER)
def command(command_id: str) -> ResponseReturnValue:
    """One command and where it stands: ``{"command_id", "status", …}``.

    The record also carries its path's timestamps (``created_ts``, ``sent_ts``,
    ``device_read_ts``, ``device_write_ts``, ``device_confirmed_ts``, ``updated_ts``;
    0 for a stage not reached), which ``commandpost bench command`` splits into stages.
    """
    try:
        found = services().backend.command(command_id)
    except KeyError:
        raise ApiError(404, "unknown command") from None
    except StoreUnavailableError:
        raise store_unavailable("try again") from None
    return jsonify(found)


# -- equipment views ---------------------------------------------------------------------

MAX_EQUIPMENT_PAGE: Final = 1000
DEFAULT_EQUIPMENT_PAGE: Final = 500


def _flag(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise ApiError(422, f"{name} must be true or false", field=name)
    return raw == "true"


def _scope() -> frozenset[str] | None:
    """The municipalities the current user may read (None: every one)."""
    user = current_user()
    if user.can(Role.VIEWER) and (user.role is Role.ADMIN or not user.municipalities):
        return None
    return user.municipalities


@api.get("/equipment")
@require(Role.VIEWER)
def equipment_list() -> ResponseReturnValue:
    """Equipment ordered by id, ``limit`` at a time (default 500); filters ``kind``,
    ``municipality``, ``status``, ``online``, ``in_alarm``. The next page's ``after``
    is in the ``X-Next-After`` header (absent on the last page).

    A user held by desks does not see what they do not read (a page may then
    hold fewer than ``limit`` items; ``X-Next-After`` still goes on), and asking
    for such a ``kind`` by name is a 403.
    """
    args = request.args
    hidden = desk_hidden()
    if hidden:
        ensure_desk_reads(args.get("kind"))
    raw_limit = args.get("limit", str(DEFAULT_EQUIPMENT_PAGE))
    if (not (raw_limit.isascii() and raw_limit.isdigit())
            or not 1 <= int(raw_limit) <= MAX_EQUIPMENT_PAGE):
        raise ApiError(422, f"limit must be an integer in [1, {MAX_EQUIPMENT_PAGE}]",
                       field="limit")
    kind = args.get("kind") or None  # empty: no filter, as in the history's
    if kind is not None and kind not in KINDS:
        raise ApiError(422, f"kind must be one of {', '.join(KINDS)}", field="kind")
    try:
        items, next_after = services().backend.equipment(
            kind=kind, municipality=args.get("municipality"),
            status=args.get("status"), online=_flag("online"), in_alarm=_flag("in_alarm"),
            municipalities=_scope(), limit=int(raw_limit), after=args.get("after"))
    except StoreUnavailableError:
        raise store_unavailable("equipment not readable") from None
    if hidden:
        items = [hidden.equipment(i) for i in items if i.get("kind") not in hidden.kinds]
    response = jsonify(items)
    if next_after is not None:
        response.headers["X-Next-After"] = next_after
    return response


@api.get("/equipment/<entity_id>")
@require(Role.VIEWER)
def equipment_one(entity_id: str) -> ResponseReturnValue:
    """One equipment with its recent events, commands and active alarms; 404 when unknown
    or in a municipality the user may not read, 403 when his desks do not read its kind
    (the fields and events of a view they do not read are left out)."""
    backend = services().backend
    try:
        municipality = backend.equipment_municipality(entity_id)
    except KeyError:
        raise ApiError(404, "unknown equipment") from None
    if not current_user().can(Role.VIEWER, municipality):
        raise ApiError(404, "unknown equipment")
    try:
        hidden = desk_hidden()
        if hidden:
            ensure_desk_reads(backend.equipment_kind(entity_id))
        detail = backend.equipment_detail(entity_id)
        return jsonify(hidden.equipment(detail) if hidden else detail)
    except KeyError:
        raise ApiError(404, "unknown equipment") from None
    except StoreUnavailableError:
        raise store_unavailable("equipment not readable") from None


# -- alarms (ISA-18.2, kept by the alarms coordinator) ---------------------------------

ALARM_STATES: Final = frozenset({"unacknowledged", "acknowledged", "rtn_unacknowledged",
                                 "shelved", "suppressed", "out_of_service", "normal"})
ALARM_PRIORITIES: Final = frozenset({"critical", "high", "medium", "low"})
#: What ``GET /alarms`` shows without a ``state`` filter: what needs an operator's eye.
HIDDEN_ALARM_STATES: Final = frozenset({"shelved", "suppressed", "out_of_service", "normal"})
MAX_SHELVE_MINUTES: Final = 7 * 24 * 60
MAX_ALARM_TEXT: Final = 500


def _visible_alarms() -> list[dict[str, Any]]:
    """Every alarm of the municipalities the current user may read."""
    try:
        alarms = services().backend.alarms()
    except StoreUnavailableError:
        raise store_unavailable("alarms not readable") from None
    user = current_user()
    return [a for a in alarms if any(user.can(Role.VIEWER, m) for m in _alarm_places(a))]


def _alarm_places(alarm: dict[str, Any]) -> list[str]:
    """The municipalities an alarm concerns (a flood summary: those of its children)."""
    places = alarm.get("municipalities")
    if isinstance(places, list) and places:
        return [str(m) for m in places]
    return [str(alarm.get("municipality") or "")]


@api.get("/alarms")
@require(Role.VIEWER)
def alarms() -> ResponseReturnValue:
    """Alarms, filtered by ``state``, ``priority``, ``municipality``, ``source``, ``group``.

    Without ``state``, the alarms an operator must see (active or unacknowledged,
    not shelved, suppressed or out of service) and flood summaries, not their
    children; ``group=ID`` lists a summary's children (an incident's: itself first,
    then what joined it); ``state=all`` every alarm.
    Ordered by priority, then newest first.
    """
    args = request.args
    state = args.get("state")
    priority = args.get("priority")
    if state is not None and state != "all" and state not in ALARM_STATES:
        raise ApiError(422, f"unknown state {state!r}", field="state")
    if priority is not None and priority not in ALARM_PRIORITIES:
        raise ApiError(422, f"unknown priority {priority!r}", field="priority")
    group = args.get("group")
    out = []
    for a in _visible_alarms():
        if group is not None:
            # An incident (not a flood summary) is listed with what joined it.
            incident = a.get("id") == group and a.get("condition") != "flood_summary"
            if a.get("group") != group and not incident:
                continue
        elif state is None:
            if a.get("state") in HIDDEN_ALARM_STATES or a.get("group"):
                continue
        elif state != "all" and a.get("state") != state:
            continue
        if priority is not None and a.get("priority") != priority:
            continue
        if args.get("municipality") not in (None, *_alarm_places(a)):
            continue
        if args.get("source") not in (None, a.get("source")):
            continue
        out.append(a)
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    out.sort(key=lambda a: (rank.get(str(a.get("priority")), 4),
                            -float(a.get("raised_ts") or 0.0), str(a.get("id"))))
    return jsonify(out)


@api.get("/alarms/<alarm_id>")
@require(Role.VIEWER)
def alarm(alarm_id: str) -> ResponseReturnValue:
    """One alarm, with its transitions' history; 404 if unknown or out of scope."""
    return jsonify(_alarm_in_scope(alarm_id, Role.VIEWER))


def _alarm_in_scope(alarm_id: str, role: Role) -> dict[str, Any]:
    for a in _visible_alarms():
        if a.get("id") == alarm_id:
            # Acting on a summary acts on every child: the user must hold the role in all
            # of their municipalities.
            if role is not Role.VIEWER and not all(current_user().can(role, m)
                                                   for m in _alarm_places(a)):
                raise ApiError(403, f"not allowed to act on alarm {alarm_id} in all of "
                                    f"{', '.join(_alarm_places(a))}", field="municipality")
            if role is not Role.VIEWER and services().desks.held(current_user()):
                _ensure_desk_alarm(a)
            return a
    raise ApiError(404, "unknown alarm")


def _ensure_desk_alarm(alarm: dict[str, Any]) -> None:
    """Refuse (403) an action on an alarm of equipment the user's desks command nothing of;
    an alarm whose source is no equipment (a flood summary, a coordinator's) is anyone's."""
    source = alarm.get("source")
    try:
        kind = services().backend.equipment_kind(str(source)) if source else None
    except KeyError:
        kind = None  # a coordinator's or a host's alarm: anyone's
    refusal = services().desks.alarm_refusal(current_user(), kind)
    if refusal is not None:
        raise ApiError(403, refusal)


def _optional_text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ALARM_TEXT:
        raise ApiError(422, f"{name} must be a non-empty string of at most "
                            f"{MAX_ALARM_TEXT} characters", field=name)
    return value


def _no_params() -> dict[str, Any]:
    """The parameters of an action that takes none: no body, or an empty object."""
    _alarm_body(frozenset())
    return {}


def _alarm_action(alarm_id: str, action: str, role: Role,
                  parse: Callable[[], dict[str, Any]] = _no_params) -> ResponseReturnValue:
    """Check, journal and audit (``alarm.{action}``) an operator's action on an alarm."""
    with audited(f"alarm.{action}", alarm_id) as note:
        alarm = _alarm_in_scope(alarm_id, role)
        note.before = {"state": alarm.get("state"), "priority": alarm.get("priority")}
        params = parse()
        note.params = params
        user = current_user()
        try:
            result = services().backend.alarm_action(
                action, {"id": alarm_id, **params},
                caller=f"user:{user.name}:{user.role.value}")
        except StoreUnavailableError:
            raise store_unavailable("alarm action not accepted") from None
        except RejectedError as exc:
            raise ApiError(422, str(exc)) from None
        note.after = {"command_id": result["command_id"], "status": result["status"]}
    response = jsonify({"command_id": result["command_id"], "status": result["status"]})
    response.status_code = 202
    response.headers["Location"] = url_for("api.command", command_id=result["command_id"])
    return response


def _alarm_body(fields: frozenset[str]) -> dict[str, Any]:
    """The JSON object of an alarm action (none: ``{}``), holding no field but ``fields``."""
    if not request.get_data():
        return {}
    body = json_object_body()
    unknown = next((name for name in body if name not in fields), None)
    if unknown is not None:
        raise ApiError(422, f"unknown field {shown(unknown)}", field=unknown[:64])
    return body


def _ack_params() -> dict[str, Any]:
    comment = _optional_text(_alarm_body(frozenset({"comment"})), "comment")
    return {"comment": comment} if comment else {}


def _shelve_params() -> dict[str, Any]:
    body = _alarm_body(frozenset({"minutes", "reason"}))
    minutes = body.get("minutes")
    if (isinstance(minutes, bool) or not isinstance(minutes, int | float)
            or not math.isfinite(minutes) or not 0 < minutes <= MAX_SHELVE_MINUTES):
        raise ApiError(422, f"minutes must be a number in (0, {MAX_SHELVE_MINUTES}]",
                       field="minutes")
    reason = _optional_text(body, "reason", required=True)
    return {"minutes": float(minutes), "reason": reason}


@api.post("/alarms/<alarm_id>/ack")
@require(Role.OPERATOR)
def alarm_ack(alarm_id: str) -> ResponseReturnValue:
    """Acknowledge (``{"comment"?}``): 202 with the command id of the journaled action."""
    return _alarm_action(alarm_id, "ack", Role.OPERATOR, _ack_params)


@api.post("/alarms/<alarm_id>/shelve")
@require(Role.OPERATOR)
def alarm_shelve(alarm_id: str) -> ResponseReturnValue:
    """Shelve for ``minutes`` (at most 7 days) with a ``reason``; it shows again at expiry."""
    return _alarm_action(alarm_id, "shelve", Role.OPERATOR, _shelve_params)


@api.post("/alarms/<alarm_id>/unshelve")
@require(Role.OPERATOR)
def alarm_unshelve(alarm_id: str) -> ResponseReturnValue:
    """Show a shelved alarm again now."""
    return _alarm_action(alarm_id, "unshelve", Role.OPERATOR)


@api.post("/alarms/<alarm_id>/out-of-service")
@require(Role.ADMIN)
def alarm_out_of_service(alarm_id: str) -> ResponseReturnValue:
    """Take an alarm out of service (admin): tracked, never shown, until returned."""
    return _alarm_action(alarm_id, "out_of_service", Role.ADMIN)


@api.post("/alarms/<alarm_id>/return-to-service")
@require(Role.ADMIN)
def alarm_return_to_service(alarm_id: str) -> ResponseReturnValue:
    """Return an alarm to service (admin): it shows as its condition stands."""
    return _alarm_action(alarm_id, "return_to_service", Role.ADMIN)


# -- crisis plans (run by the crisis coordinator) ----------------------------------------

CRISIS_FIELDS: Final = ("mode", "municipalities", "replace")
MAX_CRISIS_MUNICIPALITIES: Final = 100
#: The longest municipality slug a crisis request may name.
MAX_SLUG_LENGTH: Final = 64


@api.get("/crisis")
@require(Role.VIEWER)
def crisis() -> ResponseReturnValue:
    """The crisis mode of each municipality the user may read, by slug.

    ``{"mode", "since", "by", "activation_id", "entities": {"done", "pending",
    "failed"}, "kept": [...]}``; after a deactivation, ``kept`` lists the fields
    an operator set during the crisis, which the restore left as they were.
    """
    try:
        rows = services().backend.crisis()
    except StoreUnavailableError:
        raise store_unavailable("crisis modes not readable") from None
    user = current_user()
    return jsonify({m: row for m, row in sorted(rows.items()) if user.can(Role.VIEWER, m)})


def _crisis_body() -> tuple[str, list[str], bool]:
    body = json_object_body()
    unknown = next((name for name in body if name not in CRISIS_FIELDS), None)
    if unknown is not None:
        raise ApiError(422, f"unknown field {shown(unknown)}", field=unknown[:64])
    mode = body.get("mode")
    if not isinstance(mode, str) or not mode:
        raise ApiError(422, "mode must be normal, snow or flood", field="mode")
    munis = body.get("municipalities")
    if (not isinstance(munis, list) or not 1 <= len(munis) <= MAX_CRISIS_MUNICIPALITIES
            or not all(isinstance(m, str) and 0 < len(m) <= MAX_SLUG_LENGTH for m in munis)):
        raise ApiError(422, f"municipalities must be a list of 1-{MAX_CRISIS_MUNICIPALITIES} "
                            "municipality slugs", field="municipalities")
    replace = body.get("replace", False)
    if not isinstance(replace, bool):
        raise ApiError(422, "replace must be true or false", field="replace")
    return mode, list(dict.fromkeys(munis)), replace


@api.post("/crisis")
@require(Role.OPERATOR)
def crisis_switch() -> ResponseReturnValue:
    """Switch municipalities to a crisis mode, or back to ``normal``: 202 ``{"activation_id"}``.

    Body ``{"mode": "normal" | "snow" | "flood", "municipalities": [...],
    "replace"?: bool}``, every municipality within the operator's. A request
    naming a municipality that has a plan already is refused whole (409,
    naming them) unless ``replace``; an unknown mode or municipality is a 422.
    The decision is journaled for the crisis coordinator (which checks the
    conflict again) and audited (``crisis.activate``, ``crisis.deactivate``).
    """
    backend = services().backend
    mode, munis, replace = _crisis_body()
    action = "crisis.deactivate" if mode == "normal" else "crisis.activate"
    with audited(action, ",".join(munis)[:200],
                 params={"mode": mode, "municipalities": munis, "replace": replace}) as note:
        try:
            rows = backend.crisis()
        except StoreUnavailableError:
            raise store_unavailable("crisis mode not switched") from None
        unknown = [m for m in munis if m not in rows]
        if unknown:
            raise ApiError(422, f"unknown municipality {', '.join(map(shown, unknown))}",
                           field="municipalities")
        for m in munis:
            ensure_scope(Role.OPERATOR, m)
        note.before = {m: rows[m].get("mode") for m in munis}
        ensure_desk_crisis(mode, [str(rows[m].get("mode") or "normal") for m in munis])
        user = current_user()
        try:
            result = backend.crisis_request(mode, munis, replace=replace,
                                            caller=f"user:{user.name}:{user.role.value}")
        except StoreUnavailableError:
            raise store_unavailable("crisis mode not switched") from None
        except ConflictError as exc:
            note.code = exc.code
            raise ApiError(409, str(exc), field="municipalities") from None
        except InvalidCommandError as exc:
            note.code = exc.code
            raise ApiError(422, str(exc), field=exc.field) from None
        except RejectedError as exc:
            note.code = exc.code
            raise ApiError(422, str(exc)) from None
        note.after = {"activation_id": result["activation_id"]}
    response = jsonify({"activation_id": result["activation_id"], "status": result["status"]})
    response.status_code = 202
    response.headers["Location"] = url_for("api.command", command_id=result["activation_id"])
    return response


# -- bus priority ------------------------------------------------------------------------


@api.get("/priority")
@require(Role.VIEWER)
def priority() -> ResponseReturnValue:
    """The bus-priority pool: its members (id, pid, buses served), the requests granted and
    refused by reason, and the latency from a bus's position to the controller's write."""
    try:
        return jsonify(services().backend.priority())
    except StoreUnavailableError:
        raise store_unavailable("bus priority not readable") from None


# -- street-lighting energy --------------------------------------------------------------

ENERGY_SCOPES: Final = ("metropolis", "municipality", "circuit")
#: The instants an energy report may start or end at: from 1970 to the end of year 9998
#: (the city's calendar dates must exist a day either side).
EARLIEST_INSTANT: Final = 0.0
LATEST_INSTANT: Final = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC).timestamp()


def _instant(name: str) -> float | None:
    """Query argument ``name`` as epoch seconds: a number, or an ISO 8601 date or time
    (local to the city when it names no offset), from 1970 to the end of 9998."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(raw)
            if when.tzinfo is None:
                when = when.replace(tzinfo=CITY_TZ)
            value = when.timestamp()
        except (ValueError, OverflowError):
            raise ApiError(422, f"{name} must be epoch seconds or an ISO 8601 date or time",
                           field=name) from None
    if not math.isfinite(value):
        raise ApiError(422, f"{name} must be a finite number", field=name)
    if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
        raise ApiError(422, f"{name} must lie between 1970 and the end of 9998", field=name)
    return value


@api.get("/energy")
@require(Role.VIEWER)
def energy() -> ResponseReturnValue:
    """Metered street-lighting energy in Wh per ``step`` (``hour`` or ``night``) of one
    circuit, one municipality or the metropolis (``scope``, ``id``), from ``from`` to
    ``to`` (default: the last day), with the dimming and legacy baselines and both
    savings in percent (:mod:`runtime.energy`)."""
    args = request.args
    scope = args.get("scope", "metropolis")
    if scope not in ENERGY_SCOPES:
        raise ApiError(422, f"scope must be one of {', '.join(ENERGY_SCOPES)}", field="scope")
    ident = args.get("id") or None
    if scope != "metropolis" and ident is None:
        raise ApiError(422, f"scope {scope} needs an id", field="id")
    step = args.get("step", "hour")
    if step not in ENERGY_STEPS:
        raise ApiError(422, f"step must be one of {', '.join(ENERGY_STEPS)}", field="step")
    start, end = _instant("from"), _instant("to")
    if start is not None and end is not None:
        if end <= start:
            raise ApiError(422, "to must come after from", field="to")
        if end - start > MAX_ENERGY_RANGE_S:
            raise ApiError(422, f"at most {MAX_ENERGY_RANGE_S / 86_400:g} days at a time",
                           field="to")
    if (start is None) != (end is None):
        raise ApiError(422, "give both from and to, or neither (the last day)",
                       field="from" if start is None else "to")
    try:
        body = services().backend.energy(scope=scope, ident=ident, start=start, end=end,
                                         step=step, municipalities=_scope())
    except KeyError:
        raise ApiError(404, f"unknown {scope}") from None
    except StoreUnavailableError:
        raise store_unavailable("energy not readable") from None
    return jsonify(body)
