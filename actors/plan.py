"""Crisis plans as data: which equipment each mode sets, and to what.

A plan file (``actors/plans/crisis.toml`` ships the metropolis's ``snow`` and
``flood``) holds one ``[plan.MODE]`` per mode, each a list of steps. A step
selects equipment of one ``kind`` in the municipalities a plan is activated
for, and says what to set::

    [plan.flood]
    description = "Flood: close the flood-prone streets"

    [[plan.flood.step]]
    kind = "access_terminal"
    tags = ["flood_prone"]          # every one of these tags (runtime.inventory.TAGS)
    set = { bollard = "up" }        # absolute setpoints, checked by the kind's field table
    masks = ["reconcile_required"]  # alarms of these entities that the plan's action causes

    [[plan.flood.step]]
    kind = "camera"
    preset = "flood"                # each camera's own number for this preset name

A step may also narrow its selection by ``role`` (a vehicle's ``attrs.role``)
or to explicit ``ids``. A vehicle step that sets a crew ``message`` selects only
the vehicles that can receive one (:func:`actors.vehicle.has_radio`). A string
setpoint may say ``{municipality}`` (the slug of the entity's municipality). When
two steps set the same field of one entity, the later one wins.

>>> book = builtin_plans()
>>> sorted(book.plans)
['flood', 'snow']

:func:`parse_plans` checks a file on its own (kinds, fields and their values
by :data:`actors.equipment` field tables, tags, roles, presets' names, alarm
conditions) and :meth:`PlanBook.check` against an inventory (named equipment,
roles and presets that exist); both raise :class:`~runtime.errors.PlanError`
with one ``"{file}:{line}: {field}: {message}"`` line per problem.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from actors.alarms import builtin_conditions
from actors.registry import BEHAVIOURS
from actors.vehicle import has_radio
from runtime.datafile import (
    NAME_PATTERN,
    Checker,
    KeyPath,
    parse_toml,
    read_text,
    shown,
    type_name,
)
from runtime.errors import PlanError, RejectedError
from runtime.inventory import ID_PATTERN, TAGS, Equipment, Inventory, tags_of

__all__ = [
    "BUILTIN_SOURCE",
    "NORMAL",
    "Action",
    "Candidate",
    "CrisisPlan",
    "PlanBook",
    "Step",
    "builtin_plans",
    "builtin_text",
    "load_plans",
    "parse_plans",
]

#: The mode of a municipality with no plan active: no plan may take its name.
NORMAL: Final = "normal"
#: The one placeholder a string setpoint may hold.
_PLACEHOLDER: Final = "municipality"

_TOP_KEYS: Final = ("plan",)
_PLAN_KEYS: Final = ("description", "step")
_STEP_KEYS: Final = ("kind", "tags", "role", "ids", "set", "preset", "masks")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A piece of equipment as plans see it: what a step may select it by.

    The crisis coordinator is given these (:meth:`to_row`) instead of the inventory.
    """

    id: str
    kind: str
    municipality: str
    tags: frozenset[str] = frozenset()
    role: str = ""
    presets: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    radio: bool = False  # a vehicle that receives crew messages

    @classmethod
    def of(cls, eq: Equipment) -> Candidate:
        presets = eq.attrs.get("presets")
        role = eq.attrs.get("role")
        return cls(eq.id, eq.kind, eq.municipality, tags_of(eq),
                   role if isinstance(role, str) else "",
                   MappingProxyType({str(k): int(v) for k, v in presets.items()})
                   if isinstance(presets, Mapping) else MappingProxyType({}),
                   eq.kind == "vehicle" and has_radio(eq.attrs))

    def to_row(self) -> list[Any]:
        """A compact msgpack-friendly row: ``[id, kind, municipality, tags, role, presets,
        radio]``."""
        return [self.id, self.kind, self.municipality, sorted(self.tags), self.role,
                dict(self.presets), self.radio]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Candidate:
        ident, kind, municipality, tags, role, presets, *rest = row
        return cls(str(ident), str(kind), str(municipality), frozenset(map(str, tags)),
                   str(role), MappingProxyType({str(k): int(v) for k, v in presets.items()}),
                   bool(rest and rest[0] is True))


@dataclass(frozen=True, slots=True)
class Action:
    """What a plan does to one entity: the setpoints it sends and the alarms it masks."""

    setpoints: Mapping[str, Any]
    masks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    """One selection of equipment and what the plan sets on it (module doc)."""

    kind: str
    setpoints: Mapping[str, Any]
    tags: frozenset[str] = frozenset()
    role: str = ""
    ids: frozenset[str] = frozenset()
    preset: str = ""
    masks: tuple[str, ...] = ()
    line: int = 0

    def selects(self, c: Candidate) -> bool:
        """Whether this step applies to ``c`` (in whatever municipality)."""
        return (c.kind == self.kind and self.tags <= c.tags
                and (not self.role or c.role == self.role)
                and (not self.ids or c.id in self.ids)
                and (not self.preset or self.preset in c.presets)
                and (self.kind != "vehicle" or "message" not in self.setpoints or c.radio))

    def setpoints_for(self, c: Candidate) -> dict[str, Any]:
        """The setpoints of this step for ``c``: its preset's number, its municipality."""
        out = {k: v.replace("{" + _PLACEHOLDER + "}", c.municipality) if isinstance(v, str)
               else v for k, v in self.setpoints.items()}
        if self.preset:
            out["preset"] = c.presets[self.preset]
        return out


@dataclass(frozen=True, slots=True)
class CrisisPlan:
    """One mode's steps, in file order."""

    mode: str
    description: str
    steps: tuple[Step, ...]
    line: int = 0

    def resolve(self, candidates: Iterable[Candidate],
                municipalities: Iterable[str]) -> dict[str, Action]:
        """What the plan does to each entity of ``municipalities``, by entity id."""
        wanted = frozenset(municipalities)
        out: dict[str, Action] = {}
        for c in candidates:
            if c.municipality not in wanted:
                continue
            setpoints: dict[str, Any] = {}
            masks: list[str] = []
            for step in self.steps:
                if step.selects(c):
                    setpoints.update(step.setpoints_for(c))
                    masks += [m for m in step.masks if m not in masks]
            if setpoints:
                out[c.id] = Action(setpoints, tuple(masks))
        return out


@dataclass(frozen=True, slots=True)
class PlanBook:
    """The plans of one file, by mode."""

    plans: Mapping[str, CrisisPlan]
    source: str = "<memory>"

    def plan(self, mode: str) -> CrisisPlan:
        """The plan of ``mode``; :class:`KeyError` when the book has none."""
        return self.plans[mode]

    def candidates(self, equipment: Iterable[Equipment]) -> list[Candidate]:
        """The equipment that some step of some plan selects, as :class:`Candidate` rows."""
        steps = [s for p in self.plans.values() for s in p.steps]
        out = []
        for eq in equipment:
            c = Candidate.of(eq)
            if any(s.selects(c) for s in steps):
                out.append(c)
        return out

    def check(self, inventory: Inventory) -> None:
        """Refuse plans naming equipment, roles or presets that ``inventory`` lacks.

        A role or a preset is unknown when the inventory has equipment of the
        step's kind and none of it has that role or preset (an inventory with
        no equipment of the kind leaves the step nothing to do).

        Raises :class:`PlanError` with the line of each step at fault; every
        setpoint the plans would send (``{municipality}`` filled in) is checked
        again by its kind's field table.
        """
        issues: list[tuple[int, str]] = []
        cands = [Candidate.of(eq) for eq in inventory.equipment]
        kinds = {c.id: c.kind for c in cands}
        for mode, plan in self.plans.items():
            for i, step in enumerate(plan.steps):
                where = f"{self.source}:{step.line}: plan.{mode}.step[{i}]"
                for ident in sorted(step.ids):
                    if ident not in kinds:
                        guess = difflib.get_close_matches(ident, list(kinds), n=1)
                        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                        issues.append((step.line, f"{where}.ids: unknown equipment "
                                                   f"{ident!r}{hint}"))
                    elif kinds[ident] != step.kind:
                        issues.append((step.line, f"{where}.ids: {ident!r} is a "
                                                   f"{kinds[ident]}, not a {step.kind}"))
                same_kind = [c for c in cands if c.kind == step.kind]
                # With no equipment of its kind at all, a step has nothing to act on; with
                # some, a role or a preset none of them has is a mistake in the plan.
                if step.role and same_kind and not any(c.role == step.role for c in same_kind):
                    issues.append((step.line, f"{where}.role: no {step.kind} of the inventory "
                                               f"has role {step.role!r}"))
                if (step.preset and same_kind
                        and not any(step.preset in c.presets for c in same_kind)):
                    issues.append((step.line, f"{where}.preset: no {step.kind} of the "
                                               f"inventory has a preset {step.preset!r}"))
                fields = BEHAVIOURS[step.kind].FIELDS
                for c in same_kind:
                    if not step.selects(c):
                        continue
                    for name, value in step.setpoints_for(c).items():
                        try:
                            fields[name].check(name, value)
                        except RejectedError as exc:
                            issues.append((step.line, f"{where}.set.{name}: for {c.id}: {exc}"))
                            break
        if issues:
            issues.sort()
            raise PlanError(list(dict.fromkeys(text for _, text in issues)))


class _Parser(Checker):
    """One validation pass over a parsed plan document, collecting issues."""

    def __init__(self, text: str, source: str, doc: dict[str, Any]) -> None:
        super().__init__(text, source, doc)
        self._conditions = builtin_conditions().conditions

    def _strings(self, table: Mapping[str, Any], path: KeyPath, key: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._issue((*path, key), f"expected an array of strings, got {type_name(value)} "
                                      f"{shown(value)}")
            return []
        if len(set(value)) != len(value):
            self._issue((*path, key), "a name is listed twice")
        return value

    def run(self) -> PlanBook:
        self._keys(self._doc, (), _TOP_KEYS)
        plans: dict[str, CrisisPlan] = {}
        table = self._table(self._doc.get("plan", {}), ("plan",)) or {}
        if not table:
            self._issue(("plan",), "no [plan.MODE] in this file")
        for mode, raw in table.items():
            path: KeyPath = ("plan", mode)
            body = self._table(raw, path)
            if body is None:
                continue
            if mode == NORMAL:
                self._issue(path, f"{NORMAL!r} is the mode without a plan: no plan takes it")
            elif not NAME_PATTERN.match(mode):
                self._issue(path, f"mode {mode!r} does not match {NAME_PATTERN.pattern}")
            plan = self._plan(mode, body, path)
            if plan is not None:
                plans[mode] = plan
        self._raise_issues(PlanError)
        return PlanBook(MappingProxyType(plans), self._source)

    def _plan(self, mode: str, body: Mapping[str, Any], path: KeyPath) -> CrisisPlan | None:
        self._keys(body, path, _PLAN_KEYS)
        before = len(self._issues)
        description = body.get("description", "")
        if not isinstance(description, str):
            self._issue((*path, "description"), f"expected a string, got "
                                                f"{type_name(description)}")
        raw = body.get("step")
        if not isinstance(raw, list) or not raw:
            self._issue((*path, "step"), f"a plan needs at least one [[plan.{mode}.step]]")
            raw = []
        steps = []
        for i, item in enumerate(raw):
            spath: KeyPath = (*path, "step", i)
            table = self._table(item, spath)
            if table is not None and (step := self._step(table, spath)) is not None:
                steps.append(step)
        if len(self._issues) != before:
            return None
        return CrisisPlan(mode, str(description), tuple(steps), self._where.line(path))

    def _step(self, table: Mapping[str, Any], path: KeyPath) -> Step | None:
        self._keys(table, path, _STEP_KEYS)
        before = len(self._issues)
        kind = table.get("kind")
        behaviour = BEHAVIOURS.get(kind) if isinstance(kind, str) else None
        if behaviour is None:
            text = repr(kind) if isinstance(kind, str) else shown(kind)
            self._issue((*path, "kind"), f"unknown kind {text} (expected one of "
                                         f"{', '.join(BEHAVIOURS)})")
            return None
        assert isinstance(kind, str)
        tags = self._strings(table, path, "tags")
        for tag in tags:
            if tag not in TAGS:
                guess = difflib.get_close_matches(tag, TAGS, n=1)
                hint = f"did you mean {guess[0]!r}? " if guess else ""
                self._issue((*path, "tags"), f"unknown tag {tag!r} ({hint}expected among "
                                             f"{', '.join(TAGS)})")
        role = ""
        if "role" in table:
            role = self._name(table, path, "role")
            if kind != "vehicle":
                self._issue((*path, "role"), f"only a vehicle has a role (this step is of "
                                             f"{kind})")
        ids = self._strings(table, path, "ids")
        for ident in ids:
            if not ID_PATTERN.match(ident):
                self._issue((*path, "ids"), f"{ident!r} is not an equipment id")
        preset = ""
        if "preset" in table:
            preset = self._name(table, path, "preset")
            if "preset" not in behaviour.FIELDS:
                self._issue((*path, "preset"), f"a {kind} has no presets")
        setpoints = self._setpoints(table, path, behaviour.FIELDS)
        # What the kind adds to its field table (a crossroad: a signal plan that exists).
        for name, message in behaviour.check_setpoints(setpoints):
            self._issue((*path, "set", name), message)
        if preset and "preset" in setpoints:
            self._issue((*path, "set", "preset"), "set either preset = NAME or set.preset")
        if not setpoints and not preset and len(self._issues) == before:
            self._issue(path, "the step sets nothing (needs set or preset)")
        masks = self._strings(table, path, "masks")
        for name in masks:
            if name not in self._conditions:
                guess = difflib.get_close_matches(name, list(self._conditions), n=1)
                hint = f"did you mean {guess[0]!r}? " if guess else ""
                self._issue((*path, "masks"), f"unknown alarm condition {name!r} ({hint}see "
                                              "actors/alarm_conditions.toml)")
        if len(self._issues) != before:
            return None
        return Step(kind, MappingProxyType(setpoints), frozenset(tags), role, frozenset(ids),
                    preset, tuple(masks), self._where.line(path))

    def _setpoints(self, table: Mapping[str, Any], path: KeyPath,
                   fields: Mapping[str, Any]) -> dict[str, Any]:
        if "set" not in table:
            return {}
        body = self._table(table["set"], (*path, "set")) or {}
        out: dict[str, Any] = {}
        for name, value in body.items():
            where = (*path, "set", name)
            spec = fields.get(name)
            if spec is None:
                self._issue(where, f"no writable field {name!r} (writable: "
                                   f"{', '.join(sorted(fields))})")
                continue
            if isinstance(value, str):
                try:
                    names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
                except ValueError as exc:
                    self._issue(where, f"not a valid template: {exc}")
                    continue
                if names - {_PLACEHOLDER}:
                    self._issue(where, f"only {{{_PLACEHOLDER}}} may be filled in, not "
                                       f"{', '.join(sorted(names - {_PLACEHOLDER}))}")
                    continue
            try:
                out[name] = spec.check(name, value)
            except RejectedError as exc:
                self._issue(where, str(exc))
        return out


def parse_plans(text: str, source: str) -> PlanBook:
    """Validate plan TOML ``text`` (``source`` names it in issues) into a :class:`PlanBook`."""
    return _Parser(text, source, parse_toml(text, source, PlanError)).run()


def load_plans(path: str | os.PathLike[str]) -> PlanBook:
    """Read and validate a plan file."""
    return parse_plans(read_text(path, PlanError), os.fspath(path))


#: Where the shipped crisis plans are, as issues name them.
BUILTIN_SOURCE: Final = "actors/plans/crisis.toml"


def builtin_text() -> str:
    """The text of the shipped crisis plans."""
    resource = importlib.resources.files("actors").joinpath("plans/crisis.toml")
    return resource.read_text(encoding="utf-8")


@functools.cache
def builtin_plans() -> PlanBook:
    """The shipped ``actors/plans/crisis.toml`` (read once)."""
    return parse_plans(builtin_text(), BUILTIN_SOURCE)
