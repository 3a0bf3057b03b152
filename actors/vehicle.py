"""A vehicle: its position, service, status and crew, reported to dispatch.

Every vehicle is a bus (inventory ``attrs.line``) or a geo-tracked service
vehicle (``attrs.role``: ``gritter``, ``sweeper``, ``waste``, ``green_areas``,
``fire_safety``, ``police``, ``maintenance``). It publishes under its home
municipality, which scopes who may read and command it; its view also shows
the municipality its position lies in (``municipality_in``, placed by point in
polygon where the view is read, :mod:`runtime.service`).

**Crew messages** (``set`` ``{"message"}``) reach only a vehicle with a radio
(:func:`has_radio`): any other is refused with ``no_radio``, at the API before
journaling (:meth:`Vehicle.validate_command_for`) and by the entity; its
telematics unit would refuse it too.

**Stale positions.** A sample whose own ``ts`` is older than its profile's
``max_age_s`` is flagged stale and its position is not used: the entity keeps
the last usable one (``state.position``), counts the sample
(``stale_samples``) and tells dispatch, which assigns no job on it; a
position that no newer sample replaces within ``max_age_s`` turns stale the
same way (a timer). The age is judged in the machine's seconds: on an
accelerated city clock (``clock.speed`` > 1) the devices still publish at the
machine's cadence, each sample stamped on the city's clock, so consecutive
samples are ``speed`` times further apart in city time than in the profile's
period; the age compared with ``max_age_s`` is therefore ``(city now - ts) /
speed``. A limit in city seconds would flag every position of a 1 Hz bus stale
at a clock speed above ``max_age_s``, and one in the machine's seconds keeps
what it guards (a position a few publications old) the same at any speed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Final

from actors.equipment import EquipmentEntity, Field
from devices.profile import builtin_profile
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, MessageKind
from runtime.errors import (
    ConfigError,
    DeviceUnavailableError,
    InvalidCommandError,
    RejectedError,
)
from runtime.inventory import Equipment

#: The entity id of the dispatch coordinator, to which service vehicles report.
DISPATCH = "dispatch"
#: A service vehicle reports to dispatch at once when its status, job or session
#: changes, otherwise at most this often while it moves, ...
VEHICLE_REPORT_S = 5.0
#: ... and at least this often when nothing changes (a restarted dispatch relearns it).
VEHICLE_KEEPALIVE_S = 60.0
#: Moves shorter than this (GNSS jitter of a parked vehicle) are not worth a report.
_VEHICLE_MOVED_M = 10.0
_M_PER_DEG = 111_320.0
#: What dispatch may set on a service vehicle's telematics unit (action ``job``).
JOB_FIELDS: Mapping[str, Field] = {
    "job": Field(str, max_len=64),
    "job_lat": Field(float, -90, 90),
    "job_lon": Field(float, -180, 180),
}
#: The values of a sample that make its position (dropped from a stale sample).
POSITION: Final = ("lat", "lon", "speed", "heading")


def has_radio(attrs: Mapping[str, Any]) -> bool:
    """Whether a vehicle receives crew messages: ``attrs.radio`` true, or a bus (its
    driver's console) unless ``attrs.radio`` says false."""
    radio = attrs.get("radio")
    if isinstance(radio, bool):
        return radio
    return isinstance(attrs.get("line"), str) and bool(attrs.get("line"))


@functools.lru_cache(maxsize=16)
def max_age_s(profile: str) -> float:
    """The profile's ``max_age_s`` (0: positions never go stale, or no such profile)."""
    try:
        return builtin_profile(profile).max_age_s
    except ConfigError:
        return 0.0


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class Vehicle(EquipmentEntity):
    """A bus or a geo-tracked service vehicle; operators set its crew ``message``.

    A service vehicle (one with a ``role``) is part of the dispatch fleet:

    * it sends entity ``dispatch`` a ``vehicle_state`` message (telemetry kind:
      a full mailbox keeps the latest) with its last usable position and
      whether it is ``stale``, ``status`` (``available``, ``busy``,
      ``out_of_service``), crew progress on its ``job`` (``job_state``:
      ``en_route``, ``on_site``, ``done``), whether its device is online, its
      ``role`` and ``radio``: at once when any of these but the position
      changes, at most every :data:`VEHICLE_REPORT_S` while it moves, at least
      every :data:`VEHICLE_KEEPALIVE_S`;
    * it takes action ``job`` ``{"job", "job_lat", "job_lon"}`` from dispatch
      alone (never from the journal: operators go through the dispatch
      coordinator), written to its telematics unit as desired state, so that
      a vehicle that reconnects gets its job again. The crew then reports
      itself ``busy`` on it, and ``available`` once done: dispatch sets the
      status through the job, the vehicle reports it.

    A bus reports its ``line``, ``direction``, ``next_stop`` and lateness
    against its timetable (``delay_s``, positive when late).
    """

    kind = "vehicle"
    FIELDS = {"message": Field(str, max_len=200)}

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """A crew ``message`` to a vehicle with a radio; nothing to one without."""
        return super().describe_commands(equipment) if has_radio(equipment.attrs) else []

    @classmethod
    def validate_command_for(cls, equipment: Equipment, action: str, params: Mapping[str, Any],
                             *, now: float) -> dict[str, Any]:
        """:meth:`validate_command`, and a crew message to a vehicle without radio refused
        (field ``params.message``, code ``no_radio``)."""
        clean = cls.validate_command(action, params)
        if "message" in clean and not has_radio(equipment.attrs):
            raise InvalidCommandError(_no_radio(equipment.id), field="params.message",
                                      code="no_radio")
        return clean

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        attrs = self.ctx.equipment.attrs
        self._fleet = isinstance(attrs.get("role"), str) and not attrs.get("line")
        self._radio = has_radio(attrs)
        self._max_age_s = max_age_s(self.ctx.equipment.profile)
        self.state.setdefault("stale_samples", 0)
        self._sender = ""
        self._reported: tuple[Any, ...] = ()
        self._reported_at = -math.inf
        self._reported_pos: tuple[float, float] | None = None
        self._arm_staleness()

    async def on_command(self, msg: Envelope) -> dict[str, Any]:
        self._sender = msg.sender
        try:
            return await super().on_command(msg)
        finally:
            self._sender = ""

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action != "job":
            if action == "set" and "message" in params and not self._radio:
                raise RejectedError(_no_radio(self.ctx.id), code="no_radio")
            return await super().apply_command(action, params)
        if self._sender != DISPATCH or not self._fleet:
            raise RejectedError(f"{self.ctx.id} takes jobs from dispatch only",
                                code="unknown_action")
        clean: dict[str, Any] = {}
        for name, spec in JOB_FIELDS.items():
            if name not in params:
                raise RejectedError(f"a job needs {name}", code="bad_value")
            clean[name] = spec.check(name, params[name])
        self.twin.desired.update(clean)
        port = self.ctx.device
        if port is None:
            return {"desired": clean}
        try:
            writes = await self.device_writes(port, clean)
            confirmed = await port.write(writes, command_id=self.current_command)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": clean, "device": dict(confirmed)}

    # -- position and its age -------------------------------------------------------------
    def age_s(self, ts: float) -> float:
        """How old a sample stamped ``ts`` (city time) is, in the machine's seconds."""
        clock = self.ctx.clock
        return (clock.time() - ts) / (clock.speed or 1.0)

    async def on_telemetry(self, msg: Envelope) -> None:
        p = msg.payload
        values = p.get("values") if isinstance(p, Mapping) else None
        ts = _number(p.get("ts")) if isinstance(p, Mapping) else None
        if isinstance(values, Mapping) and ts is not None and ts > 0:
            lat, lon = _number(values.get("lat")), _number(values.get("lon"))
            if self._max_age_s > 0 and self.age_s(ts) > self._max_age_s:
                # Too old to use: the rest of the sample (status, job) still counts.
                self.state["stale_samples"] = int(self.state.get("stale_samples", 0)) + 1
                msg = dataclasses.replace(msg, payload={
                    **p, "values": {k: v for k, v in values.items() if k not in POSITION}})
                self._mark_stale()
            elif lat is not None and lon is not None and ts >= self._position_ts():
                self.state["position"] = {"lat": lat, "lon": lon, "ts": ts, "stale": False}
                self._arm_staleness()
        await super().on_telemetry(msg)
        if self._fleet:
            self._report_to_dispatch()

    def _position_ts(self) -> float:
        position = self.state.get("position")
        return float(position["ts"]) if isinstance(position, Mapping) else 0.0

    def _mark_stale(self) -> None:
        position = self.state.get("position")
        if isinstance(position, Mapping) and not position.get("stale"):
            self.state["position"] = {**position, "stale": True}
            self.ctx.emit("position_stale", age_s=round(self.age_s(float(position["ts"])), 1),
                          max_age_s=self._max_age_s)

    def _arm_staleness(self) -> None:
        position = self.state.get("position")
        if self._max_age_s <= 0 or not isinstance(position, Mapping) or position.get("stale"):
            return
        left = self._max_age_s - self.age_s(float(position["ts"]))
        # The timer runs on the city's clock: the machine's seconds left, times its speed.
        self.ctx.start_timer("stale", max(0.0, left) * (self.ctx.clock.speed or 1.0) + 1e-3,
                             "position_due")

    async def on_position_due(self, msg: Envelope) -> None:
        """No newer sample came: the last position turns stale once it is too old."""
        position = self.state.get("position")
        if not isinstance(position, Mapping) or position.get("stale"):
            return
        if self.age_s(float(position["ts"])) > self._max_age_s:
            self._mark_stale()
            if self._fleet:
                self._report_to_dispatch()
        else:
            self._arm_staleness()

    def view_extras(self) -> dict[str, Any]:
        out = super().view_extras()
        attrs = self.ctx.equipment.attrs
        out["radio"] = self._radio
        service = attrs.get("role") if self._fleet else "bus" if attrs.get("line") else None
        if isinstance(service, str):
            out["service"] = service
        position = self.state.get("position")
        if isinstance(position, Mapping):
            out["position"] = dict(position)
        return out

    # -- to dispatch ----------------------------------------------------------------------
    async def on_device_status(self, msg: Envelope) -> None:
        await super().on_device_status(msg)
        if self._fleet:
            self._report_to_dispatch()

    def _report_to_dispatch(self) -> None:
        position = self.state.get("position")
        if not isinstance(position, Mapping):
            return  # no usable position yet: nothing dispatch could use
        lat, lon = float(position["lat"]), float(position["lon"])
        stale = bool(position.get("stale"))
        reported = {k: v.value for k, v in self.twin.reported.items()}
        status = reported.get("status")
        online = bool(self.state.get("online"))
        key = (status, reported.get("job"), reported.get("job_state"), online, stale)
        now = self.ctx.clock.time()
        since = now - self._reported_at
        if key == self._reported:
            if since < VEHICLE_REPORT_S:
                return
            last = self._reported_pos
            moved = last is None or _moved_m(last, (lat, lon)) >= _VEHICLE_MOVED_M
            if not moved and since < VEHICLE_KEEPALIVE_S:
                return
        self._reported, self._reported_at = key, now
        self._reported_pos = (lat, lon)
        attrs = self.ctx.equipment.attrs
        self.ctx.send(Envelope(
            target=DISPATCH, type="vehicle_state", sender=self.ctx.id,
            kind=MessageKind.TELEMETRY,
            payload={"ts": now, "municipality": self.ctx.equipment.municipality,
                     "role": str(attrs.get("role")), "radio": self._radio,
                     "lat": lat, "lon": lon, "stale": stale,
                     "status": status if isinstance(status, str) else "",
                     "job": str(reported.get("job") or ""),
                     "job_state": str(reported.get("job_state") or ""), "online": online}))


def _no_radio(eid: str) -> str:
    return f"{eid} has no radio: a crew message cannot reach it"


def _moved_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """A short distance in metres (flat-earth: only compared with a few metres)."""
    dy = (b[0] - a[0]) * _M_PER_DEG
    dx = (b[1] - a[1]) * _M_PER_DEG * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)
