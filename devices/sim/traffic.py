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

**Signal priority** (after NTCIP 1211: priority request, check-out, cancel).
The runtime writes block ``prio_request`` whole, in one request (a write that
covers part of it is refused with exception 3, as is a value outside the
profile's range): ``prio_id`` (nonzero), ``prio_command`` (``request``,
``checkout``, ``cancel``; ``none`` does nothing), ``prio_approach`` (1..8:
approach ``a`` is served by phase ``(a - 1) % 4 + 1``, a vehicle phase of the
program), ``prio_type`` (``extension`` or ``early_green``), ``prio_eta_s``
(the time of service desired: seconds until the bus reaches the stop line),
``prio_deadline_s`` (seconds after which the controller drops the request,
capped at :data:`PRIORITY_MAX_DEADLINE_S`) and ``prio_max_extension_s`` (the
most extension the runtime allows; the controller applies the lesser of it
and :data:`PRIORITY_MAX_EXTENSION_S`). The block reads back what was last
written.

The controller holds up to :data:`PRIORITY_TABLE_SIZE` requests and serves
one at a time, the oldest first (``granted``; the others ``queued``):

* while the requested phase is green, it is held green until the bus has
  reached the stop line (and :data:`PRIORITY_CROSSING_S` more), by at most the
  extension allowed beyond its nominal green and never beyond
  :data:`MAX_GREEN_S`;
* an early green ends the running green as soon as its minimum (for a
  pedestrian phase, and :data:`PEDESTRIAN_MIN_GREEN_S`) has run; its amber
  and all-red run in full, then the requested phase comes next;
* an extension whose phase is not green waits for its green in turn.

A request is served when the green that served it ends; the next one is then
granted. A checkout or cancel clears a request: an extension ends at once
(a green is never cut shorter than planned), a jump not made yet is
dropped. The
controller drops every request at its deadline by itself (``expired``),
whatever the runtime does; leaving ``auto`` (an operator, a fault forcing
flashing) drops them all, and a plan latched without the phase drops those
of that phase (``cleared``, reason ``mode`` or ``no_phase``).

Refused (``refused`` and a reason): a zero id, approach 0, a deadline of 0
or a bus due after the deadline (``bad_request``); not in ``auto``
(``mode``); no vehicle phase for the approach (``no_phase``); the table full
(``busy``); an id among the last :data:`PRIORITY_MEMORY` the controller
finished with (``duplicate``: a request is served once, a stale one is never
served again); a checkout or cancel of an id it does not hold
(``unknown_id``). A request naming an id it holds is an update (the time of
service, the deadline counted anew, the type, the extension allowed; reason
``duplicate``), unless it names another approach (refused, ``bad_request``,
the held request unchanged).

``prio_status_id``, ``prio_status`` and ``prio_reason`` are the controller's
last word on a request: the answer to the last write, or what it did by
itself since (a grant, a service, an expiry). A grant's reason says what
holds it back: ``min_green`` or ``pedestrian_min`` (an early green waits for
the running green's minimum), ``max_extension`` or ``max_green`` (the limit
that keeps the green from lasting until the bus); a service's reason is that
limit when it cut the green before the bus came. When a request ends and the
next queued one is granted at once, the end is shown. ``prio_active`` counts
the requests held. The simulator logs each request, checkout and cancel it
receives with the wall-clock time it arrived, and counts what became of them
(:class:`~devices.sim.control.PriorityCounters`), for the control channel.
"""

from __future__ import annotations

from collections import deque
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
from devices.sim.control import PRIORITY_LOG_SIZE, PriorityCounters
from runtime.clock import Clock
from runtime.inventory import Equipment

__all__ = [
    "FACTORY_TABLE",
    "FAULT_CONFLICT",
    "FAULT_CONTROLLER",
    "FAULT_DETECTOR",
    "FAULT_LAMP",
    "MAX_GREEN_S",
    "MIN_ALL_RED_S",
    "MIN_AMBER_S",
    "MIN_GREEN_S",
    "PEDESTRIAN_MIN_GREEN_S",
    "PRIORITY_CROSSING_S",
    "PRIORITY_MAX_DEADLINE_S",
    "PRIORITY_MAX_EXTENSION_S",
    "PRIORITY_MEMORY",
    "PRIORITY_TABLE_SIZE",
    "SLOTS",
    "START_ALL_RED_S",
    "START_FLASHING_S",
    "PriorityRequest",
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
#: Signal priority: requests held at once, the most green extension the controller
#: grants (s), the longest deadline it keeps a request for (s), the time a bus takes to
#: cross the stop line once there (s), and how many finished request ids it remembers.
PRIORITY_TABLE_SIZE: Final = 8
PRIORITY_MAX_EXTENSION_S: Final = 15.0
PRIORITY_MAX_DEADLINE_S: Final = 120.0
PRIORITY_CROSSING_S: Final = 3.0
PRIORITY_MEMORY: Final = 32

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
_REQUEST_BLOCK: Final = "prio_request"
_REQUEST_FIELDS: Final = ("prio_id", "prio_command", "prio_approach", "prio_type",
                          "prio_eta_s", "prio_deadline_s", "prio_max_extension_s")
_COMMANDS: Final = ("request", "checkout", "cancel")
_EPS: Final = 1e-9


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


@dataclass(slots=True)
class PriorityRequest:
    """A priority request the controller holds (times on the controller's clock, s)."""

    id: int
    approach: int
    phase: int
    type: str  # extension, early_green
    due: float  # when the bus reaches the stop line
    drop_at: float  # its deadline
    max_extension: float  # beyond the nominal green


def _no_request() -> dict[str, Any]:
    return {"prio_id": 0, "prio_command": "none", "prio_approach": 0, "prio_type": "extension",
            "prio_eta_s": 0, "prio_deadline_s": 0, "prio_max_extension_s": 0}


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
        self.next_phase: int | None = None  # an early green's jump
        self.now = 0.0  # the controller's clock (s), for priority times
        self.requests: list[PriorityRequest] = []  # held, oldest (the one served) first
        self.finished: deque[int] = deque(maxlen=PRIORITY_MEMORY)  # ids served, expired, cleared
        self.request_regs = _no_request()  # the prio_request block as last written
        self.prio_status_id = 0
        self.prio_status = "idle"
        self.prio_reason = "none"
        self.priority = PriorityCounters()
        self.fault_bits = 0
        self.greens = 0  # greens started, for tests and demos
        self.cycles = 0  # cycle boundaries passed
        self.refusals: list[str] = []  # why writes were refused (tables, requests), latest last

    def values(self) -> dict[str, Any]:
        running = self.mode in _RUNNING
        shown = self.phase if running and self.stage != "all_red" else 0
        return {
            "phase": shown,
            "plan": self.plan,
            "mode": self.mode,
            "fault_bits": self.fault_bits,
            "plan_running": self.program.number,
            "cycle_s": min(int(self.cycle_elapsed), 0xFFFF) if running else 0,
            "plan_table": [dict(s) for s in self.slots],
            "prio_status_id": self.prio_status_id,
            "prio_status": self.prio_status,
            "prio_reason": self.prio_reason,
            "prio_active": len(self.requests),
            _REQUEST_BLOCK: [dict(self.request_regs)],
        }

    # -- writes ----------------------------------------------------------------

    def check_write(self, writes: Sequence[tuple[str | None, int, str, Any]]) -> int | None:
        """Refuse a request leaving a plan table slot unsafe (:func:`table_problems`), and
        one writing part of a priority request."""
        touched: dict[int, dict[str, Any]] = {}
        request: set[str] = set()
        for block, index, name, value in writes:
            if block == _REQUEST_BLOCK:
                request.add(name)
                continue
            if block != "plan_table":
                continue
            if not 0 <= index < SLOTS:
                return EXC_ILLEGAL_VALUE
            touched.setdefault(index, dict(self.slots[index]))[name] = value
        if request and request != set(_REQUEST_FIELDS):
            self.refusals.append("a priority request is written whole, not "
                                 + ", ".join(sorted(request)))
            return EXC_ILLEGAL_VALUE
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
        if block == _REQUEST_BLOCK:
            self.request_regs[name] = value  # acted on once the whole request is in
            return None
        if name == "plan":
            if self.find(int(value)) is None:
                self.refusals.append(f"plan {value} is in no slot of the table")
                return EXC_ILLEGAL_VALUE
            self.plan, self.latch = int(value), True
            return None
        if name == "mode":
            return self._set_mode(str(value))
        return EXC_ILLEGAL_VALUE

    def applied(self, writes: Sequence[tuple[str | None, int, str, Any]]) -> None:
        if any(block == _REQUEST_BLOCK for block, _, _, _ in writes):
            self._receive(self.request_regs)

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
                self.mode, self.start_left = "start_flashing", START_FLASHING_S
                return None
            # A safe start from flashing or all-red: an all-red, then phase 1's cycle.
            self.phase, self.stage = len(self.program.phases), "all_red"
            self.stage_left = float(self.program.phases[-1].all_red)
            self.next_phase = None
        if mode != "auto":
            self._drop_all("mode")
        self.mode = mode
        return None

    # -- signal priority ---------------------------------------------------------

    def holds(self, request_id: int) -> PriorityRequest | None:
        """The request ``request_id`` if the controller holds it."""
        return next((r for r in self.requests if r.id == request_id), None)

    def is_duplicate(self, request_id: int) -> bool:
        """Whether a request naming ``request_id`` repeats one held or finished with."""
        return bool(request_id) and (self.holds(request_id) is not None
                                     or request_id in self.finished)

    def _receive(self, regs: Mapping[str, Any]) -> None:
        """Act on the priority request block, just written whole."""
        command = str(regs["prio_command"])
        request_id = int(regs["prio_id"])
        if command == "request":
            self.priority.received += 1
            self._request(request_id, regs)
        elif command in ("checkout", "cancel"):
            if command == "checkout":
                self.priority.checkouts += 1
            else:
                self.priority.cancels += 1
            self._withdraw(request_id)
        self._replan()

    def _request(self, request_id: int, regs: Mapping[str, Any]) -> None:
        approach = int(regs["prio_approach"])
        eta = float(regs["prio_eta_s"])
        deadline = min(float(regs["prio_deadline_s"]), PRIORITY_MAX_DEADLINE_S)
        extension = min(float(regs["prio_max_extension_s"]), PRIORITY_MAX_EXTENSION_S)
        held = self.holds(request_id)
        if self.is_duplicate(request_id):
            self.priority.duplicates += 1
        if not request_id or not approach or deadline <= 0 or eta > deadline:
            self._refuse(request_id, "bad_request")
            return
        if held is not None:
            if approach != held.approach:
                self._refuse(request_id, "bad_request")
                return
            held.type, held.max_extension = str(regs["prio_type"]), extension
            held.due, held.drop_at = self.now + eta, self.now + deadline
            self._status(request_id, "granted" if held is self.requests[0] else "queued",
                         "duplicate")
            return
        if request_id in self.finished:
            self._refuse(request_id, "duplicate")
            return
        if self.mode != "auto":
            self._refuse(request_id, "mode")
            return
        phase = (approach - 1) % 4 + 1
        phases = self.program.phases
        if phase > len(phases) or phases[phase - 1].pedestrian:
            self._refuse(request_id, "no_phase")
            return
        if len(self.requests) >= PRIORITY_TABLE_SIZE:
            self._refuse(request_id, "busy")
            return
        request = PriorityRequest(request_id, approach, phase, str(regs["prio_type"]),
                                  self.now + eta, self.now + deadline, extension)
        self.requests.append(request)
        if len(self.requests) == 1:
            self._grant(request)
        else:
            self._status(request_id, "queued", "none")

    def _withdraw(self, request_id: int) -> None:
        """A checkout or cancel."""
        if not request_id:
            self._refuse(request_id, "bad_request")
            return
        request = self.holds(request_id)
        if request is None:
            self._refuse(request_id, "unknown_id")
            return
        self.priority.cleared += 1
        self._finish(request, "cleared", "none")

    def _status(self, request_id: int, status: str, reason: str) -> None:
        self.prio_status_id, self.prio_status, self.prio_reason = request_id, status, reason

    def _refuse(self, request_id: int, reason: str) -> None:
        self.priority.refuse(reason)
        self._status(request_id, "refused", reason)

    def _grant(self, request: PriorityRequest) -> None:
        self.priority.granted += 1
        self._status(request.id, "granted", self._grant_reason(request))

    def _finish(self, request: PriorityRequest, status: str, reason: str, *,
                remember: bool = True) -> None:
        """``request`` leaves the table; the next one is granted if it was served."""
        served = self.requests[0] is request
        self.requests.remove(request)
        if remember:
            self.finished.append(request.id)
        if served and self.requests:
            self._grant(self.requests[0])
        self._status(request.id, status, reason)

    def _drop_all(self, reason: str) -> None:
        """The controller lets go of every request (it leaves auto)."""
        for request in list(self.requests):
            self.priority.dropped += 1
            self._finish(request, "cleared", reason, remember=False)
        self.next_phase = None

    def _floor(self, times: PhaseTimes) -> float:
        """The least green a phase may end after: its minimum, a pedestrian phase's too."""
        least = PEDESTRIAN_MIN_GREEN_S if times.pedestrian else MIN_GREEN_S
        return float(max(times.min_green, least))

    def _hold_limit(self, request: PriorityRequest, times: PhaseTimes) -> tuple[float, str]:
        """How long the request's phase may stay green for it, and what sets that."""
        limit = times.green + request.max_extension
        if limit >= MAX_GREEN_S:
            return float(MAX_GREEN_S), "max_green"
        return limit, "max_extension"

    def _grant_reason(self, request: PriorityRequest) -> str:
        """What holds back a request just granted: the running green's minimum, or the
        limit that keeps its green from lasting until the bus."""
        if self.mode != "auto" or self.stage != "green":
            return "none"
        times = self.program.phases[self.phase - 1]
        if self.phase == request.phase:
            limit, why = self._hold_limit(request, times)
            wanted = self.green_elapsed + request.due - self.now + PRIORITY_CROSSING_S
            return why if wanted > limit + _EPS else "none"
        if request.type == "early_green" and self.green_elapsed < self._floor(times):
            return "pedestrian_min" if times.pedestrian else "min_green"
        return "none"

    def _green_end(self) -> float:
        """When the running green ends (s of green), for the request served if any."""
        times = self.program.phases[self.phase - 1]
        request = self.requests[0] if self.requests else None
        if request is None:
            return float(times.green)
        if request.phase == self.phase:
            limit, _ = self._hold_limit(request, times)
            wanted = self.green_elapsed + request.due - self.now + PRIORITY_CROSSING_S
            return max(float(times.green), min(wanted, limit))
        if request.type == "early_green":
            return min(float(times.green), self._floor(times))
        return float(times.green)

    def _replan(self) -> None:
        """The running green's end and the next phase, from the request served now."""
        if self.mode != "auto":
            return
        request = self.requests[0] if self.requests else None
        self.next_phase = None
        if request is not None and request.type == "early_green" and request.phase != self.phase:
            self.next_phase = request.phase
        if self.stage == "green":
            self.stage_left = max(0.0, self._green_end() - self.green_elapsed)

    def _expire(self) -> bool:
        """Drop the requests whose deadline has come; whether any was."""
        gone = [r for r in self.requests if r.drop_at <= self.now + _EPS]
        for request in gone:
            self.priority.expired += 1
            self._finish(request, "expired", "deadline")
        return bool(gone)

    # -- faults ----------------------------------------------------------------

    def set_faults(self, bits: int) -> None:
        """Set ``fault_bits``; a lamp or conflict fault forces flashing."""
        self.fault_bits = bits
        if bits & _FORCING and self.mode != "off":
            self._drop_all("mode")
            self.mode = "flashing"

    # -- time ------------------------------------------------------------------

    def advance(self, dt: float) -> None:
        while dt > 1e-12 and self.mode in _STARTING:
            step = min(dt, self.start_left)
            dt -= step
            self.now += step
            self.start_left -= step
            if self.start_left <= _EPS:
                if self.mode == "start_flashing":
                    self.mode, self.start_left = "start_all_red", START_ALL_RED_S
                else:
                    # The start's all-red ends: phase 1's green opens a cycle.
                    self.mode = "auto"
                    self.phase, self.stage, self.stage_left = len(self.program.phases), \
                        "all_red", 0.0
                    self._next_stage()
        if self.mode != "auto":
            self.now += max(dt, 0.0)  # manual holds the current stage; the others show none
            return
        while dt > 1e-12:
            step = min(dt, self.stage_left)
            if self.requests:
                # Stop at a deadline: the controller drops the request then, on its own.
                step = min(step, max(0.0, min(r.drop_at for r in self.requests) - self.now))
            dt -= step
            self.now += step
            self.stage_left -= step
            self.cycle_elapsed += step
            if self.stage == "green":
                self.green_elapsed += step
            changed = self._expire()
            if self.stage_left <= _EPS:
                self._next_stage()
                changed = True
            if changed:
                self._replan()

    def _next_stage(self) -> None:
        times = self.program.phases[self.phase - 1]
        if self.stage == "green":
            self.stage, self.stage_left = "amber", float(times.amber)
            request = self.requests[0] if self.requests else None
            if request is not None and request.phase == self.phase:
                # The green that served the request ends: before the bus came only when a
                # limit cut it.
                reason = "none" if self.now + _EPS >= request.due else \
                    self._hold_limit(request, times)[1]
                self.priority.served += 1
                self._finish(request, "served", reason)
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
        phases = self.program.phases
        for request in list(self.requests):
            if request.phase > len(phases) or phases[request.phase - 1].pedestrian:
                self.priority.dropped += 1
                self._finish(request, "cleared", "no_phase", remember=False)


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
        self._priority_log: dict[str, deque[dict[str, Any]]] = {}
        for eid in self.ids:
            self._devices[eid].counters.priority = self.model(eid).priority
            self._priority_log[eid] = deque(maxlen=PRIORITY_LOG_SIZE)

    def make_model(self, equipment: Equipment) -> TrafficModel:
        return TrafficModel()

    def received(self, equipment_id: str, writes: Sequence[tuple[str | None, int, str, Any]],
                 at: float) -> None:
        """Log a priority request, checkout or cancel written whole, as it arrived."""
        regs = {name: value for block, _, name, value in writes if block == _REQUEST_BLOCK}
        command = regs.get("prio_command")
        if command not in _COMMANDS or set(regs) != set(_REQUEST_FIELDS):
            return
        request_id = int(regs["prio_id"])
        self._priority_log[equipment_id].append({
            "device": equipment_id, "request_id": request_id, "command": command,
            "approach": int(regs["prio_approach"]), "ts": at,
            "duplicate": command == "request"
            and self.model(equipment_id).is_duplicate(request_id)})

    def priority_log(self, device_id: str | None = None,
                     since: float = 0.0) -> list[dict[str, Any]]:
        """The priority writes received after wall-clock ``since`` (one controller's, or
        every one's), oldest first (:mod:`devices.sim.control`)."""
        if device_id is not None:
            self._device_checked(device_id)
            logs: Sequence[deque[dict[str, Any]]] = (self._priority_log[device_id],)
        else:
            logs = tuple(self._priority_log.values())
        out = [dict(r) for log in logs for r in log if r["ts"] > since]
        out.sort(key=lambda r: float(r["ts"]))
        return out

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
