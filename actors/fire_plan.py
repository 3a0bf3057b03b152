"""The buildings' fire plan as data: what a building does when its fire alarm is raised.

``actors/plans/fire.toml`` holds one ``[fire]`` table: a description, the
confirmation step ``confirm_s`` and the steps, each naming what it does::

    [fire]
    confirm_s = 0.0                 # 0: act at once; more: wait for an operator that long

    [[fire.step]]
    do = "unlock_doors"
    doors = "evacuation"            # the building's doors with this tag (attrs.doors)

    [[fire.step]]
    do = "camera_preset"
    preset = "fire"                 # the watching cameras' own number for this name

    [[fire.step]]
    do = "intervention"
    role = "fire_safety"            # the vehicle role dispatch sends

>>> plan = builtin_fire_plan()
>>> [s.do for s in plan.steps]
['unlock_doors', 'camera_preset', 'intervention']

:func:`parse_fire_plan` checks a file on its own (keys, the step kinds, door
tags of :data:`runtime.inventory.DOOR_TAGS`, names) and :meth:`FirePlan.check`
against an inventory (a door tag no building has, a preset no watching camera
has, a role no vehicle has); both raise :class:`~runtime.errors.PlanError`
with one ``"{file}:{line}: {field}: {message}"`` line per problem. The service
reads the shipped plan and checks it against its inventory before it starts
anything (:meth:`actors.building.Building.check_inventory`): a broken plan stops
``commandpost run`` with its file and line, not a building at its first fire.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from runtime.datafile import Checker, KeyPath, parse_toml, read_text, shown, type_name
from runtime.errors import PlanError
from runtime.inventory import DOOR_TAGS, Inventory

__all__ = [
    "BUILTIN_FIRE_SOURCE",
    "FIRE_STEPS",
    "FirePlan",
    "FireStep",
    "builtin_fire_plan",
    "builtin_fire_text",
    "load_fire_plan",
    "parse_fire_plan",
]

#: What a step may do, and the one key that says what it acts on.
FIRE_STEPS: Final = {"unlock_doors": "doors", "camera_preset": "preset", "intervention": "role"}
#: The longest confirmation a plan may wait for: a fire does not wait longer.
MAX_CONFIRM_S: Final = 600.0
_PLAN_KEYS: Final = ("description", "confirm_s", "step")


@dataclass(frozen=True, slots=True)
class FireStep:
    """One action of the plan: ``do`` and what it acts on (a door tag, a preset, a role)."""

    do: str
    target: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class FirePlan:
    """The fire plan: its confirmation step and its actions, in file order."""

    description: str
    confirm_s: float
    steps: tuple[FireStep, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.confirm_s) and 0.0 <= self.confirm_s <= MAX_CONFIRM_S):
            raise PlanError([f"{self.source}:0: fire.confirm_s: {self.confirm_s!r} is outside "
                             f"0..{MAX_CONFIRM_S:g}"])

    def step(self, do: str) -> FireStep | None:
        """The step that does ``do``, or None when the plan does not."""
        return next((s for s in self.steps if s.do == do), None)

    def check(self, inventory: Inventory) -> None:
        """Refuse a plan whose door tag, preset or role nothing of ``inventory`` has.

        A kind absent from the inventory leaves its step nothing to act on
        (not an error); present, none of it having the step's target is.
        """
        issues: list[tuple[int, str]] = []
        buildings = [eq for eq in inventory.equipment if eq.kind == "building"]
        watching = [eq for eq in inventory.equipment
                    if eq.kind == "camera" and isinstance(eq.attrs.get("watches"), str)]
        vehicles = [eq for eq in inventory.equipment if eq.kind == "vehicle"]
        for i, s in enumerate(self.steps):
            where = f"{self.source}:{s.line}: fire.step[{i}]"
            if s.do == "unlock_doors" and buildings and not any(
                    s.target in (eq.attrs.get("doors") or {}) for eq in buildings):
                issues.append((s.line, f"{where}.doors: no building of the inventory has "
                                       f"doors tagged {s.target!r}"))
            elif s.do == "camera_preset" and watching and not any(
                    s.target in (eq.attrs.get("presets") or {}) for eq in watching):
                issues.append((s.line, f"{where}.preset: no camera watching a building has a "
                                       f"preset {s.target!r}"))
            elif s.do == "intervention" and vehicles and not any(
                    eq.attrs.get("role") == s.target for eq in vehicles):
                issues.append((s.line, f"{where}.role: no vehicle of the inventory has role "
                                       f"{s.target!r}"))
        if issues:
            raise PlanError([text for _, text in sorted(issues)])


class _Parser(Checker):
    """One validation pass over a parsed fire plan document, collecting issues."""

    def run(self) -> FirePlan:
        self._keys(self._doc, (), ("fire",))
        body = self._doc.get("fire")
        if not isinstance(body, dict):
            self._issue(("fire",), "expected a [fire] table")
            body = {}
        path: KeyPath = ("fire",)
        self._keys(body, path, _PLAN_KEYS)
        description = body.get("description", "")
        if not isinstance(description, str):
            self._issue((*path, "description"), f"expected a string, got "
                                                f"{type_name(description)}")
        confirm = body.get("confirm_s", 0.0)
        if (isinstance(confirm, bool) or not isinstance(confirm, int | float)
                or not math.isfinite(confirm) or not 0.0 <= confirm <= MAX_CONFIRM_S):
            self._issue((*path, "confirm_s"), f"expected seconds in 0..{MAX_CONFIRM_S:g}, "
                                              f"got {shown(confirm)}")
            confirm = 0.0
        raw = body.get("step")
        if not isinstance(raw, list) or not raw:
            self._issue((*path, "step"), "a plan needs at least one [[fire.step]]")
            raw = []
        steps: list[FireStep] = []
        for i, item in enumerate(raw):
            spath: KeyPath = (*path, "step", i)
            table = self._table(item, spath)
            step = None if table is None else self._step(table, spath)
            if step is None:
                continue
            if any(s.do == step.do for s in steps):
                self._issue((*spath, "do"), f"the plan already has a {step.do!r} step")
                continue
            steps.append(step)
        self._raise_issues(PlanError)
        return FirePlan(str(description), float(confirm), tuple(steps), self._source)

    def _step(self, table: Mapping[str, Any], path: KeyPath) -> FireStep | None:
        do = table.get("do")
        if not isinstance(do, str) or do not in FIRE_STEPS:
            self._issue((*path, "do"), f"unknown step {shown(do)} (expected one of "
                                       f"{', '.join(FIRE_STEPS)})")
            return None
        key = FIRE_STEPS[do]
        self._keys(table, path, ("do", key))
        target = self._name(table, path, key)
        if not target:
            return None
        if do == "unlock_doors" and target not in DOOR_TAGS:
            guess = difflib.get_close_matches(target, DOOR_TAGS, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            self._issue((*path, key), f"unknown door tag {target!r} ({hint}expected among "
                                      f"{', '.join(DOOR_TAGS)})")
            return None
        return FireStep(do, target, self._where.line(path))


def parse_fire_plan(text: str, source: str) -> FirePlan:
    """Validate fire plan TOML ``text`` (``source`` names it in issues) into a :class:`FirePlan`."""
    return _Parser(text, source, parse_toml(text, source, PlanError)).run()


def load_fire_plan(path: str | os.PathLike[str]) -> FirePlan:
    """Read and validate a fire plan file."""
    return parse_fire_plan(read_text(path, PlanError), os.fspath(path))


#: Where the shipped fire plan is, as issues name it.
BUILTIN_FIRE_SOURCE: Final = "actors/plans/fire.toml"


def builtin_fire_text() -> str:
    """The text of the shipped fire plan."""
    return importlib.resources.files("actors").joinpath("plans/fire.toml").read_text(
        encoding="utf-8")


@functools.cache
def builtin_fire_plan() -> FirePlan:
    """The shipped ``actors/plans/fire.toml`` (read once)."""
    return parse_fire_plan(builtin_fire_text(), BUILTIN_FIRE_SOURCE)
