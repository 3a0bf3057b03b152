"""The city's pages: the overview map, the equipment list and one equipment's page.

The pages are shells (the map is a partial of the overview, ``_city_map.html``);
their scripts read the API with the login session and poll it:

* the map (``city_map.js``) draws each municipality's area and each piece of
  fixed equipment as an SVG circle, from ``GET /api/v1/city`` every few seconds:
  red in alarm, grey offline, green online, with the counts of each
  municipality; a municipality links to the equipment list filtered on it;
* the list (``equipment.js``) pages ``GET /api/v1/equipment`` with the filters
  of the page's own query string, which the filter form sets;
* an equipment's page (``equipment_detail.js``) shows its twin, the schedule and
  layers in force, its alarms, events and commands, and one form per command
  the user may send (``GET /api/v1/equipment/ID/actions``), each followed to its
  outcome through ``GET /api/v1/commands/ID``.

The two API routes of this module:

``GET /api/v1/city``
    ``{"bbox": [west, south, east, north] | null, "totals": counts,
    "municipalities": [{"slug", "name", "centre": [lon, lat] | null, "polygon":
    [[[lon, lat], …]] | null, "counts", "equipment": [{"id", "kind", "lat", "lon",
    "state"}]}]}`` with ``counts`` ``{"total", "online", "offline", "in_alarm",
    "kinds": {kind: {"total", "online", "offline", "in_alarm"}}}`` and ``state`` one
    of :data:`DOT_STATES`. Only the municipalities the user may read are listed,
    without the kinds his desks do not read. Vehicles are counted but carry no
    dot: they move, and the inventory's position is only their home.

``GET /api/v1/equipment/ID/actions``
    ``{"id", "kind", "actions": [{"action", "params": {name: spec}, …}], "refusal"}``:
    the commands the equipment's kind validates
    (:meth:`~runtime.entity.Entity.describe_commands`) that this user may send
    (none to a viewer, or outside his municipalities, or what his desks do not
    command; ``refusal`` then says why).
"""

from __future__ import annotations

import threading
from typing import Any, Final

from flask import Blueprint, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from admin_web.api import API_PREFIX, MAX_EQUIPMENT_PAGE
from admin_web.auth import Role
from admin_web.context import services
from admin_web.guards import current_user, desk_hidden, ensure_desk_reads, require, require_login
from admin_web.http_errors import ApiError, store_unavailable
from runtime.errors import RetryableError, StoreUnavailableError
from runtime.inventory import KINDS

__all__ = ["DOT_STATES", "ENTITY_STATUSES", "LIST_PAGE", "city_pages"]

#: A dot's colour on the map: in alarm first, then offline, else online.
DOT_STATES: Final = ("alarm", "offline", "online")
#: The statuses an entity has on its host (``unknown``: no host has reported it yet).
ENTITY_STATUSES: Final = ("running", "starting", "restarting", "stopped", "failed", "unknown")
#: The kinds drawn as dots (a vehicle's inventory position is only its home).
UNDRAWN_KINDS: Final = frozenset({"vehicle"})
#: Equipment per page of the list (the API's limit, which the URL may set).
LIST_PAGE: Final = 100

city_pages = Blueprint("city_pages", __name__)


# -- the API ---------------------------------------------------------------------------------


def _counts() -> dict[str, Any]:
    return {"total": 0, "online": 0, "offline": 0, "in_alarm": 0}


def _count(counts: dict[str, Any], item: dict[str, Any]) -> None:
    counts["total"] += 1
    counts["online" if item.get("online") else "offline"] += 1
    if item.get("in_alarm"):
        counts["in_alarm"] += 1


def _state(item: dict[str, Any]) -> str:
    if item.get("in_alarm"):
        return "alarm"
    return "online" if item.get("online") else "offline"


def _extend(bbox: list[float] | None, lon: float, lat: float) -> list[float]:
    if bbox is None:
        return [lon, lat, lon, lat]
    return [min(bbox[0], lon), min(bbox[1], lat), max(bbox[2], lon), max(bbox[3], lat)]


@city_pages.get(f"{API_PREFIX}/city")
@require(Role.VIEWER)
def city() -> ResponseReturnValue:
    """The map of the municipalities the user may read: areas, counts and dots (module doc).

    The backend keeps its reading a second; the answer built from one reading for one
    set of municipalities and hidden kinds is kept with it, so that every page showing
    the map polls it for the cost of a lookup (and an unchanged one gets its 304).
    """
    try:
        data = services().backend.city()
    except StoreUnavailableError:
        raise store_unavailable("the city's equipment is not readable") from None
    user = current_user()
    visible = tuple(m["slug"] for m in data["municipalities"] if user.can(Role.VIEWER, m["slug"]))
    key = (visible, desk_hidden().kinds)
    with _built_lock:
        built = _built.get(key)
    if built is None or built[0] is not data:
        body = _city_body(data, set(visible), key[1])
        built = (data, current_app.json.dumps(body, separators=(",", ":")))
        with _built_lock:
            if len(_built) >= _BUILT_MAX:
                _built.pop(next(iter(_built)))
            _built[key] = built
    return current_app.response_class(built[1], mimetype="application/json")


#: The map answers built lately, by municipalities and hidden kinds, with the reading they
#: were built from.
_built: dict[tuple[tuple[str, ...], frozenset[str]], tuple[dict[str, Any], str]] = {}
_built_lock = threading.Lock()
_BUILT_MAX: Final = 64


def _city_body(data: dict[str, Any], visible: set[str], hidden: frozenset[str]
               ) -> dict[str, Any]:
    towns: dict[str, dict[str, Any]] = {}
    for m in data["municipalities"]:
        if m["slug"] not in visible:
            continue
        centre = [m["lon"], m["lat"]] if m.get("lat") is not None else None
        towns[m["slug"]] = {"slug": m["slug"], "name": m["name"], "centre": centre,
                            "polygon": m.get("polygon"), "counts": {**_counts(), "kinds": {}},
                            "equipment": []}
    totals: dict[str, Any] = {**_counts(), "kinds": {}}
    for item in data["equipment"]:
        town = towns.get(item["municipality"])
        kind = item["kind"]
        if town is None or kind in hidden:
            continue
        for counts in (town["counts"], totals):
            _count(counts, item)
            _count(counts["kinds"].setdefault(kind, _counts()), item)
        if kind not in UNDRAWN_KINDS and item.get("lat") is not None:
            town["equipment"].append({"id": item["id"], "kind": kind, "lat": item["lat"],
                                      "lon": item["lon"], "state": _state(item)})
    bbox: list[float] | None = None
    for town in towns.values():
        rings = town["polygon"] or []
        points = [p for ring in rings for p in ring] or [
            [d["lon"], d["lat"]] for d in town["equipment"]]
        for lon, lat in points:
            bbox = _extend(bbox, lon, lat)
    return {"bbox": bbox, "totals": totals, "municipalities": list(towns.values())}


@city_pages.get(f"{API_PREFIX}/equipment/<entity_id>/actions")
@require(Role.VIEWER)
def equipment_actions(entity_id: str) -> ResponseReturnValue:
    """The commands this user may send to one equipment, with their parameters as its kind
    validates them; 404 when unknown or out of his municipalities, 403 when his desks do
    not read its kind."""
    backend = services().backend
    try:
        municipality = backend.equipment_municipality(entity_id)
        kind = backend.equipment_kind(entity_id)
    except KeyError:
        raise ApiError(404, "unknown equipment") from None
    user = current_user()
    if not user.can(Role.VIEWER, municipality):
        raise ApiError(404, "unknown equipment")
    if desk_hidden():
        ensure_desk_reads(kind)
    actions: list[dict[str, Any]] = []
    refusal: str | None = None
    if not user.can(Role.OPERATOR, municipality):
        refusal = (f"commands need the operator role in {municipality}"
                   if user.can(Role.OPERATOR) else "commands need the operator role")
    else:
        try:
            actions = backend.equipment_actions(entity_id)
        except KeyError:
            raise ApiError(404, "unknown equipment") from None
        desks = services().desks
        if desks.held(user):
            refusals = [desks.command_refusal(user, kind, str(a.get("action")))
                        for a in actions]
            kept = [a for a, no in zip(actions, refusals, strict=True) if no is None]
            if actions and not kept:
                refusal = next(no for no in refusals if no is not None)
            actions = kept
        if not actions and refusal is None:
            refusal = f"{kind or 'this equipment'} takes no command from the admin web"
    return jsonify({"id": entity_id, "kind": kind, "actions": actions, "refusal": refusal})


# -- the pages -------------------------------------------------------------------------------


def _municipality_choices() -> list[tuple[str, str]]:
    """``(slug, name)`` of the municipalities the user may read (none while unreadable)."""
    user = current_user()
    try:
        rows = services().backend.city()["municipalities"]
    except RetryableError:  # the store out of reach, or the runtime not started
        return []
    return [(m["slug"], m["name"]) for m in rows if user.can(Role.VIEWER, m["slug"])]


@city_pages.get("/equipment")
@require_login(Role.VIEWER)
def equipment_page() -> ResponseReturnValue:
    """The equipment list, its filters those of the URL's query string."""
    return render_template(
        "equipment.html", kinds=KINDS, statuses=ENTITY_STATUSES,
        municipalities=_municipality_choices(), filters=request.args,
        page=LIST_PAGE, max_page=MAX_EQUIPMENT_PAGE)


@city_pages.get("/equipment/<entity_id>")
@require_login(Role.VIEWER)
def equipment_detail_page(entity_id: str) -> ResponseReturnValue:
    """One equipment's page; 404 when unknown or in a municipality the user may not read."""
    backend = services().backend
    try:
        municipality = backend.equipment_municipality(entity_id)
        kind = backend.equipment_kind(entity_id)
    except KeyError:
        abort(404, "unknown equipment")
    user = current_user()
    if not user.can(Role.VIEWER, municipality):
        abort(404, "unknown equipment")
    refusal = services().desks.read_refusal(user, kind)
    if refusal is not None:
        abort(403, refusal)
    return render_template("equipment_detail.html", entity_id=entity_id, kind=kind,
                           municipality=municipality)
