"""Simulated street lighting cabinets (profile ``lighting_cabinet``).

Each lamp draws ``nominal_w * dim / 100`` watts while on (and the mains is up),
its energy counter integrates that power, and it fails at random at
``failure_rate_per_h`` (probability per lamp and hour): a failed lamp sets
fault bit :data:`LAMP_FAILED` and draws nothing. Dimming and switching come
from clients' writes to a lamp's ``on`` and ``dim``, or to ``broadcast_on`` and
``broadcast_dim``, which set every lamp of the cabinet at once.

A cabinet's lamps draw ``attrs.lamp_w`` at full power when the inventory says
so. The simulator keeps its own integral of each cabinet's lamp power
(``burnt_wh``, never reset nor wrapped) and the city time of the last writes
it took (``write_ts``), both under ``sim`` in the control channel's
``/values/{id}``; the faults ``counter_reset`` (every lamp's ``energy_wh``
back to 0) and ``counter_wrap`` (every counter :data:`WRAP_HEADROOM_WH` short
of 2^32, so that it wraps around soon) try the meter's arithmetic.
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
        self, lamps: int, *, nominal_w: float, failure_rate_per_h: float, rng: random.Random
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
        self._update_power()

    def values(self) -> dict[str, Any]:
        return {
            "mains_ok": self.mains_ok,
            "door_open": self.door_open,
            "earth_fault": self.earth_fault,
            "broadcast_on": self.broadcast_on,
            "broadcast_dim": self.broadcast_dim,
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

    def apply(self, block: str | None, index: int, name: str, value: Any) -> int | None:
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
            "write_ts": list(model.write_ts)}}

    def _write(self, device: _Device[LightingModel], address: int,
               values: list[int], arrived: float) -> int | None:
        refused = super()._write(device, address, values, arrived)
        if refused is None:
            device.model.write_ts.append(self.clock.time())
        return refused
