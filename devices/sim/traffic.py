"""Simulated traffic light controllers (profile ``traffic_controller``).

Each controller runs a fixed cycle of five phases, four vehicle approaches and
a pedestrian phase: green (at least :data:`MIN_GREEN_S`, as long as the plan
says), amber :data:`AMBER_S`, all-red :data:`ALL_RED_S`. The ``phase`` register
shows the phase in green or amber and 0 during all-red, flashing and off.

A priority request names an approach (1..8; approach ``a`` is served by phase
``(a - 1) % 4 + 1``). In ``auto`` mode the controller extends the green of that
phase (by :data:`PRIORITY_EXTEND_S`, at most to :data:`MAX_GREEN_S`) or ends the
current green as soon as its minimum has run and goes to that phase next;
``priority_status`` reports ``granted``, then ``served`` (and the request is
cleared) when the phase has had its green. A request in another mode, or while
another approach's request is pending, is ``refused``.

Unsafe commands are answered by a Modbus exception: a plan outside 1..32 (3,
checked by the profile's range), ``off`` straight to ``auto``/``manual``
without ``flashing`` first (3), leaving ``flashing``/``off`` while a fault bit
is set (4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from devices.profile import Profile, builtin_profile
from devices.sim import EXC_DEVICE_FAILURE, EXC_ILLEGAL_VALUE, DeviceModel, ModbusSimulator
from runtime.clock import Clock
from runtime.inventory import Equipment

__all__ = [
    "ALL_RED_S",
    "AMBER_S",
    "MAX_GREEN_S",
    "MIN_GREEN_S",
    "PEDESTRIAN_PHASE",
    "PRIORITY_EXTEND_S",
    "TrafficModel",
    "TrafficSimulator",
    "green_s",
]

AMBER_S: Final = 3.0
ALL_RED_S: Final = 2.0
MIN_GREEN_S: Final = 5.0
MAX_GREEN_S: Final = 60.0
PRIORITY_EXTEND_S: Final = 10.0
PEDESTRIAN_PHASE: Final = 5
_PHASES: Final = (1, 2, 3, 4, PEDESTRIAN_PHASE)


def green_s(plan: int, phase: int) -> float:
    """Green time of ``phase`` under ``plan``: plans 1..32 lengthen the vehicle greens."""
    if phase == PEDESTRIAN_PHASE:
        return 8.0
    return 10.0 + ((plan - 1) % 8) * 2.5


class TrafficModel(DeviceModel):
    """One controller's state machine (see the module docstring)."""

    def __init__(self) -> None:
        self.plan = 1
        self.mode = "auto"
        self.phase = 1
        self.stage = "green"  # green, amber, all_red
        self.stage_left = green_s(self.plan, self.phase)
        self.green_elapsed = 0.0
        self.next_phase: int | None = None  # a priority jump
        self.priority_request = 0
        self.priority_status = "idle"
        self.priority_phase: int | None = None
        self.fault_bits = 0
        self.greens = 0  # greens started, for tests and demos

    def values(self) -> dict[str, Any]:
        shown = self.phase if self.mode in ("auto", "manual") and self.stage != "all_red" else 0
        return {
            "phase": shown,
            "plan": self.plan,
            "mode": self.mode,
            "priority_request": self.priority_request,
            "priority_status": self.priority_status,
            "fault_bits": self.fault_bits,
        }

    def apply(self, block: str | None, index: int, name: str, value: Any) -> int | None:
        if name == "plan":
            self.plan = int(value)
            return None
        if name == "mode":
            return self._set_mode(str(value))
        if name == "priority_request":
            self._request(int(value))
            return None
        return EXC_ILLEGAL_VALUE

    def _set_mode(self, mode: str) -> int | None:
        if mode == self.mode:
            return None
        running = mode in ("auto", "manual")
        if running and self.mode == "off":
            return EXC_ILLEGAL_VALUE
        if running and self.mode == "flashing" and self.fault_bits:
            return EXC_DEVICE_FAILURE
        if running and self.mode not in ("auto", "manual"):
            # A safe start: all-red first, then the first phase.
            self.phase, self.stage, self.stage_left = _PHASES[-1], "all_red", ALL_RED_S
        if mode != "auto":
            self._drop_priority("refused" if self.priority_request else "idle")
        self.mode = mode
        return None

    def _drop_priority(self, status: str) -> None:
        self.priority_phase = self.next_phase = None
        self.priority_status = status

    def _request(self, approach: int) -> None:
        self.priority_request = approach
        if approach == 0:
            self._drop_priority("idle")
            return
        target = (approach - 1) % 4 + 1
        if self.mode != "auto" or (
            self.priority_phase is not None and self.priority_phase != target
        ):
            self.priority_status = "refused"
            return
        self.priority_phase = target
        self.priority_status = "granted"
        if self.stage == "green" and self.phase == target:
            self.stage_left = min(
                self.stage_left + PRIORITY_EXTEND_S, MAX_GREEN_S - self.green_elapsed
            )
            return
        self.next_phase = target
        if self.stage == "green":
            self.stage_left = min(self.stage_left, max(0.0, MIN_GREEN_S - self.green_elapsed))

    def advance(self, dt: float) -> None:
        if self.mode != "auto":
            return  # manual holds the current stage; flashing and off show no phase
        while dt > 0:
            step = min(dt, self.stage_left)
            dt -= step
            self.stage_left -= step
            if self.stage == "green":
                self.green_elapsed += step
            if self.stage_left <= 1e-9:
                self._next_stage()

    def _next_stage(self) -> None:
        if self.stage == "green":
            if self.priority_phase == self.phase and self.next_phase is None:
                self.priority_request = 0
                self._drop_priority("served")
            self.stage, self.stage_left = "amber", AMBER_S
        elif self.stage == "amber":
            self.stage, self.stage_left = "all_red", ALL_RED_S
        else:
            if self.next_phase is not None:
                self.phase, self.next_phase = self.next_phase, None
            else:
                self.phase = _PHASES[(_PHASES.index(self.phase) + 1) % len(_PHASES)]
            self.stage, self.green_elapsed = "green", 0.0
            self.stage_left = green_s(self.plan, self.phase)
            self.greens += 1


class TrafficSimulator(ModbusSimulator[TrafficModel]):
    """Traffic controllers of the inventory's crossroads, ticking at 10 Hz by default."""

    kind = "crossroad"

    def __init__(
        self,
        equipment: Sequence[Equipment],
        profile: Profile | None = None,
        *,
        clock: Clock | None = None,
        tick_hz: float = 10.0,
        autotick: bool = True,
    ) -> None:
        super().__init__(
            equipment,
            profile or builtin_profile("traffic_controller"),
            clock=clock,
            tick_hz=tick_hz,
            autotick=autotick,
        )

    def make_model(self, equipment: Equipment) -> TrafficModel:
        return TrafficModel()

    def fault_names(self) -> tuple[str, ...]:
        return ("controller",)

    def apply_fault(self, equipment_id: str, name: str, on: bool) -> None:
        """``controller``: fault bit 1 raised (or every bit cleared)."""
        self.model(equipment_id).fault_bits = 1 if on else 0

    def set_fault_bits(self, equipment_id: str, bits: int) -> None:
        """Raise (or clear, with 0) fault bits of a controller."""
        self.model(equipment_id).fault_bits = bits
        self.counters.faults_injected += bits != 0
