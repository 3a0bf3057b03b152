"""The alarm book: one ISA-18.2 / IEC 62682 alarm per (source, condition), as pure logic.

The ``alarms`` coordinator entity hosts one :class:`AlarmBook`: it feeds the
book the entities' alarm records and the operators' actions, emits the
:class:`AlarmEvent` list that every call returns, checkpoints
:meth:`AlarmBook.to_dict` and publishes :meth:`AlarmBook.alarms` as its read
model. The book does no I/O and reads the time only from its clock::

    >>> from runtime.clock import ManualClock
    >>> book = AlarmBook(ManualClock())
    >>> [e.state.value for e in book.raise_("bld-dijon-0001", "fire",
    ...                                     municipality="dijon", kind="building")]
    ['unacknowledged']
    >>> book.ack("bld-dijon-0001.fire", "alice")[0].state.value
    'acknowledged'
    >>> book.clear("bld-dijon-0001", "fire")[0].state.value
    'normal'

States (the strings of the HTTP API). The first four are the ISA-18.2 alarm
states; the last three hide an alarm from the operator's list, and the
strongest one present is shown (out of service, then shelved, then suppressed):

=====================  ======  =============================================
state                  active  left by
=====================  ======  =============================================
``normal``             no      activation → ``unacknowledged``
``unacknowledged``     yes     ack → ``acknowledged``; clear → ``rtn_unacknowledged``
``acknowledged``       yes     clear → ``normal`` (re-activation changes nothing)
``rtn_unacknowledged`` no      ack → ``normal``; activation → ``unacknowledged``
``shelved``            either  expiry or unshelve
``suppressed``         either  its suppressor clears
``out_of_service``     either  return to service (admin)
=====================  ======  =============================================

While hidden, the condition's activity is still tracked (and recorded); when
the last hiding state ends the alarm shows again as ``unacknowledged`` if its
condition is active, else ``normal``: whatever an operator had acknowledged
before is annunciated again.

Priorities, escalation delays, messages and the suppression rules are data
(``actors/alarm_conditions.toml``, see :func:`parse_conditions`). A condition
the file does not name gets the file's ``default_priority`` (``medium``).
Conditions listed as ``events`` (``motion``) are never alarms: the book
refuses them with :class:`NotAnAlarmError`.

Escalation: an alarm shown ``unacknowledged`` longer than its delay is raised
one priority level (low → medium → high → critical), the timer starting again
at each level; past its delay at ``critical`` it is marked ``escalated`` and an
``escalated`` event is returned. At the condition's own priority its own
``escalate_after_s`` applies, at a raised level the level's delay. The raised
priority stays until the alarm is ``normal`` again. Only :meth:`AlarmBook.tick`
moves timers (escalation and shelving expiry); an event it causes carries the
time it was due, so the outcome does not depend on how often ``tick`` runs.

Flood control: ``device_offline`` activations that name the same
communication ``path`` form a *burst* while each comes within
``flood_window_s`` (30 s) of the previous one on that path. When a burst holds
``flood_threshold`` (3) still-active ungrouped alarms, they become children of
one ``flood_summary`` alarm for the path (id :func:`summary_id`); later
activations of the same burst join at once. A burst that stays below the
threshold leaves ordinary alarms. A summary is active while one of its shown
children is, a new unacknowledged child annunciates it again, acknowledging it
acknowledges its children, and once ``normal`` it releases them. Children keep
their own state, are left out of the default list and listed by
``alarms(group=ID)``. A summary's ``source`` is the path, its ``kind``
``"path"``, its ``municipality`` its children's one or ``"*"`` when they span
several (all of them under the extra key ``municipalities``).

Alarm ids are ``"{source}.{condition}"`` (entity ids hold no dot);
``suppressed_by`` holds the suppressing alarm's id or ``"crisis:{activation_id}"``.
"""

from __future__ import annotations

import bisect
import enum
import functools
import hashlib
import importlib.resources
import math
import os
import re
import string
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeGuard, TypeVar

from runtime.clock import Clock
from runtime.datafile import Checker, KeyPath, parse_toml, read_text, shown, type_name
from runtime.errors import (
    ConfigError,
    DataFileError,
    MalformedMessageError,
    RejectedError,
    UnknownEntityError,
)
from runtime.inventory import KINDS

__all__ = [
    "ADMIN_ROLE",
    "CONTRACT_FIELDS",
    "DEVICE_OFFLINE",
    "FLOOD_SUMMARY",
    "HIDDEN_STATES",
    "MAX_SHELVE_MINUTES",
    "MIXED_MUNICIPALITY",
    "PATH_KIND",
    "AlarmArgumentError",
    "AlarmBook",
    "AlarmEvent",
    "AlarmForbiddenError",
    "AlarmState",
    "AlarmStateError",
    "ConditionSpec",
    "ConditionTable",
    "EventKind",
    "NotAnAlarmError",
    "Priority",
    "SuppressionRule",
    "UnknownAlarmError",
    "alarm_id",
    "builtin_conditions",
    "load_conditions",
    "parse_conditions",
    "summary_id",
]

DEVICE_OFFLINE: Final = "device_offline"
FLOOD_SUMMARY: Final = "flood_summary"
#: The role that may take alarms out of service and return them.
ADMIN_ROLE: Final = "admin"
MAX_SHELVE_MINUTES: Final = 7 * 24 * 60
#: ``municipality`` of a flood summary whose children span several municipalities.
MIXED_MUNICIPALITY: Final = "*"
#: ``kind`` of a flood summary: its source is a communication path, not an entity.
PATH_KIND: Final = "path"
#: The keys of an alarm in ``GET /api/v1/alarms`` (CONTRACT.md).
CONTRACT_FIELDS: Final = (
    "id",
    "source",
    "condition",
    "priority",
    "state",
    "active",
    "municipality",
    "raised_ts",
    "acked_by",
    "acked_ts",
    "shelved_until",
    "suppressed_by",
    "group",
    "count",
    "message",
)
DEFAULT_MESSAGE: Final = "{condition} on {kind} {source}"
_TEMPLATE_FIELDS: Final = ("source", "condition", "municipality", "kind", "path", "priority",
                           "count")
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_TEXT: Final = 500
_CHECKPOINT_VERSION: Final = 1
_E = TypeVar("_E", bound=enum.StrEnum)


class Priority(enum.StrEnum):
    """How urgently an operator must act, highest first."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for ``critical`` … 3 for ``low`` (sort key, most urgent first)."""
        return _PRIORITY_ORDER.index(self)

    def raised(self) -> Priority:
        """One level up; ``critical`` stays ``critical``."""
        return _PRIORITY_ORDER[max(0, self.rank - 1)]


_PRIORITY_ORDER: Final = (Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW)


class AlarmState(enum.StrEnum):
    """Where an alarm stands, as the HTTP API names it."""

    NORMAL = "normal"
    UNACKNOWLEDGED = "unacknowledged"
    ACKNOWLEDGED = "acknowledged"
    RTN_UNACKNOWLEDGED = "rtn_unacknowledged"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"


#: States that keep an alarm off the operator's default list.
HIDDEN_STATES: Final = frozenset(
    {AlarmState.SHELVED, AlarmState.SUPPRESSED, AlarmState.OUT_OF_SERVICE}
)
_ACKABLE: Final = frozenset({AlarmState.UNACKNOWLEDGED, AlarmState.RTN_UNACKNOWLEDGED})
_SHELVABLE: Final = frozenset(
    {
        AlarmState.UNACKNOWLEDGED,
        AlarmState.ACKNOWLEDGED,
        AlarmState.RTN_UNACKNOWLEDGED,
        AlarmState.SHELVED,
    }
)


class EventKind(enum.StrEnum):
    """What an :class:`AlarmEvent` reports."""

    TRANSITION = "transition"  # the shown state or the condition's activity changed
    UPDATED = "updated"  # neither changed, but an operator's action did something (a re-shelve)
    PRIORITY = "priority"  # escalation raised the priority one level
    ESCALATED = "escalated"  # unacknowledged past its delay at critical: tell someone
    GROUPED = "grouped"  # the alarm became a child of a flood summary
    UNGROUPED = "ungrouped"  # its flood summary returned to normal and released it


# -- errors ------------------------------------------------------------------------


class UnknownAlarmError(UnknownEntityError):
    """An action named an alarm id the book does not hold."""

    def __init__(self, alarm_id: str) -> None:
        RejectedError.__init__(self, f"unknown alarm {alarm_id!r}", code="unknown_alarm")
        self.entity_id = alarm_id
        self.alarm_id = alarm_id


class AlarmArgumentError(RejectedError):
    """A bad argument to the book; ``field`` names it as the API reports it."""

    def __init__(self, message: str, *, field: str, code: str = "bad_value") -> None:
        super().__init__(message, code=code)
        self.field = field


class AlarmForbiddenError(RejectedError):
    """The caller's role may not do this (out of service is for admins)."""

    def __init__(self, message: str, *, role: str) -> None:
        super().__init__(message, code="forbidden")
        self.role = role


class AlarmStateError(RejectedError):
    """The action does not apply to the alarm in its current state."""

    def __init__(self, message: str, *, state: AlarmState, code: str) -> None:
        super().__init__(message, code=code)
        self.state = state


class NotAnAlarmError(RejectedError):
    """A condition that is an event (``motion``) or reserved to the book (``flood_summary``)."""

    def __init__(self, message: str, *, condition: str, code: str = "not_an_alarm") -> None:
        super().__init__(message, code=code)
        self.condition = condition


# -- the data ----------------------------------------------------------------------


def _check_template(template: str) -> str | None:
    """Why ``template`` cannot render, or ``None`` if it can."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return str(exc)
    for name in names:
        if name not in _TEMPLATE_FIELDS:
            return f"unknown placeholder {{{name}}} (expected one of {', '.join(_TEMPLATE_FIELDS)})"
    try:
        template.format(**{key: "x" for key in _TEMPLATE_FIELDS})
    except (ValueError, IndexError, KeyError) as exc:
        return str(exc)
    return None


def _positive(value: object) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    """One alarm condition: its priority, its own escalation delay, its message template."""

    name: str
    priority: Priority
    message: str = DEFAULT_MESSAGE
    #: Escalation delay at the condition's own priority; ``None`` uses the level's.
    escalate_after_s: float | None = None
    line: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"condition name {self.name!r} does not match {_NAME_RE.pattern}")
        try:
            object.__setattr__(self, "priority", Priority(self.priority))
        except ValueError:
            raise ConfigError(f"condition {self.name!r}: unknown priority "
                              f"{self.priority!r}") from None
        if not isinstance(self.message, str) or not self.message.strip():
            raise ConfigError(f"condition {self.name!r}: message must be a non-empty string")
        if (why := _check_template(self.message)) is not None:
            raise ConfigError(f"condition {self.name!r}: message: {why}")
        if self.escalate_after_s is not None:
            if not _positive(self.escalate_after_s):
                raise ConfigError(f"condition {self.name!r}: escalate_after_s must be > 0")
            object.__setattr__(self, "escalate_after_s", float(self.escalate_after_s))


@dataclass(frozen=True, slots=True)
class SuppressionRule:
    """While a ``by`` condition of a source is active, its ``masks`` conditions are hidden.

    ``masks = ("*",)`` masks every condition of the source but the ``by`` ones
    (and never a flood summary); ``kinds``, when not empty, limits the rule to
    sources of those kinds.
    """

    name: str
    by: tuple[str, ...]
    masks: tuple[str, ...]
    kinds: tuple[str, ...] = ()
    line: int = 0

    def __post_init__(self) -> None:
        for attr in ("by", "masks", "kinds"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        if not self.by or not self.masks:
            raise ConfigError(f"suppression {self.name!r}: by and masks must not be empty")
        for name in (*self.by, *(m for m in self.masks if m != "*")):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ConfigError(f"suppression {self.name!r}: bad condition name {name!r}")
        for kind in self.kinds:
            if kind not in KINDS:
                raise ConfigError(f"suppression {self.name!r}: unknown kind {kind!r}")

    def applies(self, kind: str, condition: str) -> bool:
        """Whether this rule can mask ``condition`` of a source of ``kind``."""
        if self.kinds and kind not in self.kinds:
            return False
        if condition in self.by or condition == FLOOD_SUMMARY:
            return False
        return "*" in self.masks or condition in self.masks


@dataclass(frozen=True, slots=True)
class ConditionTable:
    """Everything the book reads from data: conditions, delays, rules, flood settings."""

    conditions: Mapping[str, ConditionSpec]
    escalate_after_s: Mapping[Priority, float]
    suppressions: tuple[SuppressionRule, ...] = ()
    events: frozenset[str] = frozenset()
    default_priority: Priority = Priority.MEDIUM
    history: int = 50
    flood_window_s: float = 30.0
    flood_threshold: int = 3
    source: str = "<code>"
    #: Every condition some rule masks others by (derived from ``suppressions``).
    suppressors: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", MappingProxyType(dict(self.conditions)))
        delays = {Priority(p): d for p, d in self.escalate_after_s.items()}
        for priority in Priority:
            if not _positive(delays.get(priority)):
                raise ConfigError(f"{self.source}: escalate_after_s of {priority} must be > 0")
        object.__setattr__(
            self, "escalate_after_s", MappingProxyType({p: float(d) for p, d in delays.items()})
        )
        object.__setattr__(self, "suppressions", tuple(self.suppressions))
        object.__setattr__(
            self, "suppressors", frozenset(c for rule in self.suppressions for c in rule.by)
        )
        object.__setattr__(self, "events", frozenset(self.events))
        object.__setattr__(self, "default_priority", Priority(self.default_priority))
        if both := sorted(self.events & set(self.conditions)):
            raise ConfigError(f"{self.source}: {', '.join(both)} both an event and a condition")
        if not isinstance(self.history, int) or self.history < 1:
            raise ConfigError(f"{self.source}: history must be an integer >= 1")
        if not _positive(self.flood_window_s):
            raise ConfigError(f"{self.source}: flood_window_s must be > 0")
        object.__setattr__(self, "flood_window_s", float(self.flood_window_s))
        if not isinstance(self.flood_threshold, int) or self.flood_threshold < 2:
            raise ConfigError(f"{self.source}: flood_threshold must be an integer >= 2")

    def spec(self, condition: str) -> ConditionSpec:
        """The spec of ``condition``; an unnamed condition gets the default priority."""
        found = self.conditions.get(condition)
        if found is not None:
            return found
        return ConditionSpec(condition, self.default_priority)

    def delay(self, condition: str, priority: Priority) -> float:
        """Seconds an alarm of ``condition`` may stay unacknowledged at ``priority``."""
        spec = self.spec(condition)
        if priority is spec.priority and spec.escalate_after_s is not None:
            return spec.escalate_after_s
        return self.escalate_after_s[priority]



_TOP_KEYS: Final = ("book", "priority", "condition", "suppression")
_BOOK_KEYS: Final = ("default_priority", "history", "flood_window_s", "flood_threshold", "events")
_CONDITION_KEYS: Final = ("priority", "escalate_after_s", "message")
_RULE_KEYS: Final = ("name", "by", "masks", "kinds")


class _Parser(Checker):
    """One validation pass over a parsed conditions document, collecting issues."""

    def _table(self, value: object, path: KeyPath, what: str = "a table") -> dict[str, Any]:
        return super()._table(value, path, what) or {}

    def _priority(self, value: object, path: KeyPath) -> Priority | None:
        if isinstance(value, str) and value in {p.value for p in Priority}:
            return Priority(value)
        self._issue(path, f"expected one of {', '.join(Priority)}, got {shown(value)}")
        return None

    def _number(self, value: object, path: KeyPath) -> float | None:
        if _positive(value):
            return float(value)
        self._issue(path, f"expected a number > 0, got {shown(value)}")
        return None

    def _names(self, value: object, path: KeyPath, *, star: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self._issue(path, f"expected a non-empty array of strings, got {shown(value)}")
            return ()
        for name in value:
            if not (_NAME_RE.match(name) or (star and name == "*")):
                self._issue(path, f"{name!r} is not a condition name")
        return tuple(value)

    def run(self) -> ConditionTable:
        self._keys(self._doc, (), _TOP_KEYS)
        settings = self._book()
        delays = self._delays()
        conditions = self._conditions()
        rules = self._rules()
        events = settings.get("events", frozenset())
        for name in sorted(events & set(conditions)):
            self._issue(("condition", name), f"{name!r} is listed as an event too")
        if not self._issues:
            try:
                return ConditionTable(conditions=conditions, escalate_after_s=delays,
                                      suppressions=rules, source=self._source, **settings)
            except ConfigError as exc:
                self._issue(("book",), str(exc))
        raise DataFileError(self.issue_lines())

    def _book(self) -> dict[str, Any]:
        path: KeyPath = ("book",)
        table = self._table(self._doc.get("book", {}), path)
        self._keys(table, path, _BOOK_KEYS)
        out: dict[str, Any] = {}
        if "default_priority" in table:
            where = (*path, "default_priority")
            if (priority := self._priority(table["default_priority"], where)) is not None:
                out["default_priority"] = priority
        for key, least in (("history", 1), ("flood_threshold", 2)):
            if key in table:
                value = table[key]
                if isinstance(value, int) and not isinstance(value, bool) and value >= least:
                    out[key] = value
                else:
                    self._issue((*path, key), f"expected an integer >= {least}, got "
                                              f"{shown(value)}")
        if "flood_window_s" in table:
            window = self._number(table["flood_window_s"], (*path, "flood_window_s"))
            if window is not None:
                out["flood_window_s"] = window
        if "events" in table:
            out["events"] = frozenset(self._names(table["events"], (*path, "events")))
        return out

    def _delays(self) -> dict[Priority, float]:
        path: KeyPath = ("priority",)
        table = self._table(self._doc.get("priority", {}), path)
        self._keys(table, path, tuple(Priority))
        out: dict[Priority, float] = {}
        # A missing level is reported where the levels that are there begin.
        present = [(*path, p.value) for p in Priority if p.value in table]
        for priority in Priority:
            level_path = (*path, priority.value)
            if priority.value not in table:
                self._issue(level_path, "required table missing",
                            at=present[0] if present else path)
                continue
            level = self._table(table[priority.value], level_path)
            self._keys(level, level_path, ("escalate_after_s",))
            key = (*level_path, "escalate_after_s")
            if "escalate_after_s" not in level:
                self._issue(key, "required field missing")
            elif (delay := self._number(level["escalate_after_s"], key)) is not None:
                out[priority] = delay
        return out

    def _conditions(self) -> dict[str, ConditionSpec]:
        path: KeyPath = ("condition",)
        table = self._table(self._doc.get("condition", {}), path)
        out: dict[str, ConditionSpec] = {}
        for name, raw in table.items():
            cpath = (*path, name)
            body = self._table(raw, cpath)
            self._keys(body, cpath, _CONDITION_KEYS)
            before = len(self._issues)
            if not _NAME_RE.match(name):
                self._issue(cpath, f"{name!r} does not match {_NAME_RE.pattern}")
            priority = None
            if "priority" not in body:
                self._issue((*cpath, "priority"), "required field missing")
            else:
                priority = self._priority(body["priority"], (*cpath, "priority"))
            delay = None
            if "escalate_after_s" in body:
                delay = self._number(body["escalate_after_s"], (*cpath, "escalate_after_s"))
            message = body.get("message", DEFAULT_MESSAGE)
            if not isinstance(message, str) or not message.strip():
                self._issue((*cpath, "message"), f"expected a non-empty string, got "
                                                 f"{shown(message)}")
            elif (why := _check_template(message)) is not None:
                self._issue((*cpath, "message"), why)
            if len(self._issues) == before and priority is not None:
                out[name] = ConditionSpec(name, priority, message, delay,
                                          line=self._where.line(cpath))
        return out

    def _rules(self) -> tuple[SuppressionRule, ...]:
        named = self._doc.get("condition")
        conditions = named if isinstance(named, dict) else {}
        raw = self._doc.get("suppression", [])
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            self._issue(("suppression",), f"expected [[suppression]] tables, got "
                                          f"{type_name(raw)}")
            return ()
        out: list[SuppressionRule] = []
        for i, rule in enumerate(raw):
            rpath: KeyPath = ("suppression", i)
            self._keys(rule, rpath, _RULE_KEYS)
            before = len(self._issues)
            name = rule.get("name")
            if not isinstance(name, str) or not name.strip():
                self._issue((*rpath, "name"), f"expected a non-empty string, got {shown(name)}")
            by = self._names(rule.get("by"), (*rpath, "by"))
            masks = self._names(rule.get("masks"), (*rpath, "masks"), star=True)
            for key, names in (("by", by), ("masks", masks)):
                for cond in names:
                    if cond != "*" and cond not in conditions:
                        self._issue((*rpath, key), f"{cond!r} is not a condition of this file")
            kinds: tuple[str, ...] = ()
            if "kinds" in rule:
                kinds = tuple(rule["kinds"]) if isinstance(rule["kinds"], list) else ()
                if not kinds or not all(k in KINDS for k in kinds):
                    self._issue((*rpath, "kinds"), f"expected kinds among {', '.join(KINDS)}, "
                                                   f"got {shown(rule['kinds'])}")
            if len(self._issues) == before:
                out.append(SuppressionRule(str(name), by, masks, kinds,
                                           line=self._where.line(rpath)))
        return tuple(out)


def parse_conditions(text: str, source: str) -> ConditionTable:
    """Validate conditions TOML ``text`` into a :class:`ConditionTable`.

    Every problem is reported at once: :class:`~runtime.errors.ConfigError`
    carries one ``"{source}:{line}: {field}: {message}"`` line per issue.
    """
    return _Parser(text, source, parse_toml(text, source)).run()


def load_conditions(path: str | os.PathLike[str]) -> ConditionTable:
    """Read and validate a conditions file."""
    return parse_conditions(read_text(path), os.fspath(path))


@functools.cache
def builtin_conditions() -> ConditionTable:
    """The shipped ``actors/alarm_conditions.toml`` (read once)."""
    resource = importlib.resources.files("actors").joinpath("alarm_conditions.toml")
    return parse_conditions(resource.read_text(encoding="utf-8"), "actors/alarm_conditions.toml")


# -- ids and events ----------------------------------------------------------------


#: How long an alarm back to normal (inactive, acknowledged, not hidden) stays in the book.
NORMAL_KEPT_S: Final = 86_400.0


def alarm_id(source: str, condition: str) -> str:
    """The stable id of the alarm of ``condition`` on ``source``."""
    return f"{source}.{condition}"


def summary_id(path: str) -> str:
    """The stable id of the flood summary of communication ``path`` (URL-safe)."""
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[:48] or "path"
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=4).hexdigest()
    return f"{slug}-{digest}.{FLOOD_SUMMARY}"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """Something the book did, for the hosting entity to emit and record.

    ``previous`` and ``state`` are the shown states before and after; ``ts``
    is when it happened (the due time, for what :meth:`AlarmBook.tick` did);
    ``user`` is ``None`` for what the book did by itself.
    """

    kind: EventKind
    alarm_id: str
    source: str
    condition: str
    municipality: str
    ts: float
    action: str
    user: str | None
    previous: AlarmState
    state: AlarmState
    active: bool
    priority: Priority
    group: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The event as plain msgpack-able values."""
        return {
            "kind": self.kind.value,
            "alarm_id": self.alarm_id,
            "source": self.source,
            "condition": self.condition,
            "municipality": self.municipality,
            "ts": self.ts,
            "action": self.action,
            "user": self.user,
            "previous": self.previous.value,
            "state": self.state.value,
            "active": self.active,
            "priority": self.priority.value,
            "group": self.group,
            "note": self.note,
        }


# -- the book ----------------------------------------------------------------------


@dataclass(slots=True)
class _Alarm:
    """One alarm as the book keeps it; ``record()`` is what the outside sees."""

    id: str
    source: str
    condition: str
    municipality: str
    kind: str
    priority: Priority
    message: str
    history: deque[dict[str, Any]]
    path: str | None = None
    active: bool = False
    #: The ISA-18.2 state under any hiding state (one of the first four).
    base: AlarmState = AlarmState.NORMAL
    raised_ts: float | None = None
    cleared_ts: float | None = None
    acked_by: str | None = None
    acked_ts: float | None = None
    shelved_until: float | None = None
    shelved_by: str | None = None
    shelve_reason: str | None = None
    out_of_service: bool = False
    out_of_service_by: str | None = None
    suppressed_by: str | None = None
    group: str | None = None
    children: list[str] = field(default_factory=list)
    municipalities: list[str] = field(default_factory=list)
    escalated: bool = False
    #: Start of the running escalation timer; ``None`` when none runs.
    unack_since: float | None = None
    activations: int = 0
    #: A summary's child count when it last recorded an event.
    count_seen: int = 0
    #: A summary's children that are active and not hidden (derived, not checkpointed).
    live: int = 0
    #: What a plan did about this alarm (``{"step", "state", "detail", "ts"}``), in order.
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> AlarmState:
        if self.out_of_service:
            return AlarmState.OUT_OF_SERVICE
        if self.shelved_until is not None:
            return AlarmState.SHELVED
        if self.suppressed_by is not None:
            return AlarmState.SUPPRESSED
        return self.base

    @property
    def hidden(self) -> bool:
        return self.out_of_service or self.shelved_until is not None or (
            self.suppressed_by is not None
        )

    @property
    def is_live(self) -> bool:
        """Active and not hidden: what makes a flood summary active."""
        return self.active and not self.hidden

    @property
    def is_summary(self) -> bool:
        return self.condition == FLOOD_SUMMARY

    @property
    def count(self) -> int:
        # A flood summary counts its children; an incident, itself and what joined it.
        return len(self.children) if self.is_summary else 1 + len(self.children)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "condition": self.condition,
            "priority": self.priority.value,
            "state": self.state.value,
            "active": self.active,
            "municipality": self.municipality,
            "raised_ts": self.raised_ts,
            "acked_by": self.acked_by,
            "acked_ts": self.acked_ts,
            "shelved_until": self.shelved_until,
            "suppressed_by": self.suppressed_by,
            "group": self.group,
            "count": self.count,
            "message": self.message,
            "kind": self.kind,
            "path": self.path,
            "escalated": self.escalated,
            "cleared_ts": self.cleared_ts,
            "shelved_by": self.shelved_by,
            "shelve_reason": self.shelve_reason,
            "out_of_service_by": self.out_of_service_by,
            "activations": self.activations,
            "municipalities": list(self.municipalities) or [self.municipality],
            "steps": [dict(s) for s in self.steps],
        }


_Snap = tuple[AlarmState, bool]
_CHECKPOINT_KEYS: Final = (
    "id", "source", "condition", "municipality", "kind", "message", "path", "active",
    "raised_ts", "cleared_ts", "acked_by", "acked_ts", "shelved_until", "shelved_by",
    "shelve_reason", "out_of_service", "out_of_service_by", "suppressed_by", "group",
    "children", "municipalities", "escalated", "unack_since", "activations", "count_seen",
)  # fmt: skip


@dataclass(slots=True)
class _Burst:
    """``device_offline`` activations on one path, each within the window of the previous."""

    last_ts: float
    members: list[str] = field(default_factory=list)
    grouped: bool = False


def _required(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AlarmArgumentError(f"{name} must be a non-empty string", field=name)
    if len(value) > _MAX_TEXT:
        raise AlarmArgumentError(f"{name} is longer than {_MAX_TEXT}", field=name)
    return value


def _optional(value: object, name: str) -> str | None:
    return None if value is None else _required(value, name)


class AlarmBook:
    """Every alarm of the command post (or of one shard), with its ISA-18.2 state.

    Each method that changes something returns the :class:`AlarmEvent` list
    it caused, in order. ``ts`` arguments are wall-clock seconds (they go into
    checkpoints and survive restarts); when left out, the clock's ``time()``.
    Refusals are :class:`~runtime.errors.RejectedError` subclasses:
    :class:`UnknownAlarmError`, :class:`AlarmArgumentError`,
    :class:`AlarmForbiddenError`, :class:`AlarmStateError`,
    :class:`NotAnAlarmError`. Asking for what already holds (acknowledging an
    acknowledged alarm, unshelving one not shelved, raising an active one) is
    no error and returns no events.
    """

    def __init__(
        self,
        clock: Clock,
        conditions: ConditionTable | None = None,
        *,
        flood_window_s: float | None = None,
        flood_threshold: int | None = None,
    ) -> None:
        self._clock = clock
        self._table = conditions if conditions is not None else builtin_conditions()
        self._window = self._table.flood_window_s if flood_window_s is None else flood_window_s
        self._threshold = (
            self._table.flood_threshold if flood_threshold is None else flood_threshold
        )
        if not _positive(self._window):
            raise ConfigError("flood_window_s must be > 0")
        if not isinstance(self._threshold, int) or self._threshold < 2:
            raise ConfigError("flood_threshold must be an integer >= 2")
        self._alarms: dict[str, _Alarm] = {}
        self._by_source: dict[str, dict[str, _Alarm]] = {}
        self._crisis: dict[str, frozenset[tuple[str, str]]] = {}
        self._bursts: dict[str, _Burst] = {}
        # Summaries to bring up to date at the end of the current call (an ordered set).
        self._dirty: dict[str, None] = {}
        self._reannounce: set[str] = set()

    @property
    def conditions(self) -> ConditionTable:
        """The data the book runs on."""
        return self._table

    @property
    def flood_window_s(self) -> float:
        """Seconds between two ``device_offline`` activations of one burst."""
        return float(self._window)

    @property
    def flood_threshold(self) -> int:
        """Active alarms in a burst that make it a flood summary."""
        return self._threshold

    def __len__(self) -> int:
        return len(self._alarms)

    # -- inputs from the entities ----------------------------------------------------

    def raise_(
        self,
        source: str,
        condition: str,
        *,
        municipality: str,
        kind: str,
        path: str | None = None,
        message: str | None = None,
        ts: float | None = None,
    ) -> list[AlarmEvent]:
        """The condition became active on ``source``.

        ``path`` is the communication path of a ``device_offline`` (for flood
        grouping: ``"net:HOST"`` for Modbus/OPC UA endpoints, ``"broker:URL"``
        for MQTT devices); ``message`` replaces the condition's template.
        Raising an active alarm changes nothing.
        """
        now = self._ts(ts)
        source = _required(source, "source")
        self._check_condition(condition)
        municipality = _required(municipality, "municipality")
        kind = _required(kind, "kind")
        path = _optional(path, "path")
        message = _optional(message, "message")
        a = self._alarm(source, condition, municipality, kind)
        if a.active:
            return []
        events: list[AlarmEvent] = []
        before = self._snap(a)
        a.municipality, a.kind, a.path = municipality, kind, path
        a.message = message if message is not None else self._render(a)
        self._activate(a, now)
        self._update_suppression(a)
        self._settle(a, before, now, "raise", None, events)
        self._resuppress_source(a, now, events)
        if condition == DEVICE_OFFLINE and path is not None and a.group is None:
            self._flood(a, path, now, events)
        self._finish(now, events)
        return events

    def clear(self, source: str, condition: str, *, ts: float | None = None) -> list[AlarmEvent]:
        """The condition returned to normal on ``source`` (unknown or inactive: no events)."""
        now = self._ts(ts)
        a = self._by_source.get(source, {}).get(condition)
        if a is None or not a.active or a.is_summary:
            return []
        events: list[AlarmEvent] = []
        before = self._snap(a)
        self._deactivate(a, now)
        self._settle(a, before, now, "clear", None, events)
        self._resuppress_source(a, now, events)
        self._finish(now, events)
        return events

    def note_step(
        self,
        source: str,
        condition: str,
        step: str,
        state: str,
        detail: str = "",
        *,
        ts: float | None = None,
    ) -> list[AlarmEvent]:
        """Show on ``source``'s ``condition`` alarm what a plan did (``step`` now ``state``).

        The alarm's ``steps`` keep one entry per step (the latest state wins,
        in the order the steps first came) and its history every change. No
        such alarm: no events.
        """
        now = self._ts(ts)
        a = self._by_source.get(source, {}).get(condition)
        if a is None:
            return []
        step = _required(step, "step")
        state = _required(state, "state")
        entry = {"step": step, "state": state, "detail": str(detail)[:_MAX_TEXT], "ts": now}
        for i, old in enumerate(a.steps):
            if old.get("step") == step:
                a.steps[i] = entry
                break
        else:
            a.steps.append(entry)
        events: list[AlarmEvent] = []
        self._record(a, EventKind.UPDATED, now, "plan_step", None, a.state, events,
                     note=f"{step}: {state}" + (f" ({entry['detail']})" if detail else ""))
        return events

    def join_incident(
        self,
        parent_id: str,
        source: str,
        condition: str,
        *,
        municipality: str,
        kind: str,
        ts: float | None = None,
    ) -> list[AlarmEvent]:
        """Raise ``condition`` of ``source`` as a momentary alarm that joins ``parent_id``.

        One incident: the parent (an intrusion alarm) lists it under its
        ``group`` and counts it; acknowledging the parent acknowledges it. The
        parent must be active or not yet acknowledged (else
        :class:`AlarmStateError` ``code="not_active"``); an alarm already in
        another group stays there.
        """
        now = self._ts(ts)
        parent = self._get(parent_id)
        if parent.is_summary or parent.group is not None:
            raise AlarmStateError(f"alarm {parent_id} cannot hold an incident",
                                  state=parent.state, code="not_an_incident")
        if not parent.active and parent.base is AlarmState.NORMAL:
            raise AlarmStateError(f"alarm {parent_id} is not active", state=parent.state,
                                  code="not_active")
        events = self.raise_(source, condition, municipality=municipality, kind=kind, ts=now)
        child = self._by_source[source][condition]
        events += self.clear(source, condition, ts=now)
        if child.group is None and child is not parent:
            child.group = parent.id
            child.unack_since = None
            parent.children.append(child.id)
            if child.base is not AlarmState.NORMAL and parent.base is AlarmState.ACKNOWLEDGED:
                # Something new happened in an acknowledged incident: annunciate it again.
                before = self._snap(parent)
                parent.base = AlarmState.UNACKNOWLEDGED
                parent.acked_by = parent.acked_ts = None
                self._settle(parent, before, now, "incident", None, events, note=child.id)
            self._record(child, EventKind.GROUPED, now, "incident", None, child.state, events,
                         note=parent.id)
        return events

    # -- operators' actions ------------------------------------------------------------

    def ack(
        self, alarm_id: str, user: str, comment: str | None = None, *, ts: float | None = None
    ) -> list[AlarmEvent]:
        """Acknowledge: ``unacknowledged`` → ``acknowledged``, ``rtn_unacknowledged`` → ``normal``.

        Acknowledging a flood summary acknowledges its children. A hidden alarm
        (shelved, suppressed, out of service) is refused with
        :class:`AlarmStateError` ``code="hidden"``.
        """
        now = self._ts(ts)
        user = _required(user, "user")
        note = _optional(comment, "comment") or ""
        a = self._get(alarm_id)
        state = a.state
        if state in HIDDEN_STATES:
            raise AlarmStateError(f"alarm {alarm_id} is {state}: it cannot be acknowledged",
                                  state=state, code="hidden")
        events: list[AlarmEvent] = []
        if a.children:
            for child_id in list(a.children):
                child = self._alarms[child_id]
                if child.state in _ACKABLE:
                    self._ack_one(child, user, note, now, events)
            self._touch(a)
        if state in _ACKABLE:
            self._ack_one(a, user, note, now, events)
        self._finish(now, events)
        return events

    def shelve(
        self, alarm_id: str, user: str, minutes: float, reason: str, *, ts: float | None = None
    ) -> list[AlarmEvent]:
        """Hide an alarm an operator sees for ``minutes`` (at most 7 days), with a reason.

        At expiry (:meth:`tick`) or on :meth:`unshelve` it shows again. A
        shelved alarm may be shelved again (the new expiry replaces the old).
        ``normal``, ``suppressed`` and ``out_of_service`` alarms are refused
        with :class:`AlarmStateError` (``code`` = that state).
        """
        now = self._ts(ts)
        user = _required(user, "user")
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int | float)
            or not math.isfinite(minutes)
            or not 0 < minutes <= MAX_SHELVE_MINUTES
        ):
            raise AlarmArgumentError(
                f"minutes must be a number in (0, {MAX_SHELVE_MINUTES}], got {minutes!r}",
                field="minutes",
                code="out_of_range",
            )
        reason = _required(reason, "reason")
        a = self._get(alarm_id)
        state = a.state
        if state not in _SHELVABLE:
            raise AlarmStateError(f"alarm {alarm_id} is {state}: only an alarm an operator "
                                  "sees can be shelved", state=state, code=state.value)
        events: list[AlarmEvent] = []
        before = self._snap(a)
        a.shelved_until = now + float(minutes) * 60.0
        a.shelved_by, a.shelve_reason = user, reason
        self._touch(a)
        self._settle(a, before, now, "shelve", user, events, note=reason, force=True)
        self._finish(now, events)
        return events

    def unshelve(self, alarm_id: str, user: str, *, ts: float | None = None) -> list[AlarmEvent]:
        """Show a shelved alarm again: ``unacknowledged`` if active, else ``normal``."""
        now = self._ts(ts)
        user = _required(user, "user")
        a = self._get(alarm_id)
        if a.shelved_until is None:
            return []
        events: list[AlarmEvent] = []
        self._end_shelve(a, now, "unshelve", user, events)
        self._finish(now, events)
        return events

    def out_of_service(
        self, alarm_id: str, user: str, role: str, *, ts: float | None = None
    ) -> list[AlarmEvent]:
        """Take an alarm out of service (admin only; any state; a shelve ends)."""
        now = self._ts(ts)
        user = _required(user, "user")
        self._admin(role, "take an alarm out of service")
        a = self._get(alarm_id)
        if a.out_of_service:
            return []
        events: list[AlarmEvent] = []
        before = self._snap(a)
        a.out_of_service, a.out_of_service_by = True, user
        a.shelved_until = a.shelved_by = a.shelve_reason = None
        self._touch(a)
        self._settle(a, before, now, "out_of_service", user, events)
        self._finish(now, events)
        return events

    def return_to_service(
        self, alarm_id: str, user: str, role: str, *, ts: float | None = None
    ) -> list[AlarmEvent]:
        """Return an alarm to service (admin only); it shows by its current condition."""
        now = self._ts(ts)
        user = _required(user, "user")
        self._admin(role, "return an alarm to service")
        a = self._get(alarm_id)
        if not a.out_of_service:
            return []
        events: list[AlarmEvent] = []
        before = self._snap(a)
        a.out_of_service, a.out_of_service_by = False, None
        if not a.hidden:
            self._reveal(a)
        self._touch(a)
        self._settle(a, before, now, "return_to_service", user, events)
        self._finish(now, events)
        return events

    # -- crisis plans ------------------------------------------------------------------

    def crisis_masks(
        self,
        activation_id: str,
        masked: Iterable[tuple[str, str]],
        *,
        ts: float | None = None,
    ) -> list[AlarmEvent]:
        """Suppress the ``(source, condition)`` alarms a crisis activation's actions cause.

        The set replaces any earlier one of the same activation, and also
        masks alarms raised later; ``suppressed_by`` reads ``"crisis:{activation_id}"``.
        """
        now = self._ts(ts)
        activation_id = _required(activation_id, "activation_id")
        pairs: set[tuple[str, str]] = set()
        for item in masked:
            if (
                not isinstance(item, tuple | list)
                or len(item) != 2
                or not all(isinstance(part, str) and part for part in item)
            ):
                raise AlarmArgumentError(f"a crisis mask is a (source, condition) pair, "
                                         f"got {item!r}", field="masked")
            pairs.add((item[0], item[1]))
        old = self._crisis.get(activation_id, frozenset())
        self._crisis[activation_id] = frozenset(pairs)
        events: list[AlarmEvent] = []
        self._apply_masks(old | pairs, now, events)
        self._finish(now, events)
        return events

    def clear_crisis_masks(
        self, activation_id: str, *, ts: float | None = None
    ) -> list[AlarmEvent]:
        """Lift an activation's masks; its alarms show again by their condition."""
        now = self._ts(ts)
        old = self._crisis.pop(activation_id, None)
        if old is None:
            return []
        events: list[AlarmEvent] = []
        self._apply_masks(old, now, events)
        self._finish(now, events)
        return events

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[AlarmEvent]:
        """End the shelves that expired and escalate what stayed unacknowledged until ``now``."""
        at = self._ts(now)
        events: list[AlarmEvent] = []
        for a in list(self._alarms.values()):
            if a.shelved_until is not None and a.shelved_until <= at:
                self._end_shelve(a, a.shelved_until, "shelve_expired", None, events)
        self._finish(at, events)
        for a in list(self._alarms.values()):
            if a.unack_since is not None:
                self._escalate(a, at, events)
        self._prune(at)
        return events

    def _prune(self, at: float) -> None:
        """Forget alarms back to normal for :data:`NORMAL_KEPT_S`: a book that runs for
        months keeps what an operator may still act on, and the event stream keeps the
        rest. A flood summary goes with its children, once all of them may go."""

        def spent(a: _Alarm) -> bool:
            last = max(a.cleared_ts or 0.0, a.acked_ts or 0.0, a.raised_ts or 0.0)
            return (a.state is AlarmState.NORMAL and not a.active and not a.hidden
                    and a.unack_since is None and at - last >= NORMAL_KEPT_S)

        gone: list[_Alarm] = []
        for a in self._alarms.values():
            if a.is_summary:
                kids = [self._alarms.get(c) for c in a.children]
                if spent(a) and all(k is None or spent(k) for k in kids):
                    gone += [a, *(k for k in kids if k is not None)]
            elif a.group is None and spent(a):
                gone.append(a)
        for path in [p for p, b in self._bursts.items() if at - b.last_ts >= NORMAL_KEPT_S]:
            del self._bursts[path]
        for a in gone:
            if self._alarms.pop(a.id, None) is None:
                continue
            same = self._by_source.get(a.source)
            if same is not None and same.get(a.condition) is a:
                del same[a.condition]
                if not same:
                    del self._by_source[a.source]

    # -- queries -----------------------------------------------------------------------

    def alarms(
        self,
        state: str | None = None,
        priority: str | None = None,
        municipality: str | None = None,
        source: str | None = None,
        group: str | None = None,
        include_hidden: bool = False,
    ) -> list[dict[str, Any]]:
        """Alarms as the HTTP API lists them, most urgent first, then newest first.

        Without ``state`` the list holds what an operator has to see: every
        state but ``normal``, and neither the hidden ones (shelved, suppressed,
        out of service) nor the children of a flood summary.
        ``include_hidden=True`` lists every alarm, ``normal`` ones included
        (the read model the web filters). Naming a ``state`` lists that state,
        hidden ones included, children only with ``include_hidden``. ``group``
        lists the children of that flood summary, whatever their state. A
        summary matches ``municipality`` when one of its children does.
        """
        wanted = self._enum(AlarmState, state, "state")
        prio = self._enum(Priority, priority, "priority")
        if group is not None:
            summary = self._alarms.get(group)
            candidates = [self._alarms[c] for c in summary.children] if summary else []
            if summary is not None and not summary.is_summary:
                candidates.insert(0, summary)  # an incident lists itself with what joined it
        else:
            candidates = list(self._alarms.values())
        out: list[_Alarm] = []
        for a in candidates:
            a_state = a.state
            if wanted is not None and a_state is not wanted:
                continue
            if group is None and not include_hidden:
                if wanted is None and (a_state is AlarmState.NORMAL or a_state in HIDDEN_STATES):
                    continue
                if a.group is not None:
                    continue
            if prio is not None and a.priority is not prio:
                continue
            if source is not None and a.source != source:
                continue
            if municipality is not None and municipality not in (
                a.municipalities or [a.municipality]
            ):
                continue
            out.append(a)
        out.sort(key=lambda a: (a.priority.rank, -(a.raised_ts or 0.0), a.id))
        return [a.record() for a in out]

    def get(self, alarm_id: str) -> dict[str, Any]:
        """One alarm with its ``history`` (oldest first); :class:`UnknownAlarmError` if none."""
        a = self._get(alarm_id)
        out = a.record()
        out["history"] = [dict(entry) for entry in a.history]
        if a.is_summary:
            out["children"] = list(a.children)
        return out

    def active_sources(self) -> frozenset[str]:
        """Entities with an active alarm not hidden by a shelve, suppression or service state.

        Children of a flood summary count: their device is offline whether or
        not the list groups them. Summaries do not (their source is a path).
        """
        return frozenset(
            a.source for a in self._alarms.values()
            if a.active and not a.hidden and not a.is_summary
        )

    # -- checkpoint --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole book as plain msgpack-able values (see :meth:`from_dict`)."""
        alarms = []
        for a in self._alarms.values():
            item = {key: getattr(a, key) for key in _CHECKPOINT_KEYS}
            item["children"] = list(a.children)
            item["municipalities"] = list(a.municipalities)
            item["priority"] = a.priority.value
            item["base"] = a.base.value
            item["history"] = [dict(entry) for entry in a.history]
            item["steps"] = [dict(entry) for entry in a.steps]
            alarms.append(item)
        return {
            "version": _CHECKPOINT_VERSION,
            "alarms": alarms,
            "crisis": {
                act: [list(pair) for pair in sorted(pairs)] for act, pairs in self._crisis.items()
            },
            "bursts": {
                path: {"last_ts": b.last_ts, "members": list(b.members), "grouped": b.grouped}
                for path, b in self._bursts.items()
            },
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        clock: Clock,
        conditions: ConditionTable | None = None,
        *,
        flood_window_s: float | None = None,
        flood_threshold: int | None = None,
    ) -> AlarmBook:
        """A book restored from :meth:`to_dict`'s output.

        Raises :class:`~runtime.errors.MalformedMessageError` for a checkpoint
        of another version or shape.
        """
        book = cls(clock, conditions, flood_window_s=flood_window_s,
                   flood_threshold=flood_threshold)
        if not isinstance(data, Mapping) or data.get("version") != _CHECKPOINT_VERSION:
            raise MalformedMessageError(
                f"alarm book checkpoint of version {_version(data)!r}, "
                f"expected {_CHECKPOINT_VERSION}"
            )
        try:
            for item in data["alarms"]:
                fields = {key: item[key] for key in _CHECKPOINT_KEYS}
                fields["children"] = list(fields["children"])
                fields["municipalities"] = list(fields["municipalities"])
                a = _Alarm(
                    priority=Priority(item["priority"]),
                    base=AlarmState(item["base"]),
                    history=deque((dict(e) for e in item["history"]),
                                  maxlen=book._table.history),
                    steps=[dict(e) for e in item.get("steps") or ()],
                    **fields,
                )
                book._alarms[a.id] = a
                book._by_source.setdefault(a.source, {})[a.condition] = a
            for act, pairs in data["crisis"].items():
                book._crisis[str(act)] = frozenset((str(s), str(c)) for s, c in pairs)
            for path, burst in data["bursts"].items():
                book._bursts[str(path)] = _Burst(
                    float(burst["last_ts"]), [str(m) for m in burst["members"]],
                    bool(burst["grouped"])
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessageError(f"malformed alarm book checkpoint: {exc!r}") from exc
        for a in book._alarms.values():
            missing = [c for c in a.children if c not in book._alarms]
            if missing or (a.group is not None and a.group not in book._alarms):
                raise MalformedMessageError(f"alarm book checkpoint: {a.id} names alarms "
                                            f"it does not hold")
            a.live = sum(book._alarms[c].is_live for c in a.children)
        return book

    # -- internals: lookups and arguments ----------------------------------------------

    def _ts(self, ts: float | None) -> float:
        if ts is None:
            return self._clock.time()
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise AlarmArgumentError(f"ts must be a finite number, got {ts!r}", field="ts")
        return float(ts)

    def _get(self, alarm_id: str) -> _Alarm:
        a = self._alarms.get(alarm_id) if isinstance(alarm_id, str) else None
        if a is None:
            raise UnknownAlarmError(str(alarm_id))
        return a

    def _check_condition(self, condition: object) -> None:
        if not isinstance(condition, str) or not _NAME_RE.match(condition):
            raise AlarmArgumentError(f"condition {condition!r} does not match "
                                     f"{_NAME_RE.pattern}", field="condition")
        if condition in self._table.events:
            raise NotAnAlarmError(f"{condition} is an event, never an alarm",
                                  condition=condition)
        if condition == FLOOD_SUMMARY:
            raise NotAnAlarmError(f"{FLOOD_SUMMARY} is raised by the book itself",
                                  condition=condition, code="reserved_condition")

    @staticmethod
    def _admin(role: str, what: str) -> None:
        if role != ADMIN_ROLE:
            raise AlarmForbiddenError(f"only an {ADMIN_ROLE} may {what} (role {role!r})",
                                      role=str(role))

    @staticmethod
    def _enum(cls: type[_E], value: str | None, name: str) -> _E | None:
        if value is None:
            return None
        try:
            return cls(value)
        except ValueError:
            raise AlarmArgumentError(
                f"{name} must be one of {', '.join(m.value for m in cls)}, got {value!r}",
                field=name,
            ) from None

    def _alarm(self, source: str, condition: str, municipality: str, kind: str) -> _Alarm:
        a = self._by_source.get(source, {}).get(condition)
        if a is None:
            spec = self._table.spec(condition)
            a = _Alarm(
                id=alarm_id(source, condition),
                source=source,
                condition=condition,
                municipality=municipality,
                kind=kind,
                priority=spec.priority,
                message="",
                history=deque(maxlen=self._table.history),
            )
            self._alarms[a.id] = a
            self._by_source.setdefault(source, {})[condition] = a
        return a

    def _render(self, a: _Alarm) -> str:
        template = self._table.spec(a.condition).message
        return template.format(
            source=a.source,
            condition=a.condition,
            municipality=a.municipality,
            kind=a.kind,
            path=a.path or "",
            priority=a.priority.value,
            count=a.count,
        )

    # -- internals: the state machine ----------------------------------------------------

    @staticmethod
    def _snap(a: _Alarm) -> _Snap:
        return a.state, a.active

    @staticmethod
    def _activate(a: _Alarm, now: float) -> None:
        a.active = True
        a.raised_ts = now
        a.activations += 1
        if a.base in (AlarmState.NORMAL, AlarmState.RTN_UNACKNOWLEDGED):
            a.base = AlarmState.UNACKNOWLEDGED
            a.acked_by = a.acked_ts = None

    @staticmethod
    def _deactivate(a: _Alarm, now: float) -> None:
        a.active = False
        a.cleared_ts = now
        if a.base is AlarmState.UNACKNOWLEDGED:
            a.base = AlarmState.RTN_UNACKNOWLEDGED
        elif a.base is AlarmState.ACKNOWLEDGED:
            a.base = AlarmState.NORMAL

    @staticmethod
    def _reveal(a: _Alarm) -> None:
        # Whatever was acknowledged before it was hidden is annunciated again.
        if a.active:
            a.base = AlarmState.UNACKNOWLEDGED
            a.acked_by = a.acked_ts = None
        else:
            a.base = AlarmState.NORMAL

    def _ack_one(
        self, a: _Alarm, user: str, note: str, now: float, events: list[AlarmEvent]
    ) -> None:
        before = self._snap(a)
        a.base = (
            AlarmState.ACKNOWLEDGED if a.base is AlarmState.UNACKNOWLEDGED else AlarmState.NORMAL
        )
        a.acked_by, a.acked_ts = user, now
        self._settle(a, before, now, "ack", user, events, note=note)

    def _end_shelve(
        self, a: _Alarm, now: float, action: str, user: str | None, events: list[AlarmEvent]
    ) -> None:
        before = self._snap(a)
        a.shelved_until = a.shelved_by = a.shelve_reason = None
        if not a.hidden:
            self._reveal(a)
        self._touch(a)
        self._settle(a, before, now, action, user, events)

    def _touch(self, a: _Alarm) -> None:
        """Bring ``a``'s summary (or ``a``, a summary) up to date at the end of the call."""
        if a.is_summary:
            self._dirty[a.id] = None
        elif a.group is not None:
            self._dirty[a.group] = None

    def _settle(
        self,
        a: _Alarm,
        before: _Snap,
        now: float,
        action: str,
        user: str | None,
        events: list[AlarmEvent],
        *,
        note: str = "",
        force: bool = False,
    ) -> None:
        """Record what changed since ``before`` and keep the timers in step with it."""
        state = a.state
        changed = (state, a.active) != before
        if a.group is not None:
            # Every change to a child passes here, so the summary's count of live
            # children stays exact without walking them all on each change.
            was_live = before[1] and before[0] not in HIDDEN_STATES
            if was_live != a.is_live:
                self._alarms[a.group].live += 1 if a.is_live else -1
            self._dirty[a.group] = None
            if state is AlarmState.UNACKNOWLEDGED and before[0] is not state:
                self._reannounce.add(a.group)
        if not changed and not force:
            return
        if state is AlarmState.UNACKNOWLEDGED and a.group is None:
            if before[0] is not AlarmState.UNACKNOWLEDGED:
                a.unack_since = now
                a.escalated = False
        else:
            a.unack_since = None
        if state is AlarmState.NORMAL:
            a.priority = self._table.spec(a.condition).priority
            a.escalated = False
        kind = EventKind.TRANSITION if changed else EventKind.UPDATED
        self._record(a, kind, now, action, user, before[0], events, note=note)
        if state is AlarmState.NORMAL and a.children and not a.is_summary:
            # The incident is over: what joined it is released (a later one starts afresh).
            for child_id in a.children:
                child = self._alarms[child_id]
                child.group = None
                self._record(child, EventKind.UNGROUPED, now, "incident", None, child.state,
                             events, note=a.id)
            a.children = []

    def _record(
        self,
        a: _Alarm,
        kind: EventKind,
        now: float,
        action: str,
        user: str | None,
        previous: AlarmState,
        events: list[AlarmEvent],
        *,
        note: str = "",
    ) -> None:
        event = AlarmEvent(
            kind=kind,
            alarm_id=a.id,
            source=a.source,
            condition=a.condition,
            municipality=a.municipality,
            ts=now,
            action=action,
            user=user,
            previous=previous,
            state=a.state,
            active=a.active,
            priority=a.priority,
            group=a.group,
            note=note,
        )
        a.history.append({
            "ts": now,
            "kind": kind.value,
            "action": action,
            "user": user,
            "from": previous.value,
            "to": event.state.value,
            "active": a.active,
            "priority": a.priority.value,
            "note": note,
        })
        events.append(event)

    def _escalate(self, a: _Alarm, now: float, events: list[AlarmEvent]) -> None:
        while (
            a.unack_since is not None
            and not a.escalated
            and a.group is None
            and a.state is AlarmState.UNACKNOWLEDGED
        ):
            due = a.unack_since + self._table.delay(a.condition, a.priority)
            if due > now:
                return
            state = a.state
            if a.priority is Priority.CRITICAL:
                a.escalated = True
                self._record(a, EventKind.ESCALATED, due, "escalate", None, state, events,
                             note="unacknowledged past its delay at critical")
                return
            old = a.priority
            a.priority = old.raised()
            a.unack_since = due
            self._record(a, EventKind.PRIORITY, due, "escalate", None, state, events,
                         note=f"{old.value} -> {a.priority.value}")

    # -- internals: suppression ------------------------------------------------------------

    def _suppressor(self, a: _Alarm) -> str | None:
        same_source = self._by_source.get(a.source, {})
        for rule in self._table.suppressions:
            if not rule.applies(a.kind, a.condition):
                continue
            for by in rule.by:
                other = same_source.get(by)
                if other is not None and other.active:
                    return other.id
        for activation, pairs in self._crisis.items():
            if (a.source, a.condition) in pairs:
                return f"crisis:{activation}"
        return None

    def _update_suppression(self, a: _Alarm) -> str | None:
        """Recompute who suppresses ``a``; returns the suppressor it had before."""
        was_hidden = a.hidden
        old = a.suppressed_by
        a.suppressed_by = self._suppressor(a)
        if was_hidden and not a.hidden:
            self._reveal(a)
        return old

    def _resuppress_source(self, cause: _Alarm, now: float, events: list[AlarmEvent]) -> None:
        """Apply the topology rules to the other alarms of ``cause``'s source."""
        if cause.condition not in self._table.suppressors:
            return
        for other in list(self._by_source.get(cause.source, {}).values()):
            if other is cause:
                continue
            before = self._snap(other)
            old = self._update_suppression(other)
            action = "suppress" if other.suppressed_by is not None else "release"
            self._touch(other)
            self._settle(other, before, now, action, None, events,
                         note=other.suppressed_by or old or "")

    def _apply_masks(
        self, pairs: Iterable[tuple[str, str]], now: float, events: list[AlarmEvent]
    ) -> None:
        for source, condition in sorted(pairs):
            a = self._by_source.get(source, {}).get(condition)
            if a is None:
                continue
            before = self._snap(a)
            old = self._update_suppression(a)
            action = "suppress" if a.suppressed_by is not None else "release"
            self._touch(a)
            self._settle(a, before, now, action, None, events, note=a.suppressed_by or old or "")

    # -- internals: flood control ------------------------------------------------------------

    def _flood(self, a: _Alarm, path: str, now: float, events: list[AlarmEvent]) -> None:
        burst = self._bursts.get(path)
        if burst is None or now - burst.last_ts > self._window:
            burst = self._bursts[path] = _Burst(last_ts=now)
        burst.last_ts = now
        summary = self._alarms.get(summary_id(path))
        if burst.grouped and summary is not None and summary.children:
            self._join(summary, a, now, events)
            return
        burst.grouped = False
        burst.members.append(a.id)
        burst.members = [
            m for m in burst.members
            if (c := self._alarms.get(m)) is not None and c.active and c.group is None
        ]
        if len(burst.members) < self._threshold:
            return
        summary = self._summary(path, a)
        for member in burst.members:
            self._join(summary, self._alarms[member], now, events)
        burst.members = []
        burst.grouped = True

    def _summary(self, path: str, first: _Alarm) -> _Alarm:
        sid = summary_id(path)
        summary = self._alarms.get(sid)
        if summary is None:
            summary = _Alarm(
                id=sid,
                source=path,
                condition=FLOOD_SUMMARY,
                municipality=first.municipality,
                kind=PATH_KIND,
                priority=self._table.spec(FLOOD_SUMMARY).priority,
                message="",
                path=path,
                history=deque(maxlen=self._table.history),
            )
            self._alarms[sid] = summary
            self._by_source.setdefault(path, {})[FLOOD_SUMMARY] = summary
        return summary

    def _join(self, summary: _Alarm, child: _Alarm, now: float, events: list[AlarmEvent]) -> None:
        child.group = summary.id
        child.unack_since = None
        summary.children.append(child.id)
        summary.live += child.is_live
        if child.municipality not in summary.municipalities:
            bisect.insort(summary.municipalities, child.municipality)
        if child.state is AlarmState.UNACKNOWLEDGED:
            self._reannounce.add(summary.id)
        self._dirty[summary.id] = None
        self._record(child, EventKind.GROUPED, now, "flood", None, child.state, events,
                     note=summary.id)

    def _finish(self, now: float, events: list[AlarmEvent]) -> None:
        """Bring every summary touched during the call up to date."""
        while self._dirty:
            sid = next(iter(self._dirty))
            del self._dirty[sid]
            summary = self._alarms.get(sid)
            if summary is not None and summary.is_summary:
                self._refresh(summary, now, events)
        self._reannounce.clear()

    def _refresh(self, s: _Alarm, now: float, events: list[AlarmEvent]) -> None:
        active = s.live > 0
        count = len(s.children)
        before = self._snap(s)
        if s.municipalities:
            s.municipality = (
                s.municipalities[0] if len(s.municipalities) == 1 else MIXED_MUNICIPALITY
            )
        if active and not s.active:
            self._activate(s, now)
        elif not active and s.active:
            self._deactivate(s, now)
        elif active and s.id in self._reannounce and s.base is AlarmState.ACKNOWLEDGED:
            s.base = AlarmState.UNACKNOWLEDGED
            s.acked_by = s.acked_ts = None
        self._update_suppression(s)
        s.message = self._render(s)
        self._settle(s, before, now, "flood", None, events, note=f"{count} children",
                     force=s.count_seen != count)
        s.count_seen = count
        if s.base is AlarmState.NORMAL and not s.active and s.children:
            for child_id in s.children:
                child = self._alarms[child_id]
                child.group = None
                if child.state is AlarmState.UNACKNOWLEDGED:
                    child.unack_since = now
                self._record(child, EventKind.UNGROUPED, now, "flood", None, child.state, events,
                             note=s.id)
            s.children = []
            s.live = 0
            s.message = self._render(s)


def _version(data: object) -> object:
    return data.get("version") if isinstance(data, Mapping) else type(data).__name__
