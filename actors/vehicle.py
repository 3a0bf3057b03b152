"""A vehicle: its position, status and job, reported to dispatch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from actors.equipment import EquipmentEntity, Field
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, MessageKind
from runtime.errors import DeviceUnavailableError, RejectedError

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


class Vehicle(EquipmentEntity):
    """A bus or a geo-tracked service vehicle; operators set its crew ``message``.

    A service vehicle (one with a ``role``) is part of the dispatch fleet:

    * it sends entity ``dispatch`` a ``vehicle_state`` message (telemetry kind:
      a full mailbox keeps the latest) with its position, ``status``
      (``available``, ``busy``, ``out_of_service``), crew progress on its
      ``job`` (``job_state``: ``en_route``, ``on_site``, ``done``), whether
      its device is online, its ``role`` and ``radio``: at once when any of
      these but the position changes, at most every :data:`VEHICLE_REPORT_S`
      while it moves, at least every :data:`VEHICLE_KEEPALIVE_S`;
    * it takes action ``job`` ``{"job", "job_lat", "job_lon"}`` from dispatch
      alone (never from the journal: operators go through the dispatch
      coordinator), written to its telematics unit as desired state, so that
      a vehicle that reconnects gets its job again.
    """

    kind = "vehicle"
    FIELDS = {"message": Field(str, max_len=200)}

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        attrs = self.ctx.equipment.attrs
        self._fleet = isinstance(attrs.get("role"), str) and not attrs.get("line")
        self._sender = ""
        self._reported: tuple[Any, ...] = ()
        self._reported_at = -math.inf
        self._reported_pos: tuple[float, float] | None = None

    async def on_command(self, msg: Envelope) -> dict[str, Any]:
        self._sender = msg.sender
        try:
            return await super().on_command(msg)
        finally:
            self._sender = ""

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action != "job":
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

    async def on_telemetry(self, msg: Envelope) -> None:
        await super().on_telemetry(msg)
        if self._fleet:
            self._report_to_dispatch()

    async def on_device_status(self, msg: Envelope) -> None:
        await super().on_device_status(msg)
        if self._fleet:
            self._report_to_dispatch()

    def _report_to_dispatch(self) -> None:
        reported = {k: v.value for k, v in self.twin.reported.items()}
        lat, lon = reported.get("lat"), reported.get("lon")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
            return  # no position yet: nothing dispatch could use
        assert isinstance(lat, int | float) and isinstance(lon, int | float)
        status = reported.get("status")
        online = bool(self.state.get("online"))
        key = (status, reported.get("job"), reported.get("job_state"), online)
        now = self.ctx.clock.time()
        since = now - self._reported_at
        if key == self._reported:
            if since < VEHICLE_REPORT_S:
                return
            last = self._reported_pos
            moved = last is None or _moved_m(last, (float(lat), float(lon))) >= _VEHICLE_MOVED_M
            if not moved and since < VEHICLE_KEEPALIVE_S:
                return
        self._reported, self._reported_at = key, now
        self._reported_pos = (float(lat), float(lon))
        attrs = self.ctx.equipment.attrs
        self.ctx.send(Envelope(
            target=DISPATCH, type="vehicle_state", sender=self.ctx.id,
            kind=MessageKind.TELEMETRY,
            payload={"ts": now, "municipality": self.ctx.equipment.municipality,
                     "role": str(attrs.get("role")), "radio": attrs.get("radio") is True,
                     "lat": float(lat), "lon": float(lon),
                     "status": status if isinstance(status, str) else "",
                     "job": str(reported.get("job") or ""),
                     "job_state": str(reported.get("job_state") or ""), "online": online}))


def _moved_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """A short distance in metres (flat-earth: only compared with a few metres)."""
    dy = (b[0] - a[0]) * _M_PER_DEG
    dx = (b[1] - a[1]) * _M_PER_DEG * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)
