"""Simulated street lighting cabinets (profile ``lighting_cabinet``).

Each lamp draws ``nominal_w * dim / 100`` watts while on (and the mains is up),
its energy counter integrates that power, and it fails at random at
``failure_rate_per_h`` (probability per lamp and hour): a failed lamp sets
fault bit :data:`LAMP_FAILED` and draws nothing. Dimming and switching come
from clients' writes to a lamp's ``on`` and ``dim``, or to ``broadcast_on`` and
``broadcast_dim``, which set every lamp of the cabinet at once.

**Timed steps.** A client may arm one step (``step_at``, epoch seconds of the
city's time, with ``step_on`` and ``step_dim``): the cabinet sets every lamp to
it by itself at that instant, as a cabinet's astronomical clock takes a
schedule's steps, and reads back ``step_taken_at``. Between the simulator's
ticks a cabinet is brought up to the time of any read or write first, so a step
is taken at its time (the energy integrated on each side of it), and one armed
for a time already past is taken as it arrives. A write to the lamps (broadcast
or one lamp) cancels the step pending. Each lamp a step sets counts as a write
to it (a repeat when it held the value), as a broadcast's lamps do.

A cabinet's lamps draw ``attrs.lamp_w`` at full power when the inventory says
so. The simulator keeps its own integral of each cabinet's lamp power
(``burnt_wh``, never reset nor wrapped), the city time of the last writes
to its lamps it took (``write_ts``) and of the last timed steps it took
(``step_ts``), under ``sim`` in the control channel's ``/values/{id}``; the
faults ``counter_reset`` (every lamp's ``energy_wh`` back to 0) and
``counter_wrap`` (every counter :data:`WRAP_HEADROOM_WH` short of 2^32, so that
it wraps around soon) try the meter's arithmetic.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from devices.profile import Profile, builtin_profile
from devices.sim import EXC_ILLEGAL_VALUE, DeviceModel, ModbusSimulator, _Device
from runtime.clock import Clock
from runtime.inventory import Equipment

__all__ = ["LAMP_FAILED", "WRAP_HEADROOM_WH", "Lamp", "LightingModel", "LightingSimulator"]

#: A LED lamp's failure rate (per lamp and hour): half a percent a year, as a city's
#: LED stock fails; tests raise failures through the control channel.
LAMP_FAILURES_PER_H: Final = 0.005 / 8766.0
#: Fault bit of a lamp that has failed.
LAMP_FAILED: Final = 0x0001
#: How far below 2^32 the ``counter_wrap`` fault sets each lamp's energy counter (Wh): a
#: few hours of a lamp, so that a poll sees the counter high before it wraps.
WRAP_HEADROOM_WH: Final = 200
#: The registers of a timed step: a setting, not a write to the lamps.
_STEP_FIELDS: Final = frozenset({"step_at", "step_on", "step_dim"})
#: Write times a cabinet remembers for the control channel.
_WRITE_STAMPS: Final = 256


@dataclass(slots=True)
class Lamp:
    """One lighting point."""

    on: bool = True
    dim: int = 100
    power_w: float = 0.0
    energy_wh: float = 0.0
    fault_bits: int = 0


class LightingModel(DeviceModel):
    """One cabinet and its lamps."""

    def __init__(
        self, lamps: int, *, nominal_w: float, failure_rate_per_h: float, rng: random.Random,
        now: float = 0.0,
    ) -> None:
        self.nominal_w = nominal_w
        self.failure_rate_per_h = failure_rate_per_h
        self.rng = rng
        self.mains_ok = True
        self.door_open = False
        self.earth_fault = False
        self.lamps = [Lamp() for _ in range(lamps)]
        self.broadcast_on = True
        self.broadcast_dim = 100
        self.failures = 0
        self.burnt_wh = 0.0
        self.counter_resets = 0
        self.counter_wraps = 0
        self.write_ts: deque[float] = deque(maxlen=_WRITE_STAMPS)
        # The timed step pending (step_at 0: none), and when the cabinet took the last one.
        self.step_at = 0
        self.step_on = True
        self.step_dim = 100
        self.step_taken_at = 0
        self.step_ts: deque[float] = deque(maxlen=_WRITE_STAMPS)
        # Steps taken and not yet counted by the simulator: (at, lamps changed, unchanged).
        self.taken: list[tuple[float, int, int]] = []
        self.lamps_written = False  # by the write request being applied
        # The city time the lamps' energy is integrated to, and where the ticks have got.
        self.t = now
        self._ticked = now
        self._update_power()

    def values(self) -> dict[str, Any]:
        return {
            "mains_ok": self.mains_ok,
            "door_open": self.door_open,
            "earth_fault": self.earth_fault,
            "broadcast_on": self.broadcast_on,
            "broadcast_dim": self.broadcast_dim,
            "step_at": self.step_at,
            "step_on": self.step_on,
            "step_dim": self.step_dim,
            "step_taken_at": self.step_taken_at,
            "lamp": [
                {
                    "on": lamp.on,
                    "dim": lamp.dim,
                    "power_w": round(lamp.power_w, 1),
                    "energy_wh": int(lamp.energy_wh) & 0xFFFF_FFFF,
                    "fault_bits": lamp.fault_bits,
                }
                for lamp in self.lamps
            ],
        }

    def fanout(self, block: str | None, index: int, name: str,
               value: Any) -> tuple[int, int] | None:
        if block is not None or name not in ("broadcast_on", "broadcast_dim"):
            return None
        field = name.removeprefix("broadcast_")
        want = bool(value) if field == "on" else int(value)
        changed = sum(1 for lamp in self.lamps if getattr(lamp, field) != want)
        return changed, len(self.lamps) - changed

    def counts_as_write(self, block: str | None, name: str) -> bool:
        return not (block is None and name in _STEP_FIELDS)

    def apply(self, block: str | None, index: int, name: str, value: Any) -> int | None:
        if block is None and name in _STEP_FIELDS:
            setattr(self, name, bool(value) if name == "step_on" else int(value))
            return None
        self.step_at = 0  # the lamps written: the step pending gives way
        self.lamps_written = True
        if block is None and name == "broadcast_on":
            self.broadcast_on = bool(value)
            for lamp in self.lamps:
                lamp.on = self.broadcast_on
        elif block is None and name == "broadcast_dim":
            self.broadcast_dim = int(value)
            for lamp in self.lamps:
                lamp.dim = self.broadcast_dim
        else:
            return self._apply_lamp(block, index, name, value)
        self._update_power()
        return None

    def _apply_lamp(self, block: str | None, index: int, name: str, value: Any) -> int | None:
        if block != "lamp" or not 0 <= index < len(self.lamps):
            return EXC_ILLEGAL_VALUE
        lamp = self.lamps[index]
        if name == "on":
            lamp.on = bool(value)
        elif name == "dim":
            lamp.dim = int(value)
        else:
            return EXC_ILLEGAL_VALUE
        self._update_power()
        return None

    def fail(self, index: int) -> None:
        """Make lamp ``index`` fail now."""
        lamp = self.lamps[index]
        if not lamp.fault_bits & LAMP_FAILED:
            self.failures += 1
        lamp.fault_bits |= LAMP_FAILED
        self._update_power()

    def _update_power(self) -> None:
        for lamp in self.lamps:
            lit = lamp.on and self.mains_ok and not lamp.fault_bits & LAMP_FAILED
            lamp.power_w = self.nominal_w * lamp.dim / 100.0 if lit else 0.0

    def advance(self, dt: float) -> None:
        """A tick: ``dt`` more seconds of the city's time (steps taken at their instant)."""
        self._ticked += dt
        self.advance_to(self._ticked)

    def advance_to(self, t: float) -> None:
        """Bring the cabinet to city time ``t``: the steps due by then taken at their time
        (one armed for a time already past, at once), the energy integrated between."""
        while self.step_at and self.step_at <= t:
            at = max(float(self.step_at), self.t)
            self._integrate(at - self.t)
            self.t = at
            want = (self.step_on, self.step_dim)
            changed = sum(1 for lamp in self.lamps if (lamp.on, lamp.dim) != want)
            for lamp in self.lamps:
                lamp.on, lamp.dim = want
            self.broadcast_on, self.broadcast_dim = want
            self.step_taken_at, self.step_at = self.step_at, 0
            self.step_ts.append(at)
            self.taken.append((at, changed, len(self.lamps) - changed))
            self._update_power()
        if t > self.t:
            self._integrate(t - self.t)
            self.t = t

    def _integrate(self, dt: float) -> None:
        if self.failure_rate_per_h > 0 and dt > 0:
            p = 1.0 - math.exp(-self.failure_rate_per_h * dt / 3600.0)
            for index, lamp in enumerate(self.lamps):
                if not lamp.fault_bits & LAMP_FAILED and self.rng.random() < p:
                    self.fail(index)
        self._update_power()
        for lamp in self.lamps:
            lamp.energy_wh += lamp.power_w * dt / 3600.0
            self.burnt_wh += lamp.power_w * dt / 3600.0

    def reset_counters(self) -> None:
        """Every lamp's energy counter back to 0 (a replaced meter, a cabinet reset)."""
        for lamp in self.lamps:
            lamp.energy_wh = 0.0
        self.counter_resets += 1

    def near_wrap(self) -> None:
        """Every lamp's energy counter :data:`WRAP_HEADROOM_WH` short of 2^32."""
        for lamp in self.lamps:
            lamp.energy_wh = float((1 << 32) - WRAP_HEADROOM_WH)
        self.counter_wraps += 1


class LightingSimulator(ModbusSimulator[LightingModel]):
    """Lighting cabinets of the inventory's lighting circuits, ticking at 1 Hz by default.

    ``seed`` makes lamp failures reproducible (each cabinet draws from its own
    generator seeded by ``seed`` and its id).
    """

    kind = "lighting_circuit"

    def __init__(
        self,
        equipment: Sequence[Equipment],
        profile: Profile | None = None,
        *,
        clock: Clock | None = None,
        tick_hz: float = 1.0,
        autotick: bool = True,
        nominal_w: float = 100.0,
        failure_rate_per_h: float = LAMP_FAILURES_PER_H,
        seed: int = 0,
    ) -> None:
        self.nominal_w = nominal_w
        self.failure_rate_per_h = failure_rate_per_h
        self.seed = seed
        super().__init__(
            equipment,
            profile or builtin_profile("lighting_cabinet"),
            clock=clock,
            tick_hz=tick_hz,
            autotick=autotick,
        )

    def make_model(self, equipment: Equipment) -> LightingModel:
        lamp_w = equipment.attrs.get("lamp_w", self.nominal_w)
        return LightingModel(
            self.profile.count("lamp", equipment.attrs),
            nominal_w=float(lamp_w) if isinstance(lamp_w, int | float) else self.nominal_w,
            failure_rate_per_h=self.failure_rate_per_h,
            rng=random.Random(f"{self.seed}:{equipment.id}"),
            now=self.clock.time(),
        )

    def fault_names(self) -> tuple[str, ...]:
        return ("mains", "door", "earth_fault", "lamp", "counter_reset", "counter_wrap")

    def apply_fault(self, equipment_id: str, name: str, on: bool) -> None:
        """``mains`` lost, cabinet ``door`` open, ``earth_fault``, lamp 1 failed, or the
        energy counters reset to 0 or set to wrap around soon (``on`` only)."""
        model = self.model(equipment_id)
        if name in ("counter_reset", "counter_wrap"):
            if on:
                (model.reset_counters if name == "counter_reset" else model.near_wrap)()
            return
        if name == "lamp":
            if on:
                model.fail(0)
            else:
                model.lamps[0].fault_bits &= ~LAMP_FAILED
                model._update_power()
            return
        if name == "mains":
            self.set_cabinet(equipment_id, mains_ok=not on)
        elif name == "door":
            self.set_cabinet(equipment_id, door_open=on)
        else:
            self.set_cabinet(equipment_id, earth_fault=on)

    def fail_lamp(self, equipment_id: str, index: int) -> None:
        """Make one lamp of a cabinet fail now."""
        self.model(equipment_id).fail(index)
        self.counters.faults_injected += 1

    def set_cabinet(
        self,
        equipment_id: str,
        *,
        mains_ok: bool | None = None,
        door_open: bool | None = None,
        earth_fault: bool | None = None,
    ) -> None:
        """Change the cabinet's own state (mains, door, earth fault)."""
        model = self.model(equipment_id)
        for name, value in (
            ("mains_ok", mains_ok),
            ("door_open", door_open),
            ("earth_fault", earth_fault),
        ):
            if value is not None:
                setattr(model, name, value)
        model._update_power()
        self.counters.faults_injected += 1

    def held_values(self, device_id: str) -> dict[str, Any]:
        """The values the cabinet holds, and under ``sim`` what the simulator knows of it:
        ``burnt_wh`` (its lamps' power integrated), ``counter_resets``, ``counter_wraps``,
        ``failed`` (lamps failed) and ``write_ts`` (city time of its last writes)."""
        model = self._device_checked(device_id).model
        return {**model.values(), "sim": {
            "burnt_wh": model.burnt_wh, "counter_resets": model.counter_resets,
            "counter_wraps": model.counter_wraps,
            "failed": sum(1 for lamp in model.lamps if lamp.fault_bits & LAMP_FAILED),
            "write_ts": list(model.write_ts), "step_ts": list(model.step_ts)}}

    async def tick(self, dt: float) -> None:
        await super().tick(dt)
        for device in self._devices.values():
            self._count_steps(device)

    def before_access(self, device: _Device[LightingModel]) -> None:
        """A read or a write finds the cabinet at the city's time: a step due is taken."""
        model = device.model
        if model.step_at:
            now = self.clock.time()
            if model.step_at <= now:
                model.advance_to(now)
                self._count_steps(device)
                device.stale = True

    def _count_steps(self, device: _Device[LightingModel]) -> None:
        model = device.model
        for _, changed, unchanged in model.taken:
            for n, points_changed in ((changed, True), (unchanged, False)):
                for _ in range(n):
                    device.counters.write(points_changed)
        model.taken.clear()

    def _write(self, device: _Device[LightingModel], address: int,
               values: list[int], arrived: float) -> int | None:
        model = device.model
        model.lamps_written = False
        refused = super()._write(device, address, values, arrived)
        if refused is None:
            if model.lamps_written:
                model.write_ts.append(self.clock.time())
            self.before_access(device)  # a step armed for a time already past: taken now
        return refused
