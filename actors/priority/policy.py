"""Transit signal priority's decision rules, after NTCIP 1211 (Signal Control and Prioritization).

NTCIP 1211 splits priority between three parties: a **Priority Request
Generator** (PRG) speaks for the vehicle ("bus X on approach A, at the stop
line in E s, L s late"); a **Priority Request Server** (PRS) at the crossroad
triages what it receives (which requests are valid, which conflict, which one
is served, when the crossroad needs a rest); the controller's **Coordinator and
Scheduler** apply the chosen strategy within their own limits (minimum greens,
clearances, coordination). Here the pool is the generator (it tracks the buses
and checks them in and out of crossroads, :func:`eligible` being its part of
the rules), one :class:`CrossroadPolicy` per crossroad in that crossroad's
priority lane is the server, and the traffic controller is the coordinator
(``priority_request`` in ``devices/profiles/traffic_controller.toml``). This
module is the server's and generator's rules alone: synchronous, no I/O, time
passed in (``now``, seconds of the wall clock, as request timestamps are).

**Deciding** (:meth:`CrossroadPolicy.decide`). The first rule a request breaks
refuses it, with a stable reason of :data:`REFUSALS`:

====================  ================================================================
``duplicate``         its id was seen here before (a re-sent request: the first decision
                      stands), or its bus already holds the crossroad's grant
``unknown_approach``  its approach is not one of the crossroad's (1..8)
``not_late``          its line's priority is conditional and the bus is less late than
                      ``min_lateness_s``
``eta_beyond_window`` the bus is further than ``eta_window_s`` from the stop line
``mode``              the controller is not in ``auto`` (flashing, manual, all-red…)
``lockout``           the reservice time after the last grant has not run out
``max_grants``        the crossroad gave ``max_grants`` greens within ``window_s``
``no_strategy``       the bus needs an early green and its line may not have one
``max_active``        the crossroad already serves a request on the same approach: one
                      grant at a time, and that green serves this bus too
``conflict_lost``     the crossroad serves a request on another approach and keeps it
====================  ================================================================

**Strategy**. Green extension when the bus's approach is green now and the bus
reaches the stop line within its line's ``max_extension_s``; otherwise an early
green (the approach's next green brought forward, conflicting greens cut to
their minimum by the controller), if the line allows early greens. When the
controller's view does not say which approaches are green, the strategy the
generator proposed stands.

**One grant at a time, never taken back once acted on.** A crossroad holds at
most one granted request. A newcomer on another approach is compared with it:
the later bus wins (``lateness_s``), then the earlier check-in (``arrival_ts``).
A newcomer that wins displaces the granted request only while the controller
does not yet report acting on it (:attr:`ControllerView.acting`: the write is
still on its way), and only if that request did not itself displace another:
a green the controller has begun is never cut short for another bus, and
service changes hands at most once, so two buses cannot flap it back and forth.
Otherwise the newcomer is refused (``conflict_lost``).

**Ending**. A granted request ends by the bus's check-out
(:meth:`~CrossroadPolicy.check_out`), a cancellation
(:meth:`~CrossroadPolicy.cancel`), its deadline (:meth:`~CrossroadPolicy.expire`,
run too at the start of every other call: the controller drops a request it
has held for ``request_deadline_s`` by itself) or its displacement by another.
The **lockout** (NTCIP's reservice time) starts when a granted request ends,
however it ends except by displacement — at check-out, at cancellation, at the
deadline — because the controller may already have changed its timing; for
``lockout_s`` no new grant is made at the crossroad (``lockout_scope =
"crossroad"``) or on that approach (``"approach"``).

**Conditional priority** is per line: ``min_lateness_s = 0`` grants regardless
of lateness. ``grant_all = true`` is the benches' mode, spelled out in the
file rather than hidden in code: every request that is not a duplicate and
names a known approach is granted, a newer one displacing the crossroad's
current grant, whatever the lateness, ETA, mode, lockout, count or line.

The rules are data (``actors/plans/priority.toml``)::

    grant_all = false

    [crossroad]                    # every crossroad's request server
    lockout_s = 60                 # reservice time after a grant ends
    lockout_scope = "crossroad"    # or "approach"
    max_grants = 4                 # greens given within window_s; 0: no limit
    window_s = 600
    request_deadline_s = 60        # how long the controller holds a request
    eta_window_s = 60              # requests from further away are refused

    [default]                      # every line, unless it says otherwise
    min_lateness_s = 60            # conditional priority; 0: unconditional
    max_extension_s = 15
    early_green = true

    [line.L1]                      # one line's own rules (any key of [default])
    min_lateness_s = 0

:func:`parse_priority_config` refuses a file that breaks a limit with one
``"{file}:{line}: {field}: {message}"`` line per problem
(:class:`~runtime.errors.PlanError`, as crisis and signal plans are).

**Request ids** are u32 and never 0, as the controller's register takes them.
A :class:`RequestIdAllocator` builds them from the wall clock without
coordination: ``tick`` (21 bits, sixteenths of a second, wrapping every
36.4 h) · ``member`` (4 bits, the pool member's number) · ``seq`` (7 bits,
counting within the tick). A new allocator starts one tick after the tick of
its creation, and the tick of an id never goes back, so a member restarted in
a later tick than the one its predecessor last used never repeats one of its
ids; a member handing out more than 128 ids within a tick takes the next tick
early (:meth:`~RequestIdAllocator.ahead_s` says by how much), which a restart
(some seconds under Ray) outlasts unless the member runs above 2,048 ids/s for
that long. Two members' ids never meet. A wall clock stepped back across a
restart can repeat ids: the ids only have to differ while requests live (a
minute) and the server remembers them (an hour).

>>> config = PolicyConfig(default=LineRules(min_lateness_s=30))
>>> xr = CrossroadPolicy("xr-dijon-0001", config)
>>> view = ControllerView("auto", phase=1, green=frozenset({1}))
>>> req = PriorityRequest(7, "bus-0001", "B10", "xr-dijon-0001", 1, "extension",
...                       eta_s=8, lateness_s=95, arrival_ts=100.0, received_ts=100.0)
>>> xr.decide(req, 100.0, view)
Decision(grant=True, reason='granted', strategy='extension', max_extension_s=15.0, \
deadline_s=60.0, preempted=None)
>>> xr.check_out(7, 109.0).ending
'checked_out'
>>> later = PriorityRequest(8, "bus-0002", "B11", "xr-dijon-0001", 3, "early_green",
...                         eta_s=20, lateness_s=40, arrival_ts=120.0, received_ts=120.0)
>>> xr.decide(later, 120.0, view).reason
'lockout'
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import os
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from runtime.datafile import Checker, KeyPath, parse_toml, read_text, shown, type_name
from runtime.errors import PlanError

__all__ = [
    "APPROACHES",
    "AUTO",
    "BUILTIN_SOURCE",
    "ENDINGS",
    "GRANTED",
    "LINE_PATTERN",
    "LOCKOUT_SCOPES",
    "MAX_MEMBERS",
    "MAX_REQUEST_ID",
    "REFUSALS",
    "STRATEGIES",
    "TICK_S",
    "Clear",
    "ControllerView",
    "CrossroadPolicy",
    "Decision",
    "LineRules",
    "PolicyConfig",
    "PriorityRequest",
    "RequestIdAllocator",
    "builtin_priority_config",
    "builtin_priority_rules",
    "eligible",
    "load_priority_config",
    "parse_priority_config",
]

#: What the controller may do for a bus: hold its green, or bring its green forward.
STRATEGIES: Final = ("extension", "early_green")
#: Why a request is refused, in the order the rules are tried (see the module's table).
REFUSALS: Final = ("duplicate", "unknown_approach", "not_late", "eta_beyond_window", "mode",
                   "lockout", "max_grants", "no_strategy", "max_active", "conflict_lost")
#: The reason of a granted decision.
GRANTED: Final = "granted"
#: How a granted request ends.
ENDINGS: Final = ("checked_out", "cancelled", "expired", "preempted")
#: What a lockout keeps from a new grant: the whole crossroad, or the approach just served.
LOCKOUT_SCOPES: Final = ("crossroad", "approach")
#: The approaches a controller's ``priority_request`` names.
APPROACHES: Final = range(1, 9)
#: The controller mode in which priority is given.
AUTO: Final = "auto"
#: Request ids are u32 (0 is the controller's "no request").
MAX_REQUEST_ID: Final = 0xFFFF_FFFF
#: A line's name, as buses report it (``attrs.line`` of the inventory).
LINE_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

# Limits of the file's values: (least, most), seconds unless said.
_LIMITS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType({
    "lockout_s": (0, 3600),
    "window_s": (1, 3600),
    "request_deadline_s": (1, 600),
    "eta_window_s": (1, 600),
    "min_lateness_s": (0, 3600),
    "max_extension_s": (0, 60),
    "max_grants": (0, 100),  # greens, not seconds
})
# How long a seen request id is remembered (s), and how many at most.
_SEEN_S: Final = 3600.0
_SEEN_MAX: Final = 65536

_TOP_KEYS: Final = ("grant_all", "crossroad", "default", "line")
_CROSSROAD_KEYS: Final = ("lockout_s", "lockout_scope", "max_grants", "window_s",
                          "request_deadline_s", "eta_window_s")
_LINE_KEYS: Final = ("min_lateness_s", "max_extension_s", "early_green")


def _limit_problem(key: str, value: object) -> str | None:
    """What is wrong with ``value`` for ``key``, if anything."""
    least, most = _LIMITS[key]
    unit = "" if key == "max_grants" else " s"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"expected a number, got {value!r}"
    if not math.isfinite(value):
        return f"{value} is not a finite number"
    if not least <= value <= most:
        return f"{_num(value)}{unit} is outside {_num(least)}..{_num(most)}{unit}"
    return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _check(pairs: Iterable[tuple[str, object]]) -> None:
    problems = [f"{key}: {p}" for key, value in pairs if (p := _limit_problem(key, value))]
    if problems:
        raise ValueError("; ".join(problems))


def _deadline_problem(eta_window_s: float, request_deadline_s: float) -> str | None:
    if eta_window_s > request_deadline_s:
        return (f"eta_window_s {_num(eta_window_s)} s is longer than request_deadline_s "
                f"{_num(request_deadline_s)} s: a request could expire before its bus arrives")
    return None


# -- configuration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineRules:
    """The rules of a line's buses (the ``[default]`` table, or one ``[line.NAME]``)."""

    #: Conditional priority: only buses at least this late (s); 0 grants regardless.
    min_lateness_s: float = 0.0
    #: The longest the controller may hold a green for this line's bus (s).
    max_extension_s: float = 15.0
    #: Whether the controller may bring a green forward for this line's bus.
    early_green: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.early_green, bool):
            raise ValueError(f"early_green: expected a boolean, got {self.early_green!r}")
        _check((("min_lateness_s", self.min_lateness_s),
                ("max_extension_s", self.max_extension_s)))


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Every crossroad's request server rules and the lines' rules.

    ``PolicyConfig()`` is a valid configuration: unconditional priority, a 60 s
    lockout over the crossroad, no cap on grants per window.
    """

    #: Reservice time (s): no new grant for this long after a granted request ends.
    lockout_s: float = 60.0
    #: What the lockout covers: ``"crossroad"`` or ``"approach"`` (:data:`LOCKOUT_SCOPES`).
    lockout_scope: str = "crossroad"
    #: At most this many grants at a crossroad within ``window_s``; 0: no limit.
    max_grants: int = 0
    window_s: float = 600.0
    #: How long the controller is told to hold a request (s).
    request_deadline_s: float = 60.0
    #: Requests whose bus is further from the stop line than this (s) are refused.
    eta_window_s: float = 60.0
    #: The benches' mode: grant every well-formed request (see the module's docstring).
    grant_all: bool = False
    #: Every line's rules, unless :attr:`lines` has the line's own.
    default: LineRules = LineRules()
    lines: Mapping[str, LineRules] = field(default_factory=lambda: MappingProxyType({}))
    #: Where the configuration was read from.
    source: str = "<memory>"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.lockout_scope not in LOCKOUT_SCOPES:
            problems.append(f"lockout_scope: {self.lockout_scope!r} is not one of "
                            f"{', '.join(LOCKOUT_SCOPES)}")
        if not isinstance(self.max_grants, int) or isinstance(self.max_grants, bool):
            problems.append(f"max_grants: expected a whole number, got {self.max_grants!r}")
        if not isinstance(self.grant_all, bool):
            problems.append(f"grant_all: expected a boolean, got {self.grant_all!r}")
        if not isinstance(self.default, LineRules):
            problems.append(f"default: expected LineRules, got {self.default!r}")
        for name, rules in self.lines.items():
            if not isinstance(name, str) or not LINE_PATTERN.match(name):
                problems.append(f"lines: {name!r} does not match {LINE_PATTERN.pattern}")
            if not isinstance(rules, LineRules):
                problems.append(f"lines: {name!r}: expected LineRules, got {rules!r}")
        problems += [f"{key}: {problem}" for key, value in (
            ("lockout_s", self.lockout_s), ("max_grants", self.max_grants),
            ("window_s", self.window_s), ("request_deadline_s", self.request_deadline_s),
            ("eta_window_s", self.eta_window_s)) if (problem := _limit_problem(key, value))]
        if not problems and (p := _deadline_problem(self.eta_window_s, self.request_deadline_s)):
            problems.append(f"eta_window_s: {p}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "lines", MappingProxyType(dict(self.lines)))

    def rules(self, line: str) -> LineRules:
        """The rules of ``line``'s buses: its own, else the default."""
        return self.lines.get(line, self.default)


def eligible(line: str, lateness_s: float, config: PolicyConfig) -> str | None:
    """The pool's check before it asks a crossroad: ``"not_late"`` or ``None``.

    Conditional priority: a bus of a line with ``min_lateness_s`` above 0 is
    only worth a request when it is at least that late. ``grant_all`` lets
    every bus through; an unknown lateness (NaN) is not late.
    """
    if config.grant_all:
        return None
    need = config.rules(line).min_lateness_s
    if need <= 0:
        return None
    return None if lateness_s >= need else "not_late"  # NaN compares False: not late


# -- requests, views and decisions ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriorityRequest:
    """One bus's request for priority at one crossroad (a check-in).

    ``eta_s`` is the time to the stop line estimated at check-in (``arrival_ts``,
    the generator's clock); ``received_ts`` is when the crossroad's server got
    it. ``lateness_s`` is positive when the bus is late on its timetable.
    ``strategy`` is what the generator proposes from what it knows; the server
    decides with the controller's view. The approach is not checked here but by
    the crossroad (``unknown_approach``): a bus wrong about a crossroad's
    approaches sent well-formed data.

    Raises :class:`ValueError` for malformed fields.
    """

    request_id: int
    bus_id: str
    line: str
    crossroad_id: str
    approach: int
    strategy: str
    eta_s: float
    lateness_s: float
    arrival_ts: float
    received_ts: float

    def __post_init__(self) -> None:
        problems: list[str] = []
        if (not isinstance(self.request_id, int) or isinstance(self.request_id, bool)
                or not 0 < self.request_id <= MAX_REQUEST_ID):
            problems.append(f"request_id: {self.request_id!r} is not in 1..{MAX_REQUEST_ID}")
        for name in ("bus_id", "line", "crossroad_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name}: expected a non-empty string, got {value!r}")
        if not isinstance(self.approach, int) or isinstance(self.approach, bool):
            problems.append(f"approach: expected a whole number, got {self.approach!r}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        for name in ("eta_s", "lateness_s", "arrival_ts", "received_ts"):
            value = getattr(self, name)
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not math.isfinite(value)):
                problems.append(f"{name}: expected a finite number, got {value!r}")
        if not problems and self.eta_s < 0:
            problems.append(f"eta_s: {self.eta_s} is negative")
        if problems:
            raise ValueError(f"priority request {self.request_id!r}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class ControllerView:
    """What the crossroad's published view says of its controller, as the server needs it.

    ``mode`` is the controller's (``"auto"`` is the only one priority is given
    in). ``phase`` is the phase in green or amber, 0 when none is (all-red,
    flashing, starting): then no approach counts as green. ``green`` holds the
    approaches (1..8) whose phase is green now, ``None`` when the view cannot
    tell (the generator's proposed strategy then stands). ``acting`` says that
    the controller reports acting on the priority request it was sent
    (``priority_status`` granted or served): from then on that grant is never
    displaced.
    """

    mode: str
    phase: int = 0
    green: frozenset[int] | None = None
    acting: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The server's answer to a request.

    A grant is sent to the controller at once: ``strategy``, the longest it may
    hold the green (``max_extension_s``) and how long it holds the request
    (``deadline_s``, from now). ``preempted`` is the id of the grant it
    displaced (cleared by this one), if any. A refusal has ``reason`` in
    :data:`REFUSALS` and nothing to send.
    """

    grant: bool
    reason: str
    strategy: str | None = None
    max_extension_s: float = 0.0
    deadline_s: float = 0.0
    preempted: int | None = None


@dataclass(frozen=True, slots=True)
class Clear:
    """A granted request that ended: what to clear at the controller.

    ``ending`` is one of :data:`ENDINGS`; ``at`` is when it ended (the deadline,
    for an expired request: the controller dropped it then by itself, so its
    clear need not be sent). ``detail`` is a cancellation's reason.
    """

    request_id: int
    bus_id: str
    crossroad_id: str
    approach: int
    ending: str
    at: float
    detail: str = ""


@dataclass(slots=True)
class _Grant:
    request: PriorityRequest
    strategy: str
    granted_ts: float
    expires_ts: float
    displaced: bool  # it displaced another grant: it is never displaced in turn


# -- the request server -------------------------------------------------------------------


class CrossroadPolicy:
    """One crossroad's priority request server: every bus's requests for it pass here.

    Not thread-safe: its owner (the crossroad's priority lane) calls it from
    one thread. ``approaches`` are the crossroad's own (1..8).
    """

    def __init__(self, crossroad_id: str, config: PolicyConfig,
                 approaches: Iterable[int] = APPROACHES) -> None:
        self.crossroad_id = crossroad_id
        self.config = config
        self.approaches = frozenset(approaches)
        if not self.approaches or not self.approaches <= set(APPROACHES):
            raise ValueError(f"{crossroad_id}: approaches {sorted(self.approaches)} are not a "
                             f"non-empty part of 1..8")
        self._grant: _Grant | None = None
        self._seen: OrderedDict[int, float] = OrderedDict()  # request id -> received (now)
        self._lockout: dict[int, float] = {}  # approach (0: the crossroad) -> until
        self._grants: deque[float] = deque()  # when each grant within the window was made
        self.granted = 0
        self.refused: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()

    @property
    def active(self) -> PriorityRequest | None:
        """The request the crossroad serves now, if any."""
        return self._grant.request if self._grant else None

    def lockout_until(self, approach: int) -> float:
        """When the lockout on ``approach`` runs out (the past if there is none)."""
        key = 0 if self.config.lockout_scope == "crossroad" else approach
        return self._lockout.get(key, -math.inf)

    def decide(self, request: PriorityRequest, now: float, view: ControllerView) -> Decision:
        """Grant or refuse ``request`` (the module's docstring has the rules, in order).

        Raises :class:`ValueError` if the request is for another crossroad.
        """
        if request.crossroad_id != self.crossroad_id:
            raise ValueError(f"request {request.request_id} is for {request.crossroad_id}, "
                             f"not {self.crossroad_id}")
        self.expire(now)
        rules = self.config.rules(request.line)
        refusal, strategy = self._judge(request, now, view, rules)
        self._remember(request.request_id, now)
        if refusal is not None:
            self.refused[refusal] += 1
            return Decision(False, refusal)
        assert strategy is not None
        preempted = None
        if self._grant is not None:  # _judge only lets a newcomer through that displaces it
            preempted = self._grant.request.request_id
            self._end("preempted", now)
        self._grant = _Grant(request, strategy, now, now + self.config.request_deadline_s,
                             displaced=preempted is not None)
        if self.config.max_grants > 0:
            self._in_window(now)
            self._grants.append(now)
        self.granted += 1
        return Decision(True, GRANTED, strategy, float(rules.max_extension_s),
                        float(self.config.request_deadline_s), preempted)

    def _judge(self, request: PriorityRequest, now: float, view: ControllerView,
               rules: LineRules) -> tuple[str | None, str | None]:
        """The refusal (or ``None``) and the strategy (when granted)."""
        config = self.config
        current = self._grant
        if request.request_id in self._seen or (
                current is not None and current.request.bus_id == request.bus_id
                and not config.grant_all):
            return "duplicate", None
        if request.approach not in self.approaches:
            return "unknown_approach", None
        if config.grant_all:
            return None, self._strategy(request, view, rules, early_green=True)
        if rules.min_lateness_s > 0 and not request.lateness_s >= rules.min_lateness_s:
            return "not_late", None
        if request.eta_s > config.eta_window_s:
            return "eta_beyond_window", None
        if view.mode != AUTO:
            return "mode", None
        if now < self.lockout_until(request.approach):
            return "lockout", None
        if config.max_grants > 0 and self._in_window(now) >= config.max_grants:
            return "max_grants", None
        strategy = self._strategy(request, view, rules)
        if strategy is None:
            return "no_strategy", None
        if current is not None:
            if current.request.approach == request.approach:
                return "max_active", None
            if view.acting or current.displaced or not _wins(request, current.request):
                return "conflict_lost", None
        return None, strategy

    def _in_window(self, now: float) -> int:
        """How many grants were made within the window that ends now."""
        while self._grants and self._grants[0] <= now - self.config.window_s:
            self._grants.popleft()
        return len(self._grants)

    def _strategy(self, request: PriorityRequest, view: ControllerView, rules: LineRules,
                  early_green: bool | None = None) -> str | None:
        """Extension or early green (see the module's docstring); ``None`` when the bus
        needs an early green that is not allowed (``early_green``: the line's unless said)."""
        if view.green is None:
            chosen = request.strategy
        elif (view.phase != 0 and request.approach in view.green
              and request.eta_s <= rules.max_extension_s):
            chosen = "extension"
        else:
            chosen = "early_green"
        allowed = rules.early_green if early_green is None else early_green
        if chosen == "early_green" and not allowed:
            return None
        return chosen

    def check_out(self, request_id: int, now: float) -> Clear | None:
        """The bus passed the stop line: the clear to send, or ``None`` if it held no grant.

        The lockout starts now.
        """
        self.expire(now)
        if self._grant is None or self._grant.request.request_id != request_id:
            return None
        return self._end("checked_out", now)

    def cancel(self, request_id: int, now: float, reason: str) -> Clear | None:
        """Withdraw a request (the bus left its route, went out of service, an operator
        said so): the clear to send, or ``None`` if it held no grant. The lockout
        starts now: the controller may already have changed its timing."""
        self.expire(now)
        if self._grant is None or self._grant.request.request_id != request_id:
            return None
        return self._end("cancelled", now, reason)

    def expire(self, now: float) -> list[Clear]:
        """Drop the grant past its deadline, as the controller has by itself.

        The returned clears need not be sent; the lockout runs from the deadline.
        """
        while self._seen:
            oldest, seen = next(iter(self._seen.items()))
            if seen > now - _SEEN_S and len(self._seen) <= _SEEN_MAX:
                break
            del self._seen[oldest]
        if self._grant is not None and now >= self._grant.expires_ts:
            return [self._end("expired", self._grant.expires_ts)]
        return []

    def _end(self, ending: str, at: float, detail: str = "") -> Clear:
        grant = self._grant
        assert grant is not None
        self._grant = None
        self.ended[ending] += 1
        request = grant.request
        if ending != "preempted":
            key = 0 if self.config.lockout_scope == "crossroad" else request.approach
            self._lockout[key] = max(self._lockout.get(key, -math.inf), at + self.config.lockout_s)
        return Clear(request.request_id, request.bus_id, self.crossroad_id, request.approach,
                     ending, at, detail)

    def _remember(self, request_id: int, now: float) -> None:
        self._seen[request_id] = now
        self._seen.move_to_end(request_id)

    def snapshot(self) -> dict[str, Any]:
        """The server's state and counters, JSON-ready (for ``GET /api/v1/priority``)."""
        grant = self._grant
        active = None if grant is None else {
            "request_id": grant.request.request_id, "bus": grant.request.bus_id,
            "line": grant.request.line, "approach": grant.request.approach,
            "strategy": grant.strategy, "granted_ts": grant.granted_ts,
            "expires_ts": grant.expires_ts}
        return {
            "crossroad": self.crossroad_id,
            "active": active,
            "granted": self.granted,
            "refused": {reason: self.refused[reason] for reason in REFUSALS},
            "ended": {ending: self.ended[ending] for ending in ENDINGS},
            "lockout_until": {("crossroad" if key == 0 else str(key)): until
                              for key, until in sorted(self._lockout.items())},
        }


def _wins(new: PriorityRequest, old: PriorityRequest) -> bool:
    """Whether ``new`` goes before ``old``: the later bus, then the earlier check-in."""
    if new.lateness_s != old.lateness_s:
        return new.lateness_s > old.lateness_s
    return new.arrival_ts < old.arrival_ts


# -- request ids ----------------------------------------------------------------------------

#: The time step of request ids (s).
TICK_S: Final = 1 / 16
_TICK_BITS: Final = 21
_MEMBER_BITS: Final = 4
_SEQ_BITS: Final = 7
#: Pool members whose ids never meet.
MAX_MEMBERS: Final = 1 << _MEMBER_BITS


class RequestIdAllocator:
    """Request ids for one pool member, unique across its restarts (see the module's
    docstring for the layout and what it guarantees).

    ``member`` is the member's number (0..15), ``created`` the wall-clock time
    of the allocator's creation (``time.time()``).
    """

    def __init__(self, member: int, created: float) -> None:
        if not isinstance(member, int) or isinstance(member, bool) or not (
                0 <= member < MAX_MEMBERS):
            raise ValueError(f"member {member!r} is outside 0..{MAX_MEMBERS - 1}")
        if not math.isfinite(created):
            raise ValueError(f"created {created!r} is not a finite time")
        self.member = member
        # One tick after the creation's: a predecessor may have used the creation's own.
        self._tick = _tick(created) + 1
        self._seq = 0

    def allocate(self, now: float) -> int:
        """A fresh id in 1..:data:`MAX_REQUEST_ID`."""
        tick = _tick(now)
        if tick > self._tick:
            self._tick, self._seq = tick, 0
        while True:
            if self._seq >= 1 << _SEQ_BITS:
                self._tick += 1
                self._seq = 0
            ident = (((self._tick % (1 << _TICK_BITS)) << (_MEMBER_BITS + _SEQ_BITS))
                     | (self.member << _SEQ_BITS) | self._seq)
            self._seq += 1
            if ident:
                return ident

    def ahead_s(self, now: float) -> float:
        """How far the ids run ahead of the clock (s): above a restart's time, a restarted
        member could repeat one."""
        return max(0.0, (self._tick - _tick(now)) * TICK_S)


def _tick(ts: float) -> int:
    return math.floor(ts / TICK_S)


# -- the file ----------------------------------------------------------------------------


class _Parser(Checker):
    """One validation pass over a parsed priority file, collecting issues."""

    def _keys(self, table: Mapping[str, Any], path: KeyPath, known: Sequence[str]) -> None:
        if known is _LINE_KEYS:
            for key in [k for k in table if k in _CROSSROAD_KEYS and k not in known]:
                self._issue((*path, key), f"{key} is a crossroad's rule, not a line's: set it "
                                          f"under [crossroad]")
            table = {k: v for k, v in table.items() if k not in _CROSSROAD_KEYS or k in known}
        super()._keys(table, path, known)

    def _table_at(self, path: KeyPath) -> dict[str, Any]:
        value: Any = self._doc
        for part in path:
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if not isinstance(value, dict):
            self._issue(path, f"expected a table, got {type_name(value)}")
            return {}
        return value

    def _number(self, table: Mapping[str, Any], path: KeyPath, key: str) -> float | None:
        value = table[key]
        if key == "max_grants":
            if not isinstance(value, int) or isinstance(value, bool):
                self._issue((*path, key), f"expected a whole number, got {type_name(value)} "
                                          f"{shown(value)}")
                return None
        elif not isinstance(value, int | float) or isinstance(value, bool):
            self._issue((*path, key), f"expected a number of seconds, got {type_name(value)} "
                                      f"{shown(value)}")
            return None
        problem = _limit_problem(key, value)
        if problem:
            self._issue((*path, key), problem)
            return None
        return float(value)

    def _bool(self, table: Mapping[str, Any], path: KeyPath, key: str) -> bool | None:
        value = table[key]
        if not isinstance(value, bool):
            self._issue((*path, key), f"expected true or false, got {type_name(value)} "
                                      f"{shown(value)}")
            return None
        return value

    def _rules(self, table: Mapping[str, Any], path: KeyPath, base: LineRules) -> LineRules | None:
        self._keys(table, path, _LINE_KEYS)
        before = len(self._issues)
        values: dict[str, Any] = {}
        for key in _LINE_KEYS:
            if key in table:
                value = (self._bool(table, path, key) if key == "early_green"
                         else self._number(table, path, key))
                values[key] = value
        if len(self._issues) != before:
            return None
        return LineRules(
            float(values.get("min_lateness_s", base.min_lateness_s)),
            float(values.get("max_extension_s", base.max_extension_s)),
            bool(values.get("early_green", base.early_green)))

    def run(self) -> PolicyConfig:
        doc = self._doc
        self._keys(doc, (), _TOP_KEYS)
        defaults = PolicyConfig()
        grant_all = defaults.grant_all
        if "grant_all" in doc:
            grant_all = bool(self._bool(doc, (), "grant_all"))
        crossroad = self._table_at(("crossroad",))
        self._keys(crossroad, ("crossroad",), _CROSSROAD_KEYS)
        wide: dict[str, Any] = {}
        for key in _CROSSROAD_KEYS:
            if key not in crossroad:
                continue
            if key == "lockout_scope":
                scope = crossroad[key]
                if scope not in LOCKOUT_SCOPES:
                    self._issue(("crossroad", key), f"{shown(scope)} is not one of "
                                                    f"{', '.join(LOCKOUT_SCOPES)}")
                else:
                    wide[key] = scope
            else:
                number = self._number(crossroad, ("crossroad",), key)
                if number is not None:
                    wide[key] = int(number) if key == "max_grants" else float(number)
        eta = wide.get("eta_window_s", defaults.eta_window_s)
        deadline = wide.get("request_deadline_s", defaults.request_deadline_s)
        if problem := _deadline_problem(eta, deadline):
            self._issue(("crossroad", "eta_window_s" if "eta_window_s" in crossroad
                         else "request_deadline_s"), problem)
        default = self._rules(self._table_at(("default",)), ("default",), LineRules())
        lines: dict[str, LineRules] = {}
        for name, table in self._table_at(("line",)).items():
            path: KeyPath = ("line", name)
            if not LINE_PATTERN.match(name):
                self._issue(path, f"line name {shown(name)} does not match "
                                  f"{LINE_PATTERN.pattern}")
            if not isinstance(table, dict):
                self._issue(path, f"expected a table, got {type_name(table)}")
                continue
            rules = self._rules(table, path, default or LineRules())
            if rules is not None:
                lines[name] = rules
        self._raise_issues(PlanError)
        assert default is not None
        return PolicyConfig(grant_all=grant_all, default=default,
                            lines=MappingProxyType(dict(sorted(lines.items()))),
                            source=self._source, **wide)


def parse_priority_config(text: str, source: str) -> PolicyConfig:
    """Validate priority rules TOML ``text`` (``source`` names it in issues).

    Raises :class:`~runtime.errors.PlanError` with one ``file:line`` line per problem.
    """
    return _Parser(text, source, parse_toml(text, source, PlanError)).run()


def load_priority_config(path: str | os.PathLike[str]) -> PolicyConfig:
    """Read and validate a priority rules file."""
    return parse_priority_config(read_text(path, PlanError), os.fspath(path))


#: Where the shipped rules are, as issues name them.
BUILTIN_SOURCE: Final = "actors/plans/priority.toml"


def builtin_priority_rules() -> str:
    """The text of the shipped ``actors/plans/priority.toml`` (a service may run an edited
    copy: ``ServiceOptions.priority_rules``)."""
    return importlib.resources.files("actors").joinpath("plans/priority.toml").read_text(
        encoding="utf-8")


@functools.cache
def builtin_priority_config() -> PolicyConfig:
    """The shipped ``actors/plans/priority.toml`` (read once)."""
    return parse_priority_config(builtin_priority_rules(), BUILTIN_SOURCE)
