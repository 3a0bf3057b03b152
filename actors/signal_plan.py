"""Signal plans as data: each crossroad's cycle, phases and clearances, checked for safety.

A signal plan file (``actors/signal_plans.toml`` ships the metropolis's) holds
one ``[[plan]]`` per plan number, each with its phases in the order the
controller runs them::

    [[plan]]
    number = 2                  # what the controller's plan register selects (1..32)
    name = "morning_peak"
    cycle_s = 125               # the sum of every phase's green, amber and all-red
    offset_s = 10               # where the cycle starts on the common reference (< cycle_s)

      [[plan.phase]]
      min_green_s = 6           # the green the controller never cuts (priority, detectors)
      green_s = 35              # the nominal green
      amber_s = 3
      all_red_s = 2

      [[plan.phase]]
      pedestrian = true         # a pedestrian phase: its own minimum green
      min_green_s = 7
      green_s = 8
      amber_s = 3               # the pedestrians' clearance
      all_red_s = 2

The limits are the regulation's, not data (:data:`MIN_GREEN_S`,
:data:`PEDESTRIAN_MIN_GREEN_S`, :data:`MIN_AMBER_S`, :data:`MIN_ALL_RED_S` and
their maxima): a plan breaking one is refused when its file is read, with
``{file}:{line}: {field}: {message}`` lines (:class:`~runtime.errors.PlanError`,
as crisis plans and schedules are), and again by :meth:`SignalPlan.check`
just before it is downloaded to a controller. The controller checks the table
once more against its own limits and refuses, with a Modbus exception, one
that would break them.

A plan travels to the controller as one slot of its ``plan_table`` block
(``devices/profiles/traffic_controller.toml``): :meth:`SignalPlan.table` gives
the slot's registers by field name (``number``, ``cycle``, ``offset``, and
``min_green_N``, ``green_N``, ``amber_N``, ``all_red_N``, ``pedestrian_N`` for
phase N of :data:`MAX_PHASES`, zero where the plan has fewer).
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from runtime.datafile import (
    Checker,
    KeyPath,
    field_name,
    parse_toml,
    read_text,
    shown,
    type_name,
)
from runtime.errors import PlanError, RejectedError

__all__ = [
    "BUILTIN_SOURCE",
    "MAX_AMBER_S",
    "MAX_CYCLE_S",
    "MAX_GREEN_S",
    "MAX_PHASES",
    "MIN_ALL_RED_S",
    "MIN_AMBER_S",
    "MIN_GREEN_S",
    "PEDESTRIAN_MIN_GREEN_S",
    "Phase",
    "SignalPlan",
    "SignalPlanBook",
    "builtin_signal_plans",
    "load_signal_plans",
    "parse_signal_plans",
    "table_fields",
]

#: A vehicle phase's minimum green (s): no plan may give it less, nor cut it shorter.
MIN_GREEN_S: Final = 6
#: A pedestrian phase's minimum green (s): the time to step off the kerb.
PEDESTRIAN_MIN_GREEN_S: Final = 7
#: Amber (s): at least the stopping time at 50 km/h, at most what drivers still read as amber.
MIN_AMBER_S: Final = 3
MAX_AMBER_S: Final = 5
#: All-red after each phase (s): the clearance of the junction before the next green.
MIN_ALL_RED_S: Final = 1
MAX_ALL_RED_S: Final = 10
#: The longest nominal green and cycle a plan may have (s).
MAX_GREEN_S: Final = 90
MAX_CYCLE_S: Final = 180
#: Phases of a plan: the controller's table has room for :data:`MAX_PHASES`.
MIN_PHASES: Final = 2
MAX_PHASES: Final = 5
#: Plan numbers the controller's plan register takes.
MIN_NUMBER: Final = 1
MAX_NUMBER: Final = 32

_TOP_KEYS: Final = ("plan",)
_PLAN_KEYS: Final = ("number", "name", "description", "cycle_s", "offset_s", "phase")
_PHASE_KEYS: Final = ("min_green_s", "green_s", "amber_s", "all_red_s", "pedestrian")
#: A phase's registers in a plan table slot, per phase N: ``{name}_{N}``.
_PHASE_REGISTERS: Final = ("min_green", "green", "amber", "all_red", "pedestrian")


def table_fields() -> tuple[str, ...]:
    """The field names of one plan table slot, in register order."""
    return ("number", "cycle", "offset", *(f"{name}_{n}" for n in range(1, MAX_PHASES + 1)
                                          for name in _PHASE_REGISTERS))


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of a plan: its greens and the clearance after it (seconds)."""

    min_green_s: int
    green_s: int
    amber_s: int
    all_red_s: int
    pedestrian: bool = False
    line: int = 0

    @property
    def length_s(self) -> int:
        return self.green_s + self.amber_s + self.all_red_s

    def problems(self) -> list[tuple[str, str]]:
        """What breaks the limits, as ``(key, message)``."""
        out: list[tuple[str, str]] = []
        floor = PEDESTRIAN_MIN_GREEN_S if self.pedestrian else MIN_GREEN_S
        who = "a pedestrian phase" if self.pedestrian else "a vehicle phase"
        if self.min_green_s < floor:
            out.append(("min_green_s", f"minimum green {self.min_green_s} s is below {floor} s, "
                                       f"the least for {who}"))
        if self.green_s < self.min_green_s:
            out.append(("green_s", f"green {self.green_s} s is shorter than the phase's minimum "
                                   f"green {self.min_green_s} s"))
        if self.green_s > MAX_GREEN_S:
            out.append(("green_s", f"green {self.green_s} s is longer than {MAX_GREEN_S} s"))
        if not MIN_AMBER_S <= self.amber_s <= MAX_AMBER_S:
            out.append(("amber_s", f"amber {self.amber_s} s is outside {MIN_AMBER_S}.."
                                   f"{MAX_AMBER_S} s (clearance)"))
        if not MIN_ALL_RED_S <= self.all_red_s <= MAX_ALL_RED_S:
            out.append(("all_red_s", f"all-red {self.all_red_s} s is outside {MIN_ALL_RED_S}.."
                                     f"{MAX_ALL_RED_S} s (clearance)"))
        return out


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """A numbered signal plan: its cycle, offset and phases."""

    number: int
    name: str
    cycle_s: int
    offset_s: int
    phases: tuple[Phase, ...]
    description: str = ""
    line: int = 0

    def problems(self) -> list[tuple[KeyPath, str]]:
        """What breaks the limits, as ``(path under the plan, message)``."""
        out: list[tuple[KeyPath, str]] = []
        if not MIN_NUMBER <= self.number <= MAX_NUMBER:
            out.append((("number",), f"plan number {self.number} is outside "
                                     f"{MIN_NUMBER}..{MAX_NUMBER}"))
        if not MIN_PHASES <= len(self.phases) <= MAX_PHASES:
            out.append((("phase",), f"{len(self.phases)} phases: a plan has "
                                    f"{MIN_PHASES}..{MAX_PHASES}"))
        for i, phase in enumerate(self.phases):
            out += [(("phase", i, key), message) for key, message in phase.problems()]
        total = sum(p.length_s for p in self.phases)
        if self.phases and self.cycle_s != total:
            out.append((("cycle_s",), f"cycle {self.cycle_s} s is not the sum of the phases' "
                                      f"green, amber and all-red ({total} s)"))
        if self.cycle_s > MAX_CYCLE_S:
            out.append((("cycle_s",), f"cycle {self.cycle_s} s is longer than {MAX_CYCLE_S} s"))
        if not 0 <= self.offset_s < max(self.cycle_s, 1):
            out.append((("offset_s",), f"offset {self.offset_s} s is outside 0..cycle-1 "
                                       f"(cycle {self.cycle_s} s)"))
        return out

    def check(self) -> None:
        """Refuse this plan if it breaks a limit (before it is downloaded).

        Raises :class:`RejectedError` with ``code="unsafe_plan"``.
        """
        problems = self.problems()
        if problems:
            text = "; ".join(f"{field_name(path)}: {message}" for path, message in problems)
            raise RejectedError(f"signal plan {self.number} ({self.name}) is unsafe: {text}",
                                code="unsafe_plan")

    def table(self) -> dict[str, int | bool]:
        """The plan as one slot of the controller's plan table, by register name."""
        out: dict[str, int | bool] = {"number": self.number, "cycle": self.cycle_s,
                                      "offset": self.offset_s}
        for n in range(1, MAX_PHASES + 1):
            phase = self.phases[n - 1] if n <= len(self.phases) else None
            out[f"min_green_{n}"] = phase.min_green_s if phase else 0
            out[f"green_{n}"] = phase.green_s if phase else 0
            out[f"amber_{n}"] = phase.amber_s if phase else 0
            out[f"all_red_{n}"] = phase.all_red_s if phase else 0
            out[f"pedestrian_{n}"] = phase.pedestrian if phase else False
        return out

    def held_by(self, slot: Mapping[str, Any]) -> bool:
        """Whether a plan table slot as the controller reports it holds exactly this plan."""
        return all(_same(slot.get(k), v) for k, v in self.table().items())


def _same(got: Any, want: int | bool) -> bool:
    if isinstance(want, bool):
        return got is want or (isinstance(got, int) and bool(got) is want)
    return isinstance(got, int | float) and not isinstance(got, bool) and got == want


@dataclass(frozen=True, slots=True)
class SignalPlanBook:
    """The signal plans of one file, by number."""

    plans: Mapping[int, SignalPlan]
    source: str = "<memory>"

    def get(self, number: int) -> SignalPlan | None:
        return self.plans.get(number)

    def numbers(self) -> list[int]:
        return sorted(self.plans)


class _Parser(Checker):
    """One validation pass over a parsed signal plan document, collecting issues."""

    def _int(self, table: Mapping[str, Any], path: KeyPath, key: str) -> int | None:
        if key not in table:
            self._issue((*path, key), "required field missing")
            return None
        value = table[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self._issue((*path, key), f"expected a whole number of seconds, got "
                                      f"{type_name(value)} {shown(value)}")
            return None
        if value < 0 or value > 0xFFFF:
            self._issue((*path, key), f"{value} is outside 0..65535")
            return None
        return value

    def run(self) -> SignalPlanBook:
        self._keys(self._doc, (), _TOP_KEYS)
        raw = self._doc.get("plan", [])
        if not isinstance(raw, list) or not raw:
            self._issue(("plan",), "no [[plan]] in this file")
            raw = []
        plans: dict[int, SignalPlan] = {}
        numbers: dict[Any, int] = {}  # the line of each number's first plan
        names: dict[Any, int] = {}
        for i, table in enumerate(raw):
            path: KeyPath = ("plan", i)
            if not isinstance(table, dict):
                self._issue(path, "expected a table")
                continue
            # Told apart before the plans are checked: a plan in error keeps its number.
            for key, seen, what in (("number", numbers, "plan"), ("name", names, "name")):
                value = table.get(key)
                if isinstance(value, int | str) and not isinstance(value, bool):
                    if value in seen:
                        self._issue((*path, key), f"{what} {value} is defined twice (first at "
                                                  f"line {seen[value]})")
                    else:
                        seen[value] = self._where.line(path)
            plan = self._plan(table, path)
            if plan is not None:
                plans.setdefault(plan.number, plan)
        self._raise_issues(PlanError)
        return SignalPlanBook(MappingProxyType(dict(sorted(plans.items()))), self._source)

    def _plan(self, table: Mapping[str, Any], path: KeyPath) -> SignalPlan | None:
        self._keys(table, path, _PLAN_KEYS)
        before = len(self._issues)
        number = self._int(table, path, "number")
        name = self._name(table, path, "name") or None
        description = table.get("description", "")
        if not isinstance(description, str):
            self._issue((*path, "description"), f"expected a string, got "
                                                f"{type_name(description)}")
            description = ""
        cycle = self._int(table, path, "cycle_s")
        offset = table.get("offset_s", 0)
        offset = self._int({"offset_s": offset}, path, "offset_s")
        raw = table.get("phase")
        phases: list[Phase] = []
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            self._issue((*path, "phase"), "expected [[plan.phase]] tables")
            raw = []
        for j, item in enumerate(raw):
            phase = self._phase(item, (*path, "phase", j))
            if phase is not None:
                phases.append(phase)
        if (len(self._issues) != before or number is None or name is None or cycle is None
                or offset is None):
            return None
        plan = SignalPlan(number, name, cycle, offset, tuple(phases), description,
                          self._where.line(path))
        for sub, message in plan.problems():
            self._issue((*path, *sub), message)
        return plan if len(self._issues) == before else None

    def _phase(self, table: Mapping[str, Any], path: KeyPath) -> Phase | None:
        self._keys(table, path, _PHASE_KEYS)
        before = len(self._issues)
        values = {key: self._int(table, path, key)
                  for key in ("min_green_s", "green_s", "amber_s", "all_red_s")}
        pedestrian = table.get("pedestrian", False)
        if not isinstance(pedestrian, bool):
            self._issue((*path, "pedestrian"), f"expected true or false, got "
                                               f"{type_name(pedestrian)} {shown(pedestrian)}")
        if len(self._issues) != before:
            return None
        return Phase(int(values["min_green_s"] or 0), int(values["green_s"] or 0),
                     int(values["amber_s"] or 0), int(values["all_red_s"] or 0),
                     bool(pedestrian), self._where.line(path))


def parse_signal_plans(text: str, source: str) -> SignalPlanBook:
    """Validate signal plan TOML ``text`` (``source`` names it in issues)."""
    return _Parser(text, source, parse_toml(text, source, PlanError)).run()


def load_signal_plans(path: str | os.PathLike[str]) -> SignalPlanBook:
    """Read and validate a signal plan file."""
    return parse_signal_plans(read_text(path, PlanError), os.fspath(path))


#: Where the shipped signal plans are, as issues name them.
BUILTIN_SOURCE: Final = "actors/signal_plans.toml"


@functools.cache
def builtin_signal_plans() -> SignalPlanBook:
    """The shipped ``actors/signal_plans.toml`` (read once)."""
    text = importlib.resources.files("actors").joinpath("signal_plans.toml").read_text(
        encoding="utf-8")
    return parse_signal_plans(text, BUILTIN_SOURCE)
