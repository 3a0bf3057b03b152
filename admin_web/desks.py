"""Desks: what each room of the control room commands and which sensitive views it reads.

The command post merged six rooms (security, municipal police, urban
supervision, traffic, citizen calls, snow); each is a desk, as data
(``admin_web/desks.toml``, checked with file and line like every data file)::

    [view.video]
    kinds = ["camera"]                           # every field and event of a camera

    [view.access_control]
    kinds = ["access_terminal"]
    fields = { building = ["door"] }             # a building's door.N.… fields
    events = { building = ["door_command"] }
    actions = { building = ["lock", "unlock"] }  # what acts on them

    [desk.traffic]
    commands = { crossroad = ["set"] }           # kind -> actions it owns
    views = []                                   # sensitive views it reads
    crisis = []                                  # crisis modes it switches
    requests = false                             # takes citizens' calls

A user with desks (not an admin) is held by them on top of his role and
municipalities::

    book = builtin_desks()
    book.command_refusal(user, "building", "unlock")   # "… desks traffic do not …" or None
    book.alarm_refusal(user, "camera")                 # acting on a camera's alarm
    book.hidden(user)                                  # what he may not read (a Hidden)

A user without a desk is held by his role and municipalities alone, as
before desks existed; so is an admin, whatever desks he has. A desk name a
user holds but the file no longer has grants nothing.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from admin_web.auth import Role, User
from runtime.datafile import Checker, KeyPath, parse_toml, read_text, shown, type_name
from runtime.errors import DataFileError
from runtime.inventory import KINDS

__all__ = [
    "BUILTIN_SOURCE",
    "CRISIS_MODES",
    "Desk",
    "DeskBook",
    "DeskError",
    "Hidden",
    "View",
    "builtin_desks",
    "load_desks",
    "parse_desks",
]

#: The crisis modes a desk may switch (``normal`` ends one: allowed to whoever may
#: switch the mode a municipality is in).
CRISIS_MODES: Final = ("snow", "flood")
BUILTIN_SOURCE: Final = "admin_web/desks.toml"

_TOP_KEYS: Final = ("view", "desk")
_VIEW_KEYS: Final = ("title", "kinds", "fields", "events", "actions")
_DESK_KEYS: Final = ("title", "views", "commands", "crisis", "requests")


class DeskError(DataFileError):
    """A desk file failed validation."""


@dataclass(frozen=True)
class View:
    """A sensitive view: whole kinds, and fields, events and actions of other kinds."""

    name: str
    title: str = ""
    kinds: frozenset[str] = frozenset()
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    events: Mapping[str, frozenset[str]] = field(default_factory=dict)
    actions: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Desk:
    """One desk: the actions it owns by kind, the views it reads, its crisis modes."""

    name: str
    title: str = ""
    views: frozenset[str] = frozenset()
    commands: Mapping[str, frozenset[str]] = field(default_factory=dict)
    crisis: frozenset[str] = frozenset()
    requests: bool = False

    def public(self) -> dict[str, Any]:
        """The desk as the API lists it."""
        return {"name": self.name, "title": self.title, "views": sorted(self.views),
                "commands": {k: sorted(v) for k, v in sorted(self.commands.items())},
                "crisis": sorted(self.crisis), "requests": self.requests}


@dataclass(frozen=True)
class Hidden:
    """What a user may not read: whole kinds, and fields and events of other kinds.

    ``fields`` holds name prefixes: ``door`` hides ``door`` and ``door.3.locked``.
    """

    kinds: frozenset[str] = frozenset()
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    events: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.kinds or self.fields or self.events)

    def hides_field(self, kind: str | None, name: str) -> bool:
        """Whether field ``name`` of an equipment of ``kind`` is hidden."""
        return any(name == p or name.startswith(p + ".") for p in self.fields.get(kind or "", ()))

    def hides_event(self, kind: str | None, event: str) -> bool:
        """Whether an event named ``event`` of an equipment of ``kind`` is hidden."""
        return kind in self.kinds or event in self.events.get(kind or "", frozenset())

    def equipment(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` (an equipment of the API) without its hidden fields and events."""
        kind = record.get("kind")
        if not isinstance(kind, str) or (kind not in self.fields and kind not in self.events):
            return record
        out = dict(record)
        for part in ("reported", "desired"):
            values = record.get(part)
            if isinstance(values, dict):
                out[part] = {k: v for k, v in values.items() if not self.hides_field(kind, k)}
        events = record.get("events")
        if isinstance(events, list):
            out["events"] = [e for e in events if not (
                isinstance(e, dict) and self.hides_event(kind, str(e.get("event", ""))))]
        return out


@dataclass(frozen=True)
class DeskBook:
    """The desks and sensitive views of one file."""

    views: Mapping[str, View]
    desks: Mapping[str, Desk]
    source: str = "<memory>"

    def names(self) -> list[str]:
        """The desks' names, in file order."""
        return list(self.desks)

    def unknown(self, names: object) -> list[str]:
        """The names among ``names`` that are no desk of this book."""
        return [str(n) for n in names if n not in self.desks] \
            if isinstance(names, list | tuple | set | frozenset) else []

    @staticmethod
    def held(user: User) -> bool:
        """Whether ``user`` is held by desks (he has some, and is not an admin)."""
        return bool(user.desks) and user.role is not Role.ADMIN

    def _desks_of(self, user: User) -> list[Desk]:
        return [self.desks[d] for d in sorted(user.desks) if d in self.desks]

    def _reads(self, user: User) -> set[str]:
        return {v for d in self._desks_of(user) for v in d.views}

    def hidden(self, user: User) -> Hidden:
        """What ``user`` may not read (nothing when he is not held by desks)."""
        if not self.held(user):
            return Hidden()
        reads = self._reads(user)
        kinds: set[str] = set()
        fields: dict[str, tuple[str, ...]] = {}
        events: dict[str, frozenset[str]] = {}
        for view in self.views.values():
            if view.name in reads:
                continue
            kinds |= view.kinds
            for kind, prefixes in view.fields.items():
                fields[kind] = (*fields.get(kind, ()), *prefixes)
            for kind, names in view.events.items():
                events[kind] = events.get(kind, frozenset()) | names
        return Hidden(frozenset(kinds), MappingProxyType(fields), MappingProxyType(events))

    def read_refusal(self, user: User, kind: str | None) -> str | None:
        """Why ``user`` may not read equipment of ``kind`` at all, or None."""
        if not self.held(user) or kind is None:
            return None
        for view in self.views.values():
            if kind in view.kinds and view.name not in self._reads(user):
                return (f"{kind} is in the {view.name} view, which desk(s) "
                        f"{', '.join(sorted(user.desks))} do not read")
        return None

    def command_refusal(self, user: User, kind: str | None, action: str) -> str | None:
        """Why ``user`` may not send ``action`` to equipment of ``kind``, or None."""
        if not self.held(user):
            return None
        if any(action in d.commands.get(kind or "", ()) for d in self._desks_of(user)):
            return None
        return (f"desk(s) {', '.join(sorted(user.desks))} do not command {action} on "
                f"{kind or 'this equipment'}")

    def alarm_refusal(self, user: User, kind: str | None) -> str | None:
        """Why ``user`` may not act on an alarm of equipment of ``kind`` (his desks command
        nothing of that kind), or None; an alarm of no equipment is anyone's."""
        if not self.held(user) or not kind:
            return None
        if any(kind in d.commands for d in self._desks_of(user)):
            return None
        return f"desk(s) {', '.join(sorted(user.desks))} do not handle {kind} alarms"

    def crisis_refusal(self, user: User, mode: str, current: list[str]) -> str | None:
        """Why ``user`` may not switch to ``mode`` municipalities now in modes ``current``
        (``normal`` ends a plan: he must own each mode he ends), or None."""
        if not self.held(user):
            return None
        owned = {m for d in self._desks_of(user) for m in d.crisis}
        wanted = {m for m in current if m != "normal"} if mode == "normal" else {mode}
        missing = sorted(wanted - owned)
        if not missing:
            return None
        return (f"desk(s) {', '.join(sorted(user.desks))} do not switch the "
                f"{', '.join(missing)} crisis mode")

    def requests_refusal(self, user: User) -> str | None:
        """Why ``user`` may not take a citizen's request, or None."""
        if not self.held(user) or any(d.requests for d in self._desks_of(user)):
            return None
        return f"desk(s) {', '.join(sorted(user.desks))} do not take citizens' calls"

    def public(self) -> dict[str, Any]:
        """The desks and views as the API lists them."""
        return {
            "desks": [d.public() for d in self.desks.values()],
            "views": [{"name": v.name, "title": v.title, "kinds": sorted(v.kinds),
                       "fields": {k: list(p) for k, p in sorted(v.fields.items())},
                       "events": {k: sorted(e) for k, e in sorted(v.events.items())},
                       "actions": {k: sorted(a) for k, a in sorted(v.actions.items())}}
                      for v in self.views.values()],
        }


class _Parser(Checker):
    """One validation pass over a parsed desk document, collecting issues."""

    def _text(self, table: Mapping[str, Any], path: KeyPath, key: str) -> str:
        value = table.get(key, "")
        if not isinstance(value, str) or len(value) > 200:
            self._issue((*path, key), f"expected a string of at most 200 characters, got "
                                      f"{type_name(value)} {shown(value)}")
            return ""
        return value

    def _names(self, value: object, path: KeyPath, *, within: tuple[str, ...] | None = None,
               what: str = "name") -> frozenset[str]:
        """``value`` as a set of names (each in ``within`` when given)."""
        if not isinstance(value, list):
            self._issue(path, f"expected an array of {what}s, got {type_name(value)} "
                              f"{shown(value)}")
            return frozenset()
        out: set[str] = set()
        for i, item in enumerate(value):
            name = self._name({"item": item}, (*path, i), "item") if within is None else item
            if within is not None and item not in within:
                self._issue((*path, i), f"unknown {what} {shown(item)} (known: "
                                        f"{', '.join(within)})", at=path)
                continue
            if name:
                out.add(name)
        return frozenset(out)

    def _by_kind(self, value: object, path: KeyPath) -> dict[str, frozenset[str]]:
        """A table of kind -> array of names."""
        table = self._table(value, path, "a table of kind = [names]")
        if table is None:
            return {}
        out: dict[str, frozenset[str]] = {}
        for kind, names in table.items():
            if kind not in KINDS:
                self._issue((*path, kind), f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
                continue
            found = self._names(names, (*path, kind))
            if found:
                out[kind] = found
            elif isinstance(names, list):
                self._issue((*path, kind), "names nothing: leave the kind out instead")
        return out

    def run(self) -> DeskBook:
        self._keys(self._doc, (), _TOP_KEYS)
        views: dict[str, View] = {}
        for name, raw in (self._table(self._doc.get("view", {}), ("view",)) or {}).items():
            view = self._view(name, raw, ("view", name))
            if view is not None:
                views[name] = view
        desks: dict[str, Desk] = {}
        raw_desks = self._table(self._doc.get("desk", {}), ("desk",)) or {}
        if not raw_desks:
            self._issue(("desk",), "no [desk.NAME] in this file")
        for name, raw in raw_desks.items():
            desk = self._desk(name, raw, ("desk", name), views)
            if desk is not None:
                desks[name] = desk
        self._raise_issues(DeskError)
        return DeskBook(MappingProxyType(views), MappingProxyType(desks), self._source)

    def _view(self, name: str, raw: object, path: KeyPath) -> View | None:
        table = self._table(raw, path)
        if table is None or not self._name({"name": name}, path, "name"):
            return None
        self._keys(table, path, _VIEW_KEYS)
        kinds = self._names(table.get("kinds", []), (*path, "kinds"), within=KINDS,
                            what="kind")
        fields = {k: tuple(sorted(v)) for k, v in
                  self._by_kind(table.get("fields", {}), (*path, "fields")).items()}
        events = self._by_kind(table.get("events", {}), (*path, "events"))
        actions = self._by_kind(table.get("actions", {}), (*path, "actions"))
        if not (kinds or fields or events):
            self._issue(path, "a view hides something: give it kinds, fields or events")
        return View(name, self._text(table, path, "title"), kinds, MappingProxyType(fields),
                    MappingProxyType(events), MappingProxyType(actions))

    def _desk(self, name: str, raw: object, path: KeyPath,
              views: Mapping[str, View]) -> Desk | None:
        table = self._table(raw, path)
        if table is None or not self._name({"name": name}, path, "name"):
            return None
        self._keys(table, path, _DESK_KEYS)
        reads = self._names(table.get("views", []), (*path, "views"),
                            within=tuple(views), what="view")
        commands = self._by_kind(table.get("commands", {}), (*path, "commands"))
        crisis = self._names(table.get("crisis", []), (*path, "crisis"), within=CRISIS_MODES,
                             what="crisis mode")
        requests = table.get("requests", False)
        if not isinstance(requests, bool):
            self._issue((*path, "requests"), f"expected true or false, got "
                                             f"{type_name(requests)} {shown(requests)}")
            requests = False
        # Commanding what a view hides, without reading it, would be acting blind.
        for kind, actions in commands.items():
            for view in views.values():
                if view.name in reads:
                    continue
                if kind in view.kinds or actions & view.actions.get(kind, frozenset()):
                    self._issue((*path, "commands", kind),
                                f"commands {kind} in the {view.name} view: add "
                                f"{view.name!r} to the desk's views")
        return Desk(name, self._text(table, path, "title"), reads, MappingProxyType(commands),
                    crisis, requests)


def parse_desks(text: str, source: str) -> DeskBook:
    """Validate desk TOML ``text`` (``source`` names it in issues)."""
    return _Parser(text, source, parse_toml(text, source, DeskError)).run()


def load_desks(path: str | os.PathLike[str]) -> DeskBook:
    """Read and validate a desk file."""
    return parse_desks(read_text(path, DeskError), os.fspath(path))


@functools.cache
def builtin_desks() -> DeskBook:
    """The shipped ``admin_web/desks.toml`` (read once)."""
    text = importlib.resources.files("admin_web").joinpath("desks.toml").read_text(
        encoding="utf-8")
    return parse_desks(text, BUILTIN_SOURCE)
