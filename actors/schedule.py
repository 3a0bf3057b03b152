"""Schedules as data: the steps of a day, by day profile, on the city's clock.

A schedule file (``actors/schedules/*.toml`` ship the metropolis's) holds
``[[schedule]]`` tables, each for one kind of equipment, each a list of steps::

    [[schedule]]
    name = "road_lighting"
    kind = "lighting_circuit"

      [[schedule.step]]
      name = "dusk"
      at = "sunset+10m"        # HH:MM local time, or sunset / sunrise ± N m | N h
      days = ["all"]           # all, weekday, saturday, sunday_holiday
      set = { on = true, dim = 100 }

Times are local to Europe/Paris (daylight saving included); ``sunset`` and
``sunrise`` are astral's, for the equipment's coordinates and the date. A
date is a ``sunday_holiday`` on Sundays and France's public holidays (the
``holidays`` package), a ``saturday`` on other Saturdays, a ``weekday``
otherwise. On each date the steps whose days include it happen at their
times; the step **in force** at an instant is the last one that happened
(looking back up to a week), and the **next** is the first to come.

:func:`parse_schedules` checks a file on its own (keys, names, times, days,
two steps of one schedule at the same time on a common day, and each step's
``set`` by its kind's check) and raises :class:`~runtime.errors.ScheduleError`
with one ``"{file}:{line}: {field}: {message}"`` line per problem.

An entity follows its schedule with a :class:`Timetable`: at start and at
each transition it asks for the step in force, applies it when it is not the
one it recorded as applied (``step`` and ``since``, kept in its checkpoint),
and arms a timer for the next. A host killed across a transition thus applies
the step once when its entities come back, late by the recovery time, never
twice and never missed.

Precedence of what sets a field (:class:`Layers`) is data too
(:data:`PRECEDENCE`): a crisis plan over an operator's override (which
expires by itself) over the schedule.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import importlib.resources
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import holidays
from astral import Observer
from astral.sun import sunrise, sunset

from runtime.clock import CITY_TZ
from runtime.datafile import Checker, KeyPath, parse_toml, read_text
from runtime.errors import ScheduleError

__all__ = [
    "DAY_PROFILES",
    "PRECEDENCE",
    "At",
    "Layers",
    "Occurrence",
    "Schedule",
    "ScheduleBook",
    "Step",
    "Timetable",
    "builtin_schedules",
    "day_profile",
    "load_schedules",
    "parse_schedules",
]

#: Day profiles a step can name; ``all`` is every day.
DAY_PROFILES: Final = ("all", "weekday", "saturday", "sunday_holiday")
#: What may set an equipment's field, strongest first: a crisis plan, then an operator's
#: override (until it expires), then the schedule.
PRECEDENCE: Final = ("crisis", "operator", "schedule")
#: How far back and ahead the step in force and the next are looked for (days).
_HORIZON_DAYS: Final = 8
_AT_RE: Final = re.compile(
    r"^(?:(?P<hh>[01]\d|2[0-3]):(?P<mm>[0-5]\d)"
    r"|(?P<sun>sunset|sunrise)(?:\s*(?P<sign>[+-])\s*(?P<n>\d{1,4})\s*(?P<unit>m|h))?)$")
_TOP_KEYS: Final = ("schedule",)
_SCHEDULE_KEYS: Final = ("name", "kind", "description", "step")
_STEP_KEYS: Final = ("name", "at", "days", "set")

#: A kind's check of one step's ``set``: the problems, as ``(field, message)`` pairs.
SetCheck = Callable[[Mapping[str, Any]], list[tuple[str, str]]]


@functools.lru_cache(maxsize=64)
def _holidays(year: int) -> holidays.HolidayBase:
    return holidays.country_holidays("FR", years=year)


def day_profile(date: datetime.date) -> str:
    """``weekday``, ``saturday`` or ``sunday_holiday`` (Sundays and France's public holidays)."""
    if date.weekday() == 6 or date in _holidays(date.year):
        return "sunday_holiday"
    return "saturday" if date.weekday() == 5 else "weekday"


@dataclass(frozen=True, slots=True)
class At:
    """A step's time of day: a local clock time, or sunset / sunrise plus an offset."""

    text: str
    minutes: int = 0  # of the day (clock time) or the offset (sun)
    sun: str = ""  # "sunset", "sunrise" or "" for a clock time

    @classmethod
    def parse(cls, text: str) -> At:
        m = _AT_RE.match(text.strip())
        if m is None:
            raise ValueError(f"{text!r} is not HH:MM, nor sunset/sunrise ± N m|h")
        if m.group("hh") is not None:
            return cls(text, int(m.group("hh")) * 60 + int(m.group("mm")))
        n = int(m.group("n") or 0) * (60 if m.group("unit") == "h" else 1)
        if n > 12 * 60:
            raise ValueError(f"{text!r}: an offset from the sun of more than 12 h")
        return cls(text, -n if m.group("sign") == "-" else n, m.group("sun"))

    def on(self, date: datetime.date, where: Observer) -> datetime.datetime | None:
        """When this happens on ``date`` (aware, local); None when the sun does not set or
        rise that day there."""
        if not self.sun:
            naive = datetime.datetime.combine(date, datetime.time(self.minutes // 60,
                                                                  self.minutes % 60))
            # A clock time that daylight saving skips happens at the same instant an hour on.
            return naive.replace(tzinfo=CITY_TZ)
        try:
            event = (sunset if self.sun == "sunset" else sunrise)(where, date, tzinfo=CITY_TZ)
        except ValueError:
            return None
        return event + datetime.timedelta(minutes=self.minutes)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a schedule: at ``at`` on ``days``, set ``set``."""

    name: str
    at: At
    days: tuple[str, ...]
    set: Mapping[str, Any]
    line: int = 0

    def happens_on(self, profile: str) -> bool:
        return "all" in self.days or profile in self.days


@dataclass(frozen=True, slots=True)
class Schedule:
    """A named list of steps for one kind of equipment."""

    name: str
    kind: str
    steps: tuple[Step, ...]
    description: str = ""
    source: str = "<memory>"

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """A step happening at ``at`` (epoch seconds)."""

    step: Step
    at: float

    @property
    def key(self) -> tuple[str, float]:
        """What an entity records as applied: the step and when it came into force."""
        return self.step.name, round(self.at, 3)


class Timetable:
    """A schedule at one place: when its steps happen, which is in force, which is next."""

    def __init__(self, schedule: Schedule, lat: float, lon: float) -> None:
        self.schedule = schedule
        self._where = Observer(latitude=lat, longitude=lon)

    def day(self, date: datetime.date) -> list[Occurrence]:
        """The steps happening on ``date``, in time order."""
        profile = day_profile(date)
        out = []
        for step in self.schedule.steps:
            if step.happens_on(profile):
                when = step.at.on(date, self._where)
                if when is not None:
                    out.append(Occurrence(step, when.timestamp()))
        out.sort(key=lambda o: o.at)
        return out

    def in_force(self, t: float) -> Occurrence | None:
        """The last step that happened at or before ``t`` (None: none within a week)."""
        today = datetime.datetime.fromtimestamp(t, CITY_TZ).date()
        for back in range(_HORIZON_DAYS):
            past = [o for o in self.day(today - datetime.timedelta(days=back)) if o.at <= t]
            if past:
                return past[-1]
        return None

    def next_after(self, t: float) -> Occurrence | None:
        """The first step to happen after ``t`` (None: none within a week)."""
        today = datetime.datetime.fromtimestamp(t, CITY_TZ).date()
        for ahead in range(_HORIZON_DAYS):
            coming = [o for o in self.day(today + datetime.timedelta(days=ahead)) if o.at > t]
            if coming:
                return coming[0]
        return None

    def view(self, t: float, applied: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``{"name", "step", "since", "next": {"step", "at"}}`` as the equipment view shows it.

        ``applied`` is what the entity recorded (``step``, ``since``); without it, the
        step the timetable says is in force.
        """
        now = self.in_force(t)
        nxt = self.next_after(t)
        step = (applied or {}).get("step", now.step.name if now else None)
        since = (applied or {}).get("since", now.at if now else None)
        return {"name": self.schedule.name, "step": step, "since": since,
                "next": None if nxt is None else {"step": nxt.step.name, "at": nxt.at}}


class Layers:
    """What each source (:data:`PRECEDENCE`) asks of an entity's fields, and what wins.

    Kept in the entity's state (a plain dict, checkpointed with it):
    ``{source: {"set": {field: value}, "until": epoch | None, "by": caller}}``.
    An operator's layer may expire (``until``); the others hold until cleared.
    """

    def __init__(self, state: dict[str, Any], precedence: Sequence[str] = PRECEDENCE) -> None:
        self.state = state
        self.precedence = tuple(precedence)

    def put(self, source: str, fields: Mapping[str, Any], *, until: float | None = None,
            by: str = "") -> None:
        if source not in self.precedence:
            raise ValueError(f"unknown source {source!r} (known: {', '.join(self.precedence)})")
        layer = self.state.get(source) or {"set": {}, "until": None, "by": ""}
        self.state[source] = {"set": {**layer["set"], **fields}, "until": until,
                              "by": by or layer.get("by", "")}

    def clear(self, source: str, fields: Iterable[str] | None = None) -> None:
        """Drop ``source``'s ``fields`` (all of them when None)."""
        layer = self.state.get(source)
        if layer is None:
            return
        if fields is None:
            del self.state[source]
            return
        kept = {k: v for k, v in layer["set"].items() if k not in set(fields)}
        if kept:
            layer["set"] = kept
        else:
            del self.state[source]

    def expire(self, now: float) -> list[str]:
        """Drop the layers whose time is up; the sources dropped."""
        gone = [s for s, layer in self.state.items()
                if layer.get("until") is not None and float(layer["until"]) <= now]
        for s in gone:
            del self.state[s]
        return gone

    def effective(self, now: float | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """``(fields, source of each)``: per field, the strongest live source's value."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for source in reversed(self.precedence):
            layer = self.state.get(source)
            if layer is None:
                continue
            until = layer.get("until")
            if now is not None and until is not None and float(until) <= now:
                continue
            for k, v in layer["set"].items():
                values[k] = v
                sources[k] = source
        return values, sources

    def next_expiry(self) -> float | None:
        """When the first layer with an expiry ends (None: none has one)."""
        times = [float(layer["until"]) for layer in self.state.values()
                 if layer.get("until") is not None]
        return min(times) if times else None

    def control(self, names: Iterable[str], desired: Mapping[str, Any], now: float
                ) -> dict[str, Any]:
        """What the equipment view shows of the layers: ``{"precedence", "fields",
        "layers"}``, each of ``names`` with its effective ``value``, the ``source`` that
        sets it, ``by`` whom and ``until`` when (a field no layer holds but ``desired``
        does: its desired value, source None), and every source's layer as kept."""
        values, sources = self.effective(now)
        fields: dict[str, Any] = {}
        for name in names:
            if name in values:
                layer = self.state.get(sources[name]) or {}
                fields[name] = {"value": values[name], "source": sources[name],
                                "by": layer.get("by", ""), "until": layer.get("until")}
            elif name in desired:
                fields[name] = {"value": desired[name], "source": None}
        return {"precedence": list(self.precedence), "fields": fields,
                "layers": {k: dict(v) for k, v in self.state.items()}}


@dataclass(frozen=True, slots=True)
class ScheduleBook:
    """The schedules of one or more files, by name."""

    schedules: Mapping[str, Schedule]

    def get(self, name: str) -> Schedule:
        """The schedule ``name``; :class:`KeyError` when there is none."""
        return self.schedules[name]

    def for_kind(self, kind: str) -> list[Schedule]:
        return [s for s in self.schedules.values() if s.kind == kind]

    def refusal(self, name: str, kind: str) -> str | None:
        """Why equipment of ``kind`` cannot follow the schedule ``name`` (None: it can):
        there is no such schedule, or it is another kind's."""
        own = sorted(s.name for s in self.for_kind(kind))
        known = f"the {kind} schedules: {', '.join(own) or 'none'}"
        schedule = self.schedules.get(name)
        if schedule is None:
            guess = difflib.get_close_matches(name, own, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            return f"no schedule is named {name!r} ({hint}{known})"
        if schedule.kind != kind:
            return f"{name!r} is a schedule of {schedule.kind}, not of {kind} ({known})"
        return None


class _Parser(Checker):
    """One validation pass over a parsed schedule document, collecting issues."""

    def __init__(self, text: str, source: str, doc: dict[str, Any],
                 checks: Mapping[str, SetCheck]) -> None:
        super().__init__(text, source, doc)
        self._checks = checks

    def run(self) -> ScheduleBook:
        self._keys(self._doc, (), _TOP_KEYS)
        raw = self._doc.get("schedule", [])
        if not isinstance(raw, list) or not raw:
            self._issue(("schedule",), "no [[schedule]] in this file")
            raw = []
        out: dict[str, Schedule] = {}
        for i, table in enumerate(raw):
            path: KeyPath = ("schedule", i)
            if not isinstance(table, dict):
                self._issue(path, "expected a table")
                continue
            schedule = self._schedule(table, path)
            if schedule is None:
                continue
            if schedule.name in out:
                self._issue((*path, "name"), f"schedule {schedule.name!r} is defined twice")
            out[schedule.name] = schedule
        self._raise_issues(ScheduleError)
        return ScheduleBook(out)

    def _schedule(self, table: Mapping[str, Any], path: KeyPath) -> Schedule | None:
        self._keys(table, path, _SCHEDULE_KEYS)
        name = self._name(table, path, "name")
        kind = table.get("kind")
        if not isinstance(kind, str) or (self._checks and kind not in self._checks):
            known = ", ".join(sorted(self._checks)) or "any kind"
            self._issue((*path, "kind"), f"unknown kind {kind!r} (expected one of {known})")
            kind = ""
        raw_steps = table.get("step", [])
        if not isinstance(raw_steps, list) or not raw_steps:
            self._issue((*path, "step"), "a schedule needs at least one [[schedule.step]]")
            raw_steps = []
        steps: list[Step] = []
        for j, raw in enumerate(raw_steps):
            spath: KeyPath = (*path, "step", j)
            if not isinstance(raw, dict):
                self._issue(spath, "expected a table")
                continue
            step = self._step(raw, spath, kind)
            if step is None:
                continue
            for other in steps:
                if other.name == step.name:
                    self._issue((*spath, "name"), f"step {step.name!r} is named twice")
                common = ("all" in other.days or "all" in step.days
                          or set(other.days) & set(step.days))
                if common and other.at == step.at:
                    self._issue((*spath, "at"), f"overlaps step {other.name!r} "
                                                f"(line {other.line}): both at {step.at.text} "
                                                "on a common day")
            steps.append(step)
        description = table.get("description", "")
        if not isinstance(description, str):
            self._issue((*path, "description"), "expected a string")
            description = ""
        if not name or not kind:
            return None
        return Schedule(name, kind, tuple(steps), description, self._source)

    def _step(self, table: Mapping[str, Any], path: KeyPath, kind: str) -> Step | None:
        self._keys(table, path, _STEP_KEYS)
        name = self._name(table, path, "name")
        at_raw = table.get("at")
        at: At | None = None
        if not isinstance(at_raw, str):
            self._issue((*path, "at"), f"expected a time (HH:MM or sunset/sunrise ± N m|h), "
                                       f"got {at_raw!r}")
        else:
            try:
                at = At.parse(at_raw)
            except ValueError as exc:
                self._issue((*path, "at"), str(exc))
        days_raw = table.get("days", ["all"])
        if isinstance(days_raw, str):
            days_raw = [days_raw]
        days: tuple[str, ...] = ()
        if (not isinstance(days_raw, list) or not days_raw
                or not all(isinstance(d, str) for d in days_raw)):
            self._issue((*path, "days"), f"expected day profiles among {', '.join(DAY_PROFILES)}")
        else:
            bad = [d for d in days_raw if d not in DAY_PROFILES]
            if bad:
                self._issue((*path, "days"), f"unknown day profile {bad[0]!r} (expected one of "
                                             f"{', '.join(DAY_PROFILES)})")
            days = tuple(days_raw)
        setpoints = table.get("set")
        if not isinstance(setpoints, dict) or not setpoints:
            self._issue((*path, "set"), "expected a table of setpoints")
            setpoints = {}
        elif kind and kind in self._checks:
            for fld, message in self._checks[kind](setpoints):
                self._issue((*path, "set", fld), message)
        for k, v in setpoints.items():
            if isinstance(v, float) and not math.isfinite(v):
                self._issue((*path, "set", k), "must be a finite number")
        if not name or at is None or not days:
            return None
        return Step(name, at, days, dict(setpoints), self._where.line(path))


def parse_schedules(text: str, source: str,
                    checks: Mapping[str, SetCheck] | None = None) -> ScheduleBook:
    """The schedules of ``text`` (named ``source`` in errors), checked.

    ``checks`` maps each kind a schedule may name to the check of a step's
    ``set`` (default: the kinds' own, :func:`kind_checks`).
    """
    doc = parse_toml(text, source, ScheduleError)
    return _Parser(text, source, doc, kind_checks() if checks is None else checks).run()


def load_schedules(path: str | os.PathLike[str],
                   checks: Mapping[str, SetCheck] | None = None) -> ScheduleBook:
    """The schedules of the file at ``path``."""
    return parse_schedules(read_text(path, ScheduleError), os.fspath(path), checks)


def kind_checks() -> dict[str, SetCheck]:
    """Each kind's check of a step's ``set``: its field table (:mod:`actors.registry`), and
    what the kind adds (``check_schedule_step``, when it has one)."""
    from actors.registry import BEHAVIOURS

    out: dict[str, SetCheck] = {}
    for kind, behaviour in BEHAVIOURS.items():
        out[kind] = behaviour.check_schedule_step
    return out


@functools.lru_cache(maxsize=1)
def builtin_schedules() -> ScheduleBook:
    """The schedules shipped in ``actors/schedules/`` (every file, merged)."""
    merged: dict[str, Schedule] = {}
    folder = importlib.resources.files("actors") / "schedules"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        book = parse_schedules(entry.read_text(encoding="utf-8"),
                               f"actors/schedules/{entry.name}")
        for name, schedule in book.schedules.items():
            if name in merged:
                raise ScheduleError([f"actors/schedules/{entry.name}: schedule {name!r} is "
                                     f"also in {merged[name].source}"])
            merged[name] = schedule
    return ScheduleBook(merged)
