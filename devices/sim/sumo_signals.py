"""Traffic controllers that run SUMO's programs, for a co-simulation step-locked with SUMO.

Each of a SUMO network's traffic lights gets a controller of the
``traffic_controller`` profile, on Modbus as the other simulated controllers
(:class:`SumoSignalSimulator`, a :class:`~devices.sim.traffic.TrafficSimulator`):
the same request handling, limits and counters
(:class:`~devices.sim.traffic.TrafficModel`), running the light's own program
(:func:`runtime.sumo.network.controller_program`) instead of the factory's. It
does not tick by itself: the co-simulation advances it one SUMO step at a
time (:meth:`~devices.sim.ModbusSimulator.tick`) and asks it which state SUMO
shows next (:meth:`SumoSignalModel.state`):

* in a green, the phase's green state (held longer for a bus's extension);
* in its amber and all-red, the states of the program's transition at the time
  they have run, so that the light shows exactly SUMO's program whenever the
  next phase is the program's next (a green cut short for an early green shows
  its transition in full, as the controller runs its amber and all-red in full);
* when an early green jumps to another phase, a transition derived from the two
  greens: a link green in both stays green, one green only before turns yellow
  in the amber and red in the all-red, every other link red;
* out of ``auto``: ``o`` (blinking, unregulated) while flashing or starting to,
  ``O`` (off) when off, red in all-red.

A controller's program starts where SUMO's own program stands when the
simulation starts (:func:`cycle_elapsed`: the offset and the phase in force), so
that without a request the light shows the program SUMO would have run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from devices.sim.traffic import PHASES, PhaseTimes, Program, TrafficModel, TrafficSimulator
from runtime.clock import Clock
from runtime.errors import ConfigError
from runtime.inventory import Equipment
from runtime.sumo.network import ControllerPhase, Light

__all__ = ["SumoSignalModel", "SumoSignalSimulator", "amber_between", "cycle_elapsed",
           "red_between"]

_GREEN: Final = frozenset("Gg")
#: Characters a derived transition keeps as they are (no green to end).
_KEPT: Final = frozenset("sOo")
_U16: Final = 0xFFFF


def amber_between(before: str, after: str) -> str:
    """The amber of a jump from green state ``before`` to ``after`` (module doc)."""
    return "".join(a if a in _GREEN and b in _GREEN else "y" if a in _GREEN
                   else a if a in _KEPT else "r" for a, b in zip(before, after, strict=True))


def red_between(before: str, after: str) -> str:
    """The all-red of a jump from green state ``before`` to ``after`` (module doc)."""
    return "".join(a if a in _GREEN and b in _GREEN else a if a in _KEPT else "r"
                   for a, b in zip(before, after, strict=True))


def cycle_elapsed(light: Light, program: Sequence[ControllerPhase], phase_index: int,
                  spent_s: float) -> float:
    """Where in the controller's cycle (s from phase 1's green) SUMO's program stands when
    it is in its phase ``phase_index`` since ``spent_s`` seconds."""
    durations = [round(p.duration) for p in light.phases]
    cycle = sum(durations)
    if not program or cycle <= 0 or not 0 <= phase_index < len(durations):
        return 0.0
    position = sum(durations[:phase_index]) + spent_s
    start = sum(durations[:program[0].sumo_index])
    return (position - start) % cycle


def _slot(program: Program) -> dict[str, Any]:
    """The plan-table slot showing ``program`` (an empty one when it does not fit the
    table's five phases and u16 registers)."""
    from devices.sim.traffic import empty_slot

    slot = empty_slot()
    if len(program.phases) > PHASES or program.cycle > _U16:
        return slot
    slot.update(number=program.number, cycle=program.cycle, offset=0)
    for n, times in enumerate(program.phases, 1):
        slot.update({f"min_green_{n}": times.min_green, f"green_{n}": times.green,
                     f"amber_{n}": times.amber, f"all_red_{n}": times.all_red,
                     f"pedestrian_{n}": False})
    return slot


class SumoSignalModel(TrafficModel):
    """A traffic controller running one SUMO light's program (module doc).

    ``elapsed_s`` is where in its cycle it starts (:func:`cycle_elapsed`).
    """

    def __init__(self, phases: Sequence[ControllerPhase], elapsed_s: float = 0.0) -> None:
        super().__init__()
        if not phases:
            raise ConfigError("a controller needs at least one green phase")
        self.phases = tuple(phases)
        self.program = Program(1, sum(p.green_s + p.amber_s + p.all_red_s for p in phases), 0,
                               tuple(PhaseTimes(p.min_green_s, p.green_s, p.amber_s, p.all_red_s)
                                     for p in phases))
        self.slots[0] = _slot(self.program)
        self.plan = self.program.number
        self.phase, self.stage = 1, "green"
        self.stage_left = float(self.program.phases[0].green)
        self.advance(elapsed_s)
        self.now = 0.0  # requests' times count from the co-simulation's start
        self.greens = self.cycles = 0

    def state(self) -> str:
        """The state SUMO shows now: one character per link (module doc)."""
        size = len(self.phases[0].green_state)
        if self.mode in ("flashing", "start_flashing"):
            return "o" * size
        if self.mode == "off":
            return "O" * size
        if self.mode not in ("auto", "manual"):
            return "r" * size
        current = self.phases[self.phase - 1]
        if self.stage == "green":
            return current.green_state
        successor = self.phase % len(self.phases) + 1
        target = self.next_phase if self.next_phase is not None else successor
        if target != successor:
            after = self.phases[target - 1].green_state
            return (amber_between if self.stage == "amber" else red_between)(
                current.green_state, after)
        if self.stage == "amber":
            ran = current.amber_s - self.stage_left
        else:
            ran = current.amber_s + current.all_red_s - self.stage_left
        at = 0.0
        for state, duration in current.transition:
            at += duration
            if ran < at - 1e-9:
                return state
        return current.transition[-1][0] if current.transition else current.green_state


class SumoSignalSimulator(TrafficSimulator):
    """The controllers of a SUMO network's lights on Modbus, ticked by the co-simulation.

    ``programs`` and ``elapsed`` are by equipment id; :meth:`load` starts them afresh
    (another run of the same network) without touching the servers.
    """

    def __init__(self, equipment: Sequence[Equipment],
                 programs: Mapping[str, Sequence[ControllerPhase]],
                 elapsed: Mapping[str, float] | None = None, *,
                 clock: Clock | None = None) -> None:
        self._programs = dict(programs)
        self._elapsed = dict(elapsed or {})
        super().__init__(equipment, clock=clock, autotick=False)

    def make_model(self, equipment: Equipment) -> SumoSignalModel:
        program = self._programs.get(equipment.id)
        if program is None:
            raise ConfigError(f"{equipment.id}: no SUMO program")
        return SumoSignalModel(program, self._elapsed.get(equipment.id, 0.0))

    def load(self, elapsed: Mapping[str, float]) -> None:
        """Every controller anew, its program started ``elapsed[id]`` seconds into its cycle."""
        self._elapsed = dict(elapsed)
        for device in self._devices.values():
            model = self.make_model(device.equipment)
            device.model = model
            device.counters.priority = model.priority
            device.stale = True

    def signal(self, equipment_id: str) -> SumoSignalModel:
        """The controller of ``equipment_id``."""
        return cast(SumoSignalModel, self.model(equipment_id))

    def states(self) -> dict[str, str]:
        """What every light shows now, by equipment id."""
        return {eid: self.signal(eid).state() for eid in self.ids}
