"""The dispatch coordinator: citizen requests and equipment faults become interventions.

An intervention moves ``new → assigned → en_route → on_site → done``, or to
``cancelled`` from any state before ``done``. The coordinator keeps:

* the **interventions**: one per citizen request (id ``int-{request_id}``, so
  that a replayed ``open`` finds the one it made), and one per lighting
  circuit with failed lamps (lamps failing later join the circuit's open
  intervention; a new one opens only once that one is closed);
* an **index of the fleet**: each service vehicle's position, reported
  ``status`` (``available``, ``busy``, ``out_of_service``), role, radio, whether
  its device is online, whether its position is stale (too old to assign on),
  and the job it reports. Vehicles send it themselves
  (``vehicle_state`` messages, :class:`actors.vehicle.Vehicle`): at once on a
  change of status, job or session, at most every 5 s while moving, at least
  every 60 s. Those are messages between entities, batched between hosts and
  conflated in a full mailbox; they are not events, which would put ~40 rows a
  second in a stream kept 30 days and make the alarms coordinator read them.

A request is assigned to the nearest *available* vehicle (reported available,
online, not holding one of our jobs, not refused a job in the last minute) of
a role the service's catalogue entry names (``vehicle_roles``,
``runtime/data/open311_services.toml``), by great-circle distance
(:func:`runtime.geo.distance_m`); ties go to the smaller id. One without a
candidate waits as ``new`` and is tried again on every change of the fleet and
every second. The vehicle is then commanded through its entity, like any
command, with ids derived from the intervention (a replay is acknowledged,
never acted twice): action ``job`` ``{"job", "job_lat", "job_lon"}``, which its
telematics unit takes, and, when it has a radio, ``set`` ``{"message"}`` for
the crew's display. The crew's progress comes back in the vehicle's reports
(``job_state``), which move the intervention on; ``done`` frees the vehicle. A
job the vehicle refuses puts the intervention back to ``new`` and keeps that
vehicle out for a minute; a vehicle that goes out of service gives its job up.

Messages:

* ``events`` (the host's event feed): ``lamps_failed`` of lighting circuits
  (:class:`actors.lighting.LightingCircuit`) open or join fault interventions;
  ``fire_dispatch`` of a building's fire plan (:class:`actors.building.Building`)
  opens one intervention per plan run (``int-{plan}``, category
  ``building_fire``) for a vehicle of the plan's ``role``; each change of it is
  also a ``fire_plan_step`` event, shown on the building's fire alarm;
* ``vehicle_state``: a vehicle's report (above);
* ``reply`` / ``error``: the vehicles' answers to the commands sent them;
* ``tick`` (every second): waiting interventions tried again, unanswered jobs
  sent again, closed interventions forgotten after a day;
* journaled commands (``caller`` ``user:NAME:ROLE``, or ``open311:APP``):
  ``open`` ``{"request_id", "category", "description"?, "lat"?, "lon"?,
  "municipality"?}`` and ``cancel`` ``{"id", "reason"?}``.

Read models: ``interventions`` (msgpack ``{"ts", "interventions": [...]}``,
the records of CONTRACT.md plus ``notes``, ``source``, ``lamps``,
``assigned_ts``, ``equipment`` (the lighting circuit or the building it is
about, if any) and ``timeline`` (its last :data:`MAX_TIMELINE` changes,
``{"ts", "state", "vehicle", "notes"}`` each, oldest first)), published on
every change; ``fleet`` (``{"ts", "vehicles":
[...]}``), at most once a second. The composition root copies each request's
state into its Open311 record (``status`` closed once done or cancelled,
``status_notes`` the intervention's ``notes``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from actors.control.alarms import caller_identity
from actors.vehicle import DISPATCH
from runtime.commands import check_command_shape, shown
from runtime.entity import Checkpoint, Entity
from runtime.envelope import Envelope, MessageKind, pack
from runtime.errors import InvalidCommandError, MalformedMessageError, RejectedError
from runtime.open311 import ServiceCatalogue, default_catalogue

__all__ = [
    "FLEET_READ_MODEL",
    "MAX_TIMELINE",
    "PUBLIC_FIELDS",
    "READ_MODEL",
    "STATES",
    "DispatchCoordinator",
    "intervention_id",
]

#: The read models' names (``view:interventions`` and ``view:fleet`` in the store).
READ_MODEL: Final = "interventions"
FLEET_READ_MODEL: Final = "fleet"
STATES: Final = ("new", "assigned", "en_route", "on_site", "done", "cancelled")
CLOSED: Final = frozenset({"done", "cancelled"})
#: How far a crew's report may move an intervention (never back).
_PROGRESS: Final = {"en_route": 2, "on_site": 3, "done": 4}
_RANK: Final = {state: i for i, state in enumerate(STATES)}
#: The service that lamp failures are (its roles serve them).
FAULT_CATEGORY: Final = "lighting_fault"
#: The category of a fire plan's intervention (its vehicle role comes with the request).
FIRE_CATEGORY: Final = "building_fire"
_TICK_S: Final = 1.0
#: A job not acknowledged by then is sent again (same command id: never acted twice).
_RESEND_S: Final = 15.0
#: A vehicle that refused a job is left out of assignments this long.
_EXCLUDE_S: Final = 60.0
#: Closed interventions stay listed this long (their requests stay in the Open311 store).
RETAIN_CLOSED_S: Final = 86_400.0
_COMMAND_DEADLINE_S: Final = 30.0
_MAX_DESCRIPTION: Final = 500
_MAX_TEXT: Final = 200
_ACTIONS: Final = ("open", "cancel")
#: The fields of an intervention as the read model shows it.
PUBLIC_FIELDS: Final = ("id", "request_id", "category", "description", "municipality", "state",
                        "vehicle", "lat", "lon", "created_ts", "updated_ts", "notes", "source",
                        "lamps", "assigned_ts", "equipment", "timeline")
#: The last changes of an intervention kept in its timeline (a reassigned job adds three).
MAX_TIMELINE: Final = 32


def intervention_id(request_id: str) -> str:
    """The intervention a request becomes: derived from it, so a replay finds it."""
    return f"int-{request_id}"


@functools.cache
def _catalogue() -> ServiceCatalogue:
    return default_catalogue()


def _distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    # runtime.geo brings shapely and pyproj (~45 MB): loaded by the first assignment,
    # so that a control host without dispatch never pays for it.
    from runtime.geo import distance_m

    return distance_m(a, b)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _text(params: Mapping[str, Any], name: str, limit: int, *, required: bool = False
          ) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise InvalidCommandError(f"{name} is required", field=f"params.{name}")
        return None
    if not isinstance(value, str):
        raise InvalidCommandError(f"{name} must be a string", field=f"params.{name}")
    return value[:limit]


class DispatchCoordinator(Entity):
    """Turns requests and faults into interventions and sends the fleet (module doc)."""

    kind: ClassVar[str] = "coordinator"
    #: The host hands this entity the event stream through its consumer group.
    EVENT_FEED: ClassVar[bool] = True

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.interventions: dict[str, dict[str, Any]] = {
            str(k): dict(v) for k, v in (self.state.get("interventions") or {}).items()
            if isinstance(v, Mapping)}
        self.vehicles: dict[str, dict[str, Any]] = {
            str(k): dict(v) for k, v in (self.state.get("vehicles") or {}).items()
            if isinstance(v, Mapping)}
        self.excluded: dict[str, float] = {
            str(k): float(v) for k, v in (self.state.get("excluded") or {}).items()
            if _number(v) is not None}
        # Commands sent and not answered yet: envelope id -> (intervention, command id).
        self._pending: dict[str, tuple[str, str]] = {}
        self._fleet_dirty = True
        # Housekeeping (resends, the read model) keeps the machine's pace on a fast clock.
        self.ctx.start_timer("tick", _TICK_S * self.ctx.clock.speed, "tick", repeat=True)
        self._assign_waiting()
        self._publish()
        self._publish_fleet()

    def checkpoint(self) -> Checkpoint:
        # Copies: a checkpoint kept in memory must not follow later changes.
        self.state["interventions"] = {k: dict(v) for k, v in self.interventions.items()}
        self.state["vehicles"] = {k: dict(v) for k, v in self.vehicles.items()}
        self.state["excluded"] = dict(self.excluded)
        return super().checkpoint()

    # -- commands (journaled) -------------------------------------------------------
    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` of ``open`` or ``cancel`` as the coordinator takes them.

        Raises :class:`InvalidCommandError` naming the field: an unknown action,
        a ``category`` the catalogue does not have, a position that is not two
        finite numbers within WGS84's range (or only one of them).
        """
        params = check_command_shape(action, params)
        if action not in _ACTIONS:
            raise InvalidCommandError(f"dispatch accepts no {shown(action)} command "
                                      f"(only {', '.join(_ACTIONS)})", field="action",
                                      code="unknown_action")
        if action == "cancel":
            return {"id": _text(params, "id", _MAX_TEXT, required=True),
                    "reason": _text(params, "reason", _MAX_TEXT) or ""}
        category = _text(params, "category", 64, required=True)
        if category not in _catalogue():
            raise InvalidCommandError(f"unknown category {shown(category)}",
                                      field="params.category", code="out_of_range")
        lat, lon = params.get("lat"), params.get("lon")
        if (lat is None) != (lon is None):
            raise InvalidCommandError("lat and lon go together", field="params.lat")
        for name, value, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
            number = _number(value)
            if value is not None and (number is None or abs(number) > bound):
                raise InvalidCommandError(f"{name} must be a finite number within "
                                          f"±{bound:g}", field=f"params.{name}")
        return {"request_id": _text(params, "request_id", 64, required=True),
                "category": category,
                "description": _text(params, "description", _MAX_DESCRIPTION) or "",
                "lat": _number(lat), "lon": _number(lon),
                "municipality": _text(params, "municipality", 64)}


    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        try:
            clean = self.validate_command(action, params)
        except InvalidCommandError as exc:
            raise RejectedError(str(exc), code=exc.code) from None
        if action == "open":
            rec = self._open_request(clean)
        else:
            rec = self._cancel(str(clean["id"]), str(clean["reason"]))
        self._assign_waiting()
        self._publish()
        return _public(rec)

    def _open_request(self, p: Mapping[str, Any]) -> dict[str, Any]:
        iid = intervention_id(str(p["request_id"]))
        existing = self.interventions.get(iid)
        if existing is not None:
            return existing  # a replay of the journal: the intervention is already there
        now = self.ctx.clock.time()
        rec = {
            "id": iid, "request_id": p["request_id"], "category": p["category"],
            "description": p["description"], "municipality": p["municipality"] or "unknown",
            "state": "new", "vehicle": None, "lat": p["lat"], "lon": p["lon"],
            "created_ts": now, "updated_ts": now, "source": "request", "lamps": [],
            "assigned_ts": None, "assignment": 0, "job_acked": False, "sent_ts": 0.0,
            "notes": ("Received; waiting for a crew." if p["lat"] is not None
                      else "Received without a position: an operator must place it."),
            "opened_by": caller_identity(self.current_caller)[0],
        }
        self.interventions[iid] = rec
        self._changed(rec, "new")
        return rec

    def _cancel(self, iid: str, reason: str) -> dict[str, Any]:
        rec = self.interventions.get(iid)
        if rec is None:
            raise RejectedError(f"no intervention {shown(iid)}", code="unknown_intervention")
        if rec["state"] in CLOSED:
            return rec  # cancelled already (a replay) or done: nothing to undo
        vehicle = rec.get("vehicle")
        if vehicle:
            self._release(rec)
            self._send(rec, str(vehicle), "clear", "job",
                       {"job": "", "job_lat": float(rec["lat"] or 0.0),
                        "job_lon": float(rec["lon"] or 0.0)})
        user = caller_identity(self.current_caller)[0]
        rec["notes"] = f"Cancelled by {user}" + (f": {reason}" if reason else ".")
        self._move(rec, "cancelled")
        return rec

    # -- equipment faults (the event feed) --------------------------------------------
    async def on_events(self, msg: Envelope) -> dict[str, int]:
        p = msg.payload
        if not isinstance(p, Mapping) or not isinstance(p.get("events"), list):
            raise MalformedMessageError("events needs a list of events")
        changed = 0
        for ev in p["events"]:
            if isinstance(ev, Mapping) and ev.get("event") == "lamps_failed":
                changed += self._lamps_failed(ev)
            elif isinstance(ev, Mapping) and ev.get("event") == "fire_dispatch":
                changed += self._fire(ev)
        if changed:
            self._assign_waiting()
            self._publish()
        return {"events": len(p["events"]), "changes": changed}

    def _lamps_failed(self, ev: Mapping[str, Any]) -> int:
        circuit = str(ev.get("entity") or "")
        lat, lon = _number(ev.get("lat")), _number(ev.get("lon"))
        ts = _number(ev.get("ts")) or self.ctx.clock.time()
        lamps = sorted({int(x) for x in str(ev.get("lamps") or "").split(",") if x.isdigit()})
        if not circuit or not lamps:
            return 0
        open_one = next((r for r in self.interventions.values()
                         if r.get("circuit") == circuit and r["state"] not in CLOSED), None)
        if open_one is not None:
            joined = sorted(set(open_one["lamps"]) | set(lamps))
            if joined == open_one["lamps"]:
                return 0  # the same failures again (a replayed batch)
            open_one["lamps"] = joined
            open_one["description"] = _fault_text(circuit, joined)
            open_one["updated_ts"] = self.ctx.clock.time()
            return 1
        # Derived from the event, so that a batch the feed hands over again opens nothing new.
        iid = f"int-{circuit}-{int(ts * 1000)}"
        if iid in self.interventions:
            return 0
        now = self.ctx.clock.time()
        rec = {
            "id": iid, "request_id": None, "category": FAULT_CATEGORY,
            "description": _fault_text(circuit, lamps),
            "municipality": str(ev.get("municipality") or "unknown"), "state": "new",
            "vehicle": None, "lat": lat, "lon": lon, "created_ts": now, "updated_ts": now,
            "source": "fault", "circuit": circuit, "lamps": lamps, "assigned_ts": None,
            "assignment": 0, "job_acked": False, "sent_ts": 0.0,
            "notes": "Opened from the lighting cabinet's lamp failures.",
        }
        self.interventions[iid] = rec
        self._changed(rec, "new")
        return 1

    def _fire(self, ev: Mapping[str, Any]) -> int:
        """A building's fire plan asks for a crew: one intervention per plan run."""
        building = str(ev.get("building") or ev.get("entity") or "")
        plan = str(ev.get("plan") or "")
        role = str(ev.get("role") or "")
        lat, lon = _number(ev.get("lat")), _number(ev.get("lon"))
        if not building or not plan or not role or lat is None or lon is None:
            return 0
        iid = f"int-{plan}"  # derived from the plan run: a batch handed over again opens nothing
        if iid in self.interventions:
            return 0
        now = self.ctx.clock.time()
        rec = {
            "id": iid, "request_id": None, "category": FIRE_CATEGORY,
            "description": f"Fire alarm in building {building}: {role} crew needed.",
            "municipality": str(ev.get("municipality") or "unknown"), "state": "new",
            "vehicle": None, "lat": lat, "lon": lon, "created_ts": now, "updated_ts": now,
            "source": "fire_plan", "building": building, "roles": [role], "lamps": [],
            "assigned_ts": None, "assignment": 0, "job_acked": False, "sent_ts": 0.0,
            "notes": f"Opened by the fire plan of building {building}; waiting for a crew.",
        }
        self.interventions[iid] = rec
        self._changed(rec, "new")
        return 1

    # -- the fleet ----------------------------------------------------------------------
    async def on_vehicle_state(self, msg: Envelope) -> None:
        """A vehicle's report (see :class:`actors.vehicle.Vehicle`)."""
        p = msg.payload
        vid = msg.sender
        if not isinstance(p, Mapping) or not vid:
            raise MalformedMessageError("vehicle_state needs a payload and a sender")
        lat, lon = _number(p.get("lat")), _number(p.get("lon"))
        if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
            raise MalformedMessageError(f"vehicle_state of {vid} has no valid position")
        old = self.vehicles.get(vid, {})
        v = {
            "id": vid, "municipality": str(p.get("municipality") or "unknown"),
            "role": str(p.get("role") or ""), "radio": p.get("radio") is True,
            "lat": lat, "lon": lon, "status": str(p.get("status") or ""),
            "online": p.get("online") is True, "job": str(p.get("job") or ""),
            "job_state": str(p.get("job_state") or ""), "stale": p.get("stale") is True,
            "ts": _number(p.get("ts")) or self.ctx.clock.time(),
            "assigned": old.get("assigned"),
        }
        self.vehicles[vid] = v
        self._fleet_dirty = True
        changed = self._crew_report(v)
        if changed or (_usable(v) and not _usable(old)):
            changed = self._assign_waiting() > 0 or changed
        if changed:
            self._publish()

    def _crew_report(self, v: dict[str, Any]) -> bool:
        """Move the vehicle's intervention on from what its crew reports; whether it moved."""
        iid = v.get("assigned")
        rec = self.interventions.get(str(iid)) if iid else None
        if rec is None or rec["state"] in CLOSED:
            if iid:
                v["assigned"] = None  # stale: its intervention is closed or forgotten
            return False
        if v["status"] == "out_of_service":
            self._release(rec)
            rec["notes"] = f"Vehicle {v['id']} went out of service: waiting for another crew."
            self._move(rec, "new")
            return True
        if v["job"] != rec["id"]:
            return False
        rec["job_acked"] = True
        step = _PROGRESS.get(v["job_state"])
        if step is None or step <= _RANK[rec["state"]]:
            return False
        state = STATES[step]
        vid = v["id"]
        rec["notes"] = {"en_route": f"Crew {vid} on its way.",
                        "on_site": f"Crew {vid} on site.",
                        "done": f"Done by crew {vid}."}[state]
        if state == "done":
            v["assigned"] = None
        self._move(rec, state)
        return True

    def _release(self, rec: dict[str, Any]) -> None:
        vid = rec.get("vehicle")
        v = self.vehicles.get(str(vid)) if vid else None
        if v is not None and v.get("assigned") == rec["id"]:
            v["assigned"] = None
            self._fleet_dirty = True
        rec["vehicle"] = None
        rec["job_acked"] = False

    def _available(self, roles: tuple[str, ...]) -> list[dict[str, Any]]:
        now = self.ctx.clock.time()
        return [v for v in self.vehicles.values()
                if v["role"] in roles and _usable(v) and self.excluded.get(v["id"], 0.0) <= now]

    def nearest(self, lat: float, lon: float, roles: tuple[str, ...]) -> dict[str, Any] | None:
        """The nearest available vehicle of one of ``roles`` to ``(lat, lon)``, or None."""
        best: tuple[float, str] | None = None
        chosen: dict[str, Any] | None = None
        for v in self._available(roles):
            key = (_distance_m((lat, lon), (v["lat"], v["lon"])), v["id"])
            if best is None or key < best:
                best, chosen = key, v
        return chosen

    def _assign_waiting(self) -> int:
        """Assign what waits for a vehicle, oldest first; how many were."""
        assigned = 0
        waiting = sorted((r for r in self.interventions.values()
                          if r["state"] == "new" and r["lat"] is not None),
                         key=lambda r: (r["created_ts"], r["id"]))
        for rec in waiting:
            roles = rec.get("roles")
            if not roles:
                try:
                    roles = _catalogue().get(rec["category"]).vehicle_roles
                except KeyError:
                    continue
            v = self.nearest(float(rec["lat"]), float(rec["lon"]), tuple(roles))
            if v is not None:
                self._assign(rec, v)
                assigned += 1
        return assigned

    def _assign(self, rec: dict[str, Any], v: dict[str, Any]) -> None:
        vid = v["id"]
        v["assigned"] = rec["id"]
        self._fleet_dirty = True
        rec["vehicle"] = vid
        rec["assignment"] = int(rec.get("assignment") or 0) + 1
        rec["assigned_ts"] = self.ctx.clock.time()
        rec["job_acked"] = False
        rec["notes"] = f"Assigned to vehicle {vid} ({v['role']})."
        self._send_job(rec)
        if v.get("radio"):
            where = f"{float(rec['lat']):.5f},{float(rec['lon']):.5f}"
            text = f"Job {rec['id']}: {rec['category']} at {where}. {rec['description']}"
            self._send(rec, vid, "msg", "set", {"message": text[:_MAX_TEXT]})
        self._move(rec, "assigned")

    def _send_job(self, rec: dict[str, Any]) -> None:
        rec["sent_ts"] = self.ctx.clock.time()
        self._send(rec, str(rec["vehicle"]), "job", "job",
                   {"job": rec["id"], "job_lat": float(rec["lat"]),
                    "job_lon": float(rec["lon"])})

    def _send(self, rec: Mapping[str, Any], vid: str, what: str, action: str,
              params: dict[str, Any]) -> None:
        command_id = f"{rec['id']}/{what}/{rec.get('assignment') or 0}"
        env = Envelope(target=vid, type="command", sender=DISPATCH, reply_to=DISPATCH,
                       kind=MessageKind.COMMAND,
                       deadline=self.ctx.clock.time() + _COMMAND_DEADLINE_S,
                       payload={"command_id": command_id, "action": action, "params": params,
                                "caller": DISPATCH})
        self._pending[env.id] = (str(rec["id"]), command_id)
        self.ctx.send(env)

    async def on_reply(self, msg: Envelope) -> None:
        """A vehicle carried out a command (or had already: a replay)."""
        iid, command_id = self._pending.pop(msg.correlation_id, ("", ""))
        rec = self.interventions.get(iid)
        if rec is not None and command_id == _job_command(rec):
            rec["job_acked"] = True

    async def on_error(self, msg: Envelope) -> None:
        """A vehicle refused a command: a refused job goes to another crew."""
        iid, command_id = self._pending.pop(msg.correlation_id, ("", ""))
        rec = self.interventions.get(iid)
        if rec is None or command_id != _job_command(rec) or rec["state"] != "assigned":
            return
        p = msg.payload if isinstance(msg.payload, Mapping) else {}
        vid = str(rec["vehicle"])
        self.excluded[vid] = self.ctx.clock.time() + _EXCLUDE_S
        self.ctx.emit("dispatch_refused", intervention=iid, vehicle=vid,
                      error=str(p.get("error") or "refused")[:_MAX_TEXT],
                      municipality=rec["municipality"])
        self._release(rec)
        rec["notes"] = f"Vehicle {vid} could not take the job: waiting for another crew."
        self._move(rec, "new")
        self._assign_waiting()
        self._publish()

    # -- time ------------------------------------------------------------------------------
    async def on_tick(self, msg: Envelope) -> None:
        now = self.ctx.clock.time()
        for vid in [v for v, until in self.excluded.items() if until <= now]:
            del self.excluded[vid]
        for rec in self.interventions.values():
            if (rec["state"] == "assigned" and not rec.get("job_acked")
                    and now - float(rec.get("sent_ts") or 0.0)
                    >= _RESEND_S * self.ctx.clock.speed):
                self._send_job(rec)
        gone = [iid for iid, r in self.interventions.items()
                if r["state"] in CLOSED and now - float(r["updated_ts"]) > RETAIN_CLOSED_S]
        for iid in gone:
            del self.interventions[iid]
        if self._assign_waiting() or gone:
            self._publish()
        if self._fleet_dirty:
            self._publish_fleet()

    # -- state changes and read models ---------------------------------------------------
    def _move(self, rec: dict[str, Any], state: str) -> None:
        rec["state"] = state
        self._changed(rec, state)

    def _changed(self, rec: dict[str, Any], state: str) -> None:
        rec["updated_ts"] = self.ctx.clock.time()
        # A new list each time: a checkpoint's shallow copy of the record must not follow.
        step = {"ts": rec["updated_ts"], "state": state, "vehicle": rec.get("vehicle"),
                "notes": rec.get("notes")}
        rec["timeline"] = [*(rec.get("timeline") or ()), step][-MAX_TIMELINE:]
        self.ctx.emit("intervention", intervention=rec["id"], state=state,
                      vehicle=rec.get("vehicle") or "", request=rec.get("request_id") or "",
                      municipality=rec["municipality"])
        if rec.get("building"):
            # The fire plan's intervention is one of its steps: shown on the fire alarm.
            self.ctx.emit("fire_plan_step", building=rec["building"], alarm="fire",
                          plan=str(rec["id"]).removeprefix("int-"), step="intervention",
                          state=state, detail=f"{rec['id']}: {rec['notes']}")

    def _publish(self) -> None:
        records = [_public(r) for r in self.interventions.values()]
        self.ctx.publish_read_model(READ_MODEL, pack({"ts": self.ctx.clock.time(),
                                                      "interventions": records}))

    def _publish_fleet(self) -> None:
        self._fleet_dirty = False
        self.ctx.publish_read_model(FLEET_READ_MODEL, pack({
            "ts": self.ctx.clock.time(),
            "vehicles": [dict(v, excluded_until=self.excluded.get(v["id"]))
                         for v in self.vehicles.values()]}))


def _usable(v: Mapping[str, Any]) -> bool:
    """Whether a vehicle may take a job now (excluded ones aside): never on a stale position."""
    return bool(v) and v.get("online") is True and v.get("status") == "available" \
        and not v.get("assigned") and not v.get("stale")


def _job_command(rec: Mapping[str, Any]) -> str:
    return f"{rec['id']}/job/{rec.get('assignment') or 0}"


def _fault_text(circuit: str, lamps: list[int]) -> str:
    which = ", ".join(map(str, lamps))
    return f"Lamp{'s' if len(lamps) > 1 else ''} {which} failed on lighting circuit {circuit}."


def _public(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: rec.get(name) for name in PUBLIC_FIELDS}
    # The equipment it is about: a faulty circuit's, a burning building's (none for a request).
    out["equipment"] = rec.get("circuit") or rec.get("building") or None
    out["timeline"] = [dict(step) for step in rec.get("timeline") or ()]
    return out
