"""Citizen requests taken by operators, and the interventions dispatch makes of them.

Under ``/api/v1`` (CONTRACT.md), read from the read models the dispatch
coordinator publishes (``interventions``, ``fleet``), never computed here::

    POST /requests                 operator  {"category", "description", "lat", "lon",
                                             "municipality"?} -> 201 {"request_id",
                                             "intervention_id"}
    GET  /interventions            viewer    ?state=&municipality=   newest first
    GET  /interventions/{id}       viewer    one intervention
    GET  /fleet                    viewer    ?municipality=&role=&status=   service vehicles

Scoping holds on reads as on writes: an intervention or a vehicle of a
municipality the user may not read is answered as if it did not exist (404,
or left out of a list), and a request may be taken only within the
operator's municipalities (403). Requests from citizens' apps come through
Open311 (:mod:`admin_web.open311`) and become interventions the same way.
"""

from __future__ import annotations

import math
from typing import Any, Final

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from admin_web.audit import audited
from admin_web.auth import Role
from admin_web.context import services
from admin_web.guards import current_user, ensure_desk_requests, ensure_scope, require
from admin_web.http_errors import ApiError, json_object_body, store_unavailable
from runtime.commands import shown
from runtime.errors import InvalidCommandError, StoreUnavailableError

__all__ = ["INTERVENTION_STATES", "interventions"]

INTERVENTION_STATES: Final = ("new", "assigned", "en_route", "on_site", "done", "cancelled")
VEHICLE_STATUSES: Final = ("available", "busy", "out_of_service")
REQUEST_FIELDS: Final = frozenset({"category", "description", "lat", "lon", "municipality"})
MAX_DESCRIPTION: Final = 4000
MAX_CATEGORY: Final = 64

interventions = Blueprint("interventions", __name__, url_prefix="/api/v1")


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ApiError(422, f"{name} must be a non-empty string of at most {limit} characters",
                       field=name)
    return value.strip()


def _degrees(body: dict[str, Any], name: str, bound: float) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(422, f"{name} must be a number of degrees (WGS84)", field=name)
    number = float(value)
    if not math.isfinite(number) or abs(number) > bound:
        raise ApiError(422, f"{name} must be a finite number within ±{bound:g}", field=name)
    return number


@interventions.post("/requests")
@require(Role.OPERATOR)
def open_request() -> ResponseReturnValue:
    """Take a citizen's request on the phone: 201 ``{"request_id", "intervention_id"}``.

    ``category`` is an Open311 service code; the point must lie within the
    metropolis and, when ``municipality`` is given, within that one. The
    request is stored as Open311 requests are and journaled for dispatch;
    accepted or refused, it is audited (``request.create``). An operator held
    by desks needs one that takes citizens' calls (403 otherwise).
    """
    with audited("request.create") as note:
        body = json_object_body()
        note.params = {k: body.get(k) for k in sorted(REQUEST_FIELDS) if k in body}
        unknown = next((name for name in body if name not in REQUEST_FIELDS), None)
        if unknown is not None:
            raise ApiError(422, f"unknown field {unknown[:64]!r}", field=unknown[:64])
        category = _text(body, "category", MAX_CATEGORY)
        description = _text(body, "description", MAX_DESCRIPTION)
        lat, lon = _degrees(body, "lat", 90.0), _degrees(body, "lon", 180.0)
        given = body.get("municipality")
        if given is not None and not isinstance(given, str):
            raise ApiError(422, "municipality must be a slug", field="municipality")
        backend = services().backend
        municipality = backend.request_municipality(lat, lon)
        if municipality is None:
            raise ApiError(422, f"the point {lat}, {lon} is outside the metropolis", field="lat")
        if given is not None and given != municipality:
            raise ApiError(422, f"the point {lat}, {lon} is in {municipality}, not {shown(given)}",
                           field="municipality")
        ensure_scope(Role.OPERATOR, municipality)
        ensure_desk_requests()
        user = current_user()
        try:
            opened = backend.open_request(category=category, description=description, lat=lat,
                                          lon=lon, caller=f"user:{user.name}:{user.role.value}")
        except InvalidCommandError as exc:
            raise ApiError(422, str(exc), field=exc.field) from None
        except StoreUnavailableError:
            raise store_unavailable("request not taken") from None
        note.after = {"request_id": opened["request_id"],
                      "intervention_id": opened["intervention_id"],
                      "municipality": municipality}
    response = jsonify({"request_id": opened["request_id"],
                        "intervention_id": opened["intervention_id"]})
    response.status_code = 201
    response.headers["Location"] = url_for("interventions.intervention",
                                           intervention_id=opened["intervention_id"])
    return response


def _visible(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    user = current_user()
    return [x for x in items if user.can(Role.VIEWER, str(x.get("municipality") or ""))]


def _interventions() -> list[dict[str, Any]]:
    try:
        return _visible(services().backend.interventions())
    except StoreUnavailableError:
        raise store_unavailable("interventions not readable") from None


@interventions.get("/interventions")
@require(Role.VIEWER)
def list_interventions() -> ResponseReturnValue:
    """Interventions of the user's municipalities, newest first; ``state``, ``municipality``."""
    state = request.args.get("state")
    if state is not None and state not in INTERVENTION_STATES:
        raise ApiError(422, f"unknown state {state[:40]!r}", field="state")
    municipality = request.args.get("municipality")
    out = [x for x in _interventions()
           if (state is None or x.get("state") == state)
           and (municipality is None or x.get("municipality") == municipality)]
    out.sort(key=lambda x: (-float(x.get("created_ts") or 0.0), str(x.get("id"))))
    return jsonify(out)


@interventions.get("/interventions/<intervention_id>")
@require(Role.VIEWER)
def intervention(intervention_id: str) -> ResponseReturnValue:
    """One intervention; 404 if unknown or of a municipality the user may not read."""
    for x in _interventions():
        if x.get("id") == intervention_id:
            return jsonify(x)
    raise ApiError(404, "unknown intervention")


@interventions.get("/fleet")
@require(Role.VIEWER)
def fleet() -> ResponseReturnValue:
    """Service vehicles as dispatch knows them (by home municipality), ordered by id."""
    args = request.args
    status = args.get("status")
    if status is not None and status not in VEHICLE_STATUSES:
        raise ApiError(422, f"unknown status {status[:40]!r}", field="status")
    try:
        vehicles = _visible(services().backend.fleet())
    except StoreUnavailableError:
        raise store_unavailable("fleet not readable") from None
    out = [v for v in vehicles
           if args.get("municipality") in (None, v.get("municipality"))
           and args.get("role") in (None, v.get("role"))
           and status in (None, v.get("status"))]
    out.sort(key=lambda v: str(v.get("id")))
    return jsonify(out)
