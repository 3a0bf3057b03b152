"""Simulated traffic light controllers (profile ``traffic_controller``).

Each controller runs a *program*: phases in turn, each a green (at least its
minimum), an amber and an all-red. It comes from the factory with plan 1 in
the first slot of its table, selected and running (:data:`FACTORY_TABLE`:
four vehicle phases of 10 s green and a pedestrian phase of 8 s, amber 3 s,
all-red 2 s, a 73 s cycle) until the runtime downloads its own.
The ``phase`` register shows the phase in green or amber, 0 during all-red
and in every mode that shows no phase; ``cycle_s`` is the second of the
running cycle, which starts with phase 1's green.

**Plan table.** Four slots (block ``plan_table``), each holding one plan: its
number (0: an empty slot), cycle, offset and, per phase, minimum and nominal
green, amber, all-red and a pedestrian flag. The controller checks every
write to a slot against its own limits (:func:`table_problems`:
:data:`MIN_GREEN_S`, :data:`PEDESTRIAN_MIN_GREEN_S`, :data:`MIN_AMBER_S`,
:data:`MIN_ALL_RED_S`, phases from 1 without a gap, the cycle the sum of the
phases, the offset within it) as the slot would stand after the write, and
refuses one that breaks them with exception 3 (ILLEGAL_VALUE); the simulator
counts it (``writes_refused``, and per device ``refused``). A slot given a
number another slot holds takes it over (the other slot is emptied).

**Selection.** A plan number written to ``plan`` must be in the table (else
exception 3). It is latched at the next cycle boundary (the start of phase
1's green): the slot's table is copied into the running program then, so
that rewriting a slot never changes a running cycle; ``plan_running`` shows
the plan in force. Writing ``plan`` again latches the slot again (a table
rewritten for the same number takes effect at the next boundary).

**Modes.** ``auto`` runs the program; ``manual`` holds the current stage;
``flashing`` (amber), ``all_red`` and ``off`` show no phase. From ``off`` a
controller returns to ``auto`` as real ones do: ``start_flashing``
(:data:`START_FLASHING_S`), ``start_all_red`` (:data:`START_ALL_RED_S`), then
phase 1. Refused: ``off`` straight to ``manual`` (3), a device-only mode (3),
and leaving a mode that shows no phase for ``auto``/``manual`` while a
blocking fault bit is set (4).

**Faults** (``fault_bits``): :data:`FAULT_CONTROLLER`, :data:`FAULT_LAMP` (a
signal lamp out) and :data:`FAULT_CONFLICT` (the conflict monitor saw
conflicting greens), both forcing ``flashing``, and :data:`FAULT_DETECTOR`.

**Priority.** A priority request names an approach (1..8; approach ``a`` is
served by phase ``(a - 1) % 4 + 1``, a vehicle phase of the program). In
``auto`` mode the controller extends the green of that phase (by
:data:`PRIORITY_EXTEND_S`, at most to :data:`PRIORITY_MAX_GREEN_S`) or ends
the current green as soon as its minimum has run and goes to that phase
next; ``priority_status`` reports ``granted``, then ``served`` (and the
request is cleared) when the phase has had its green. A request in another
mode, for no vehicle phase, or while another approach's request is pending,
is ``refused``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from devices.profile import Profile, builtin_profile
from devices.sim import (
    EXC_DEVICE_FAILURE,
    EXC_ILLEGAL_VALUE,
    DeviceModel,
    ModbusSimulator,
)
from runtime.clock import Clock
from runtime.inventory import Equipment

__all__ = [
    "FACTORY_TABLE",
    "FAULT_CONFLICT",
    "FAULT_CONTROLLER",
    "FAULT_DETECTOR",
    "FAULT_LAMP",
    "MIN_ALL_RED_S",
    "MIN_AMBER_S",
    "MIN_GREEN_S",
    "PEDESTRIAN_MIN_GREEN_S",
    "PRIORITY_EXTEND_S",
    "PRIORITY_MAX_GREEN_S",
    "SLOTS",
    "START_ALL_RED_S",
    "START_FLASHING_S",
    "Program",
    "TrafficModel",
    "TrafficSimulator",
    "empty_slot",
    "table_problems",
]

#: The controller's own limits (s): what its plan table refuses to hold.
MIN_GREEN_S: Final = 5
PEDESTRIAN_MIN_GREEN_S: Final = 6
MIN_AMBER_S: Final = 3
MIN_ALL_RED_S: Final = 1
MAX_GREEN_S: Final = 120
MAX_CYCLE_S: Final = 240
#: Slots of the plan table, and phases per slot.
SLOTS: Final = 4
PHASES: Final = 5
#: The start sequence from ``off`` (s).
START_FLASHING_S: Final = 6.0
START_ALL_RED_S: Final = 4.0
PRIORITY_EXTEND_S: Final = 10.0
PRIORITY_MAX_GREEN_S: Final = 60.0

FAULT_CONTROLLER: Final = 0x0001
FAULT_LAMP: Final = 0x0002
FAULT_CONFLICT: Final = 0x0004
FAULT_DETECTOR: Final = 0x0008
#: Faults that force flashing, and keep the controller from leaving it.
_FORCING: Final = FAULT_LAMP | FAULT_CONFLICT
#: Faults that keep a controller showing no phase from running again.
_BLOCKING: Final = FAULT_CONTROLLER | FAULT_LAMP | FAULT_CONFLICT
_FAULTS: Final = {"controller": FAULT_CONTROLLER, "lamp": FAULT_LAMP,
                  "conflict": FAULT_CONFLICT, "detector": FAULT_DETECTOR}

_RUNNING: Final = ("auto", "manual")
_STARTING: Final = ("start_flashing", "start_all_red")
_PHASE_FIELDS: Final = ("min_green", "green", "amber", "all_red", "pedestrian")


@dataclass(frozen=True, slots=True)
class PhaseTimes:
    """One phase of a running program (s)."""

    min_green: int
    green: int
    amber: int
    all_red: int
    pedestrian: bool = False


@dataclass(frozen=True, slots=True)
class Program:
    """The plan a controller runs: a copy of a table slot, taken when it latched."""

    number: int
    cycle: int
    offset: int
    phases: tuple[PhaseTimes, ...]

    @classmethod
    def of(cls, slot: Mapping[str, Any]) -> Program:
        phases = []
        for n in range(1, PHASES + 1):
            times = PhaseTimes(int(slot[f"min_green_{n}"]), int(slot[f"green_{n}"]),
                               int(slot[f"amber_{n}"]), int(slot[f"all_red_{n}"]),
                               bool(slot[f"pedestrian_{n}"]))
            if times.green == 0:
                break
            phases.append(times)
        return cls(int(slot["number"]), int(slot["cycle"]), int(slot["offset"]), tuple(phases))


def empty_slot() -> dict[str, Any]:
    """A plan table slot holding nothing."""
    out: dict[str, Any] = {"number": 0, "cycle": 0, "offset": 0}
    for n in range(1, PHASES + 1):
        for f in _PHASE_FIELDS:
            out[f"{f}_{n}"] = False if f == "pedestrian" else 0
    return out


def _factory_table() -> dict[str, Any]:
    out = empty_slot()
    out.update(number=1, cycle=73)
    for n in range(1, PHASES + 1):
        pedestrian = n == PHASES
        out.update({f"min_green_{n}": PEDESTRIAN_MIN_GREEN_S if pedestrian else MIN_GREEN_S,
                    f"green_{n}": 8 if pedestrian else 10, f"amber_{n}": 3,
                    f"all_red_{n}": 2, f"pedestrian_{n}": pedestrian})
    return out


#: The plan a controller comes from the factory with, in slot 1: plan 1, a 73 s cycle.
FACTORY_TABLE: Final = _factory_table()


def table_problems(slot: Mapping[str, Any]) -> list[str]:
    """What keeps the controller from holding ``slot`` (none for an empty slot)."""
    if not slot["number"]:
        return []
    out: list[str] = []
    present = 0
    for n in range(1, PHASES + 1):
        times = [int(slot[f"{f}_{n}"]) for f in _PHASE_FIELDS[:4]]
        pedestrian = bool(slot[f"pedestrian_{n}"])
        if not any(times) and not pedestrian:
            continue
        if present != n - 1:
            out.append(f"phase {n} follows an empty phase")
        present = n
        min_green, green, amber, all_red = times
        floor = PEDESTRIAN_MIN_GREEN_S if pedestrian else MIN_GREEN_S
        if min_green < floor:
            out.append(f"phase {n}: minimum green {min_green} s < {floor} s")
        if green < min_green:
            out.append(f"phase {n}: green {green} s < its minimum {min_green} s")
        if green > MAX_GREEN_S:
            out.append(f"phase {n}: green {green} s > {MAX_GREEN_S} s")
        if amber < MIN_AMBER_S:
            out.append(f"phase {n}: amber {amber} s < {MIN_AMBER_S} s")
        if all_red < MIN_ALL_RED_S:
            out.append(f"phase {n}: all-red {all_red} s < {MIN_ALL_RED_S} s")
    if present < 2:
        out.append(f"{present} phases: at least 2")
    total = sum(int(slot[f"{f}_{n}"]) for n in range(1, PHASES + 1)
                for f in ("green", "amber", "all_red"))
    if slot["cycle"] != total or total > MAX_CYCLE_S:
        out.append(f"cycle {slot['cycle']} s: the phases make {total} s (at most {MAX_CYCLE_S})")
    if not 0 <= slot["offset"] < max(int(slot["cycle"]), 1):
        out.append(f"offset {slot['offset']} s outside the cycle")
    return out


class TrafficModel(DeviceModel):
    """One controller's state machine (see the module docstring)."""

    def __init__(self) -> None:
        self.slots = [dict(FACTORY_TABLE), *(empty_slot() for _ in range(SLOTS - 1))]
        self.program = Program.of(FACTORY_TABLE)
        self.plan = self.program.number  # selected
        self.latch = False  # a selection waits for the next cycle boundary
        self.mode = "auto"
        self.phase = 1
        self.stage = "green"  # green, amber, all_red
        self.stage_left = float(self.program.phases[0].green)
        self.green_elapsed = 0.0
        self.cycle_elapsed = 0.0
        self.start_left = 0.0  # of the current start step
        self.next_phase: int | None = None  # a priority jump
        self.priority_request = 0
        self.priority_status = "idle"
        self.priority_phase: int | None = None
        self.fault_bits = 0
        self.greens = 0  # greens started, for tests and demos
        self.cycles = 0  # cycle boundaries passed
        self.refusals: list[str] = []  # why tables were refused, latest last

    def values(self) -> dict[str, Any]:
        running = self.mode in _RUNNING
        shown = self.phase if running and self.stage != "all_red" else 0
        return {
            "phase": shown,
            "plan": self.plan,
            "mode": self.mode,
            "priority_request": self.priority_request,
            "priority_status": self.priority_status,
            "fault_bits": self.fault_bits,
            "plan_running": self.program.number,
            "cycle_s": min(int(self.cycle_elapsed), 0xFFFF) if running else 0,
            "plan_table": [dict(s) for s in self.slots],
        }

    # -- writes ----------------------------------------------------------------

    def check_write(self, writes: Sequence[tuple[str | None, int, str, Any]]) -> int | None:
        """Refuse a request leaving a plan table slot unsafe (:func:`table_problems`)."""
        touched: dict[int, dict[str, Any]] = {}
        for block, index, name, value in writes:
            if block != "plan_table":
                continue
            if not 0 <= index < SLOTS:
                return EXC_ILLEGAL_VALUE
            touched.setdefault(index, dict(self.slots[index]))[name] = value
        for index, slot in touched.items():
            problems = table_problems(slot)
            if problems:
                self.refusals.append(f"slot {index + 1} (plan {slot['number']}): "
                                     + "; ".join(problems))
                return EXC_ILLEGAL_VALUE
        return None

    def apply(self, block: str | None, index: int, name: str, value: Any) -> int | None:
        if block == "plan_table":
            self.slots[index][name] = value
            if name == "number" and value:
                for i, other in enumerate(self.slots):
                    if i != index and other["number"] == value:
                        self.slots[i] = empty_slot()
            return None
        if name == "plan":
            if self.find(int(value)) is None:
                self.refusals.append(f"plan {value} is in no slot of the table")
                return EXC_ILLEGAL_VALUE
            self.plan, self.latch = int(value), True
            return None
        if name == "mode":
            return self._set_mode(str(value))
        if name == "priority_request":
            self._request(int(value))
            return None
        return EXC_ILLEGAL_VALUE

    def find(self, number: int) -> dict[str, Any] | None:
        """The slot holding plan ``number`` (a slot the controller accepted is safe)."""
        if number <= 0:
            return None
        return next((s for s in self.slots if s["number"] == number), None)

    def _set_mode(self, mode: str) -> int | None:
        if mode == self.mode or (mode == "auto" and self.mode in _STARTING):
            return None  # already there, or on the way
        if mode in _STARTING:
            return EXC_ILLEGAL_VALUE  # the controller's own steps
        if mode in _RUNNING and self.mode not in _RUNNING:
            if self.fault_bits & _BLOCKING:
                return EXC_DEVICE_FAILURE
            if mode == "manual" and (self.mode == "off" or self.mode in _STARTING):
                return EXC_ILLEGAL_VALUE  # nothing to hold: start in auto first
            if self.mode == "off":
                self._drop_priority("refused" if self.priority_request else "idle")
                self.mode, self.start_left = "start_flashing", START_FLASHING_S
                return None
            # A safe start from flashing or all-red: an all-red, then phase 1's cycle.
            self.phase, self.stage = len(self.program.phases), "all_red"
            self.stage_left = float(self.program.phases[-1].all_red)
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
        phases = self.program.phases
        if (self.mode != "auto" or target > len(phases) or phases[target - 1].pedestrian
                or (self.priority_phase is not None and self.priority_phase != target)):
            self.priority_status = "refused"
            return
        self.priority_phase = target
        self.priority_status = "granted"
        if self.stage == "green" and self.phase == target:
            self.stage_left = min(self.stage_left + PRIORITY_EXTEND_S,
                                  PRIORITY_MAX_GREEN_S - self.green_elapsed)
            return
        self.next_phase = target
        if self.stage == "green":
            least = phases[self.phase - 1].min_green
            self.stage_left = min(self.stage_left, max(0.0, least - self.green_elapsed))

    # -- faults ----------------------------------------------------------------

    def set_faults(self, bits: int) -> None:
        """Set ``fault_bits``; a lamp or conflict fault forces flashing."""
        self.fault_bits = bits
        if bits & _FORCING and self.mode != "off":
            self._drop_priority("refused" if self.priority_request else "idle")
            self.mode = "flashing"

    # -- time ------------------------------------------------------------------

    def advance(self, dt: float) -> None:
        while dt > 1e-12 and self.mode in _STARTING:
            step = min(dt, self.start_left)
            dt -= step
            self.start_left -= step
            if self.start_left <= 1e-9:
                if self.mode == "start_flashing":
                    self.mode, self.start_left = "start_all_red", START_ALL_RED_S
                else:
                    # The start's all-red ends: phase 1's green opens a cycle.
                    self.mode = "auto"
                    self.phase, self.stage, self.stage_left = len(self.program.phases), \
                        "all_red", 0.0
                    self._next_stage()
        if self.mode != "auto":
            return  # manual holds the current stage; the others show no phase
        while dt > 0:
            step = min(dt, self.stage_left)
            dt -= step
            self.stage_left -= step
            self.cycle_elapsed += step
            if self.stage == "green":
                self.green_elapsed += step
            if self.stage_left <= 1e-9:
                self._next_stage()

    def _next_stage(self) -> None:
        times = self.program.phases[self.phase - 1]
        if self.stage == "green":
            if self.priority_phase == self.phase and self.next_phase is None:
                self.priority_request = 0
                self._drop_priority("served")
            self.stage, self.stage_left = "amber", float(times.amber)
        elif self.stage == "amber":
            self.stage, self.stage_left = "all_red", float(times.all_red)
        else:
            if self.next_phase is not None:
                self.phase, self.next_phase = self.next_phase, None
            else:
                self.phase = self.phase % len(self.program.phases) + 1
            if self.phase == 1:
                self._boundary()
            self.stage, self.green_elapsed = "green", 0.0
            self.stage_left = float(self.program.phases[self.phase - 1].green)
            self.greens += 1

    def _boundary(self) -> None:
        """A new cycle starts: a selected plan latches, from its slot as it stands now."""
        self.cycles += 1
        self.cycle_elapsed = 0.0
        if self.latch:
            slot = self.find(self.plan)
            if slot is not None:
                self.program = Program.of(slot)
            self.latch = False
        if self.priority_phase is not None and self.priority_phase > len(self.program.phases):
            self._drop_priority("refused")


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
        return tuple(_FAULTS)

    def apply_fault(self, equipment_id: str, name: str, on: bool) -> None:
        """Raise (or clear) one fault bit: ``controller`` 1, ``lamp`` 2, ``conflict`` 4,
        ``detector`` 8; a lamp or conflict fault forces flashing."""
        model = self.model(equipment_id)
        bit = _FAULTS[name]
        model.set_faults(model.fault_bits | bit if on else model.fault_bits & ~bit)

    def set_fault_bits(self, equipment_id: str, bits: int) -> None:
        """Raise (or clear, with 0) fault bits of a controller."""
        self.model(equipment_id).set_faults(bits)
        self.counters.faults_injected += bits != 0
