"""Simulated access terminals with retractable bollards (profile ``access_terminal``).

Writing ``request`` = ``raise`` or ``lower`` moves the bollard through ``moving``
for :data:`TRAVEL_S` to ``up`` or ``down``; the terminal then resets ``request``
to ``none``. A request while the bollard moves is refused with Modbus exception
6 (device busy); any request while a fault bit is set with exception 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from devices.profile import Profile, builtin_profile
from devices.sim import (
    EXC_DEVICE_BUSY,
    EXC_DEVICE_FAILURE,
    EXC_ILLEGAL_VALUE,
    DeviceModel,
    ModbusSimulator,
)
from runtime.clock import Clock
from runtime.inventory import Equipment

__all__ = ["TRAVEL_S", "AccessModel", "AccessSimulator"]

TRAVEL_S: Final = 3.0


class AccessModel(DeviceModel):
    """One terminal and its bollard."""

    def __init__(self, travel_s: float = TRAVEL_S) -> None:
        self.travel_s = travel_s
        self.bollard = "down"
        self.request = "none"
        self.target: str | None = None
        self.left = 0.0
        self.fault_bits = 0
        self.moves = 0

    def values(self) -> dict[str, Any]:
        return {
            "bollard": "moving" if self.target is not None else self.bollard,
            "request": self.request,
            "fault_bits": self.fault_bits,
        }

    def apply(self, block: str | None, index: int, name: str, value: Any) -> int | None:
        if name != "request":
            return EXC_ILLEGAL_VALUE
        if value == "none":
            return EXC_DEVICE_BUSY if self.target is not None else None
        if self.fault_bits:
            return EXC_DEVICE_FAILURE
        if self.target is not None:
            return EXC_DEVICE_BUSY
        goal = "up" if value == "raise" else "down"
        if goal == self.bollard:
            self.request = "none"
            return None
        self.request, self.target, self.left = str(value), goal, self.travel_s
        return None

    def advance(self, dt: float) -> None:
        if self.target is None:
            return
        self.left -= dt
        if self.left <= 1e-9:
            self.bollard, self.target, self.request = self.target, None, "none"
            self.moves += 1


class AccessSimulator(ModbusSimulator[AccessModel]):
    """Access terminals of the inventory, ticking at 10 Hz by default."""

    kind = "access_terminal"

    def __init__(
        self,
        equipment: Sequence[Equipment],
        profile: Profile | None = None,
        *,
        clock: Clock | None = None,
        tick_hz: float = 10.0,
        autotick: bool = True,
        travel_s: float = TRAVEL_S,
    ) -> None:
        self.travel_s = travel_s
        super().__init__(
            equipment,
            profile or builtin_profile("access_terminal"),
            clock=clock,
            tick_hz=tick_hz,
            autotick=autotick,
        )

    def make_model(self, equipment: Equipment) -> AccessModel:
        return AccessModel(self.travel_s)

    def fault_names(self) -> tuple[str, ...]:
        return ("controller",)

    def apply_fault(self, equipment_id: str, name: str, on: bool) -> None:
        """``controller``: fault bit 1 raised (or every bit cleared)."""
        self.model(equipment_id).fault_bits = 1 if on else 0

    def set_fault_bits(self, equipment_id: str, bits: int) -> None:
        """Raise (or clear, with 0) fault bits of a terminal."""
        self.model(equipment_id).fault_bits = bits
        self.counters.faults_injected += bits != 0
