"""Simulated access terminals with retractable bollards (profile ``access_terminal``).

Writing ``request`` = ``raise`` or ``lower`` moves the bollard through ``moving``
for :data:`TRAVEL_S` to ``up`` or ``down``; the terminal then resets ``request``
to ``none``. A request while the bollard moves is refused with Modbus exception
6 (device busy); any request while the controller fault bit is set with
exception 4. Faults (control channel): ``controller`` sets fault bit 0;
``forced`` is a forced passage: bit 1 set (held until cleared) and, a raised
bollard having been driven down, the bollard reported ``down``.
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

__all__ = ["CONTROLLER_FAULT", "FORCED_PASSAGE", "TRAVEL_S", "AccessModel", "AccessSimulator"]

TRAVEL_S: Final = 3.0
#: Fault bits (profile ``access_terminal``): a controller fault, a forced passage.
CONTROLLER_FAULT: Final = 0x0001
FORCED_PASSAGE: Final = 0x0002


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
        if self.fault_bits & CONTROLLER_FAULT:
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
        return ("controller", "forced")

    def apply_fault(self, equipment_id: str, name: str, on: bool) -> None:
        """``controller``: fault bit 0; ``forced``: a forced passage (bit 1, and a raised
        bollard driven down). Clearing one clears its bit."""
        model = self.model(equipment_id)
        bit = CONTROLLER_FAULT if name == "controller" else FORCED_PASSAGE
        model.fault_bits = model.fault_bits | bit if on else model.fault_bits & ~bit
        if name == "forced" and on and model.target is None:
            model.bollard = "down"

    def set_fault_bits(self, equipment_id: str, bits: int) -> None:
        """Raise (or clear, with 0) fault bits of a terminal."""
        self.model(equipment_id).fault_bits = bits
        self.counters.faults_injected += bits != 0
