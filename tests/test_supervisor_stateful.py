"""The supervisor against a pure-Python model of its tree, under random crashes and time.

Times are dyadic fractions (quarters of a second, powers-of-two backoff, no
jitter) so that the model's arithmetic and the manual clock's agree exactly at
every window edge and backoff deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from runtime.clock import ManualClock
from supervisors import (
    Backoff,
    ChildSpec,
    ExitKind,
    ExitReason,
    IntensityScope,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    SupervisorOptions,
)

BOOM = ExitReason(ExitKind.ERROR, "boom")
BYE = ExitReason(ExitKind.NORMAL, "done")
# Mostly permanent children, so that most examples keep crashing and restarting.
RESTART_TYPES = [RestartType.PERMANENT] * 3 + [RestartType.TRANSIENT, RestartType.TEMPORARY]


class Incarnation:
    """A child incarnation that ends only when the test (or its supervisor) says so."""

    def __init__(self, spec: ChildSpec, starts: dict[str, int], live: dict[str, Incarnation]):
        self.id = spec.id
        self._starts = starts
        self._live = live
        self.exit: asyncio.Future[ExitReason] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        self._starts[self.id] = self._starts.get(self.id, 0) + 1
        self._live[self.id] = self

    async def wait(self) -> ExitReason:
        return await asyncio.shield(self.exit)

    async def stop(self) -> None:
        self.end(ExitReason(ExitKind.SHUTDOWN))

    async def kill(self) -> None:
        self.end(ExitReason(ExitKind.KILLED))

    def end(self, reason: ExitReason) -> None:
        if not self.exit.done():
            self.exit.set_result(reason)

    @property
    def alive(self) -> bool:
        return not self.exit.done()


# -- the model ------------------------------------------------------------------------


@dataclass
class ModelChild:
    restart: RestartType
    status: str = "running"
    restarts: int = 0
    consecutive: int = 0
    running_since: float | None = None
    window: list[float] = field(default_factory=list)


@dataclass
class Timer:
    due: float
    seq: int
    ids: set[str]


class Model:
    """What OTP says the tree should look like, one decision at a time."""

    def __init__(self, options: SupervisorOptions, types: list[RestartType], now: float) -> None:
        self.options = options
        self.now = now
        self.children = {
            f"c{i}": ModelChild(t, running_since=now) for i, t in enumerate(types)
        }
        self.window: list[float] = []
        self.restarts = 0
        self.gave_up = False
        self.timers: list[Timer] = []
        self._seq = itertools.count()

    def running(self) -> list[str]:
        return [cid for cid, c in self.children.items() if c.status == "running"]

    def exit(self, cid: str, reason: ExitReason) -> None:
        child = self.children[cid]
        restart = child.restart is RestartType.PERMANENT or (
            child.restart is RestartType.TRANSIENT and reason.abnormal
        )
        if not restart:
            child.status = "stopped"
            child.running_since = None
            return
        self._decide(cid)
        self._converge()

    def restart(self, cid: str) -> None:
        """An operator's restart: expedites a pending backoff, else counts like a crash."""
        child = self.children[cid]
        held = [t for t in self.timers if cid in t.ids]
        if child.status == "restarting" and held:
            self.timers.remove(held[0])
        else:
            if child.status == "failed":
                child.window.clear()
            self._decide(cid, backoff=False)
        self._converge()

    def fire_until(self, t: float) -> None:
        for timer in sorted(self.timers, key=lambda x: (x.due, x.seq)):
            if timer.due > t:
                break
            self.now = timer.due
            self.timers.remove(timer)
            self._converge()
        self.now = t

    def next_due(self) -> float | None:
        return min((t.due for t in self.timers), default=None)

    def _decide(self, cid: str, *, backoff: bool = True) -> None:
        opts = self.options
        child = self.children[cid]
        window = self.window if opts.scope is IntensityScope.SUPERVISOR else child.window
        window.append(self.now)
        window[:] = [t for t in window if self.now - t < opts.max_seconds]
        if len(window) > opts.max_restarts:
            if opts.scope is IntensityScope.SUPERVISOR:
                self.gave_up = True
                self.timers.clear()
                for c in self.children.values():
                    if c.status in ("running", "restarting"):
                        c.status = "stopped"
                    c.running_since = None
            child.status = "failed"
            child.running_since = None
            return
        self.restarts += 1
        if child.running_since is not None and self.now - child.running_since > opts.max_seconds:
            child.consecutive = 0
        b = opts.backoff
        delay = min(b.max_s, b.initial_s * b.factor**child.consecutive) if backoff else 0.0
        child.consecutive += 1
        order = list(self.children)
        if opts.strategy is Strategy.ONE_FOR_ONE:
            candidates = [cid]
        elif opts.strategy is Strategy.ONE_FOR_ALL:
            candidates = order
        else:
            candidates = order[order.index(cid) :]
        ids = {
            c for c in candidates
            if c == cid or self.children[c].status in ("running", "restarting")
        }  # fmt: skip
        for timer in [t for t in self.timers if t.ids & ids]:
            ids |= timer.ids
            self.timers.remove(timer)
        for member in ids:
            self.children[member].status = "restarting"
            self.children[member].running_since = None
        if delay > 0:
            self.timers.append(Timer(self.now + delay, next(self._seq), ids))

    def _converge(self) -> None:
        if self.gave_up:
            return
        held = set().union(*(t.ids for t in self.timers))
        for cid, child in self.children.items():
            if child.status == "restarting" and cid not in held:
                child.status = "running"
                child.restarts += 1
                child.running_since = self.now


# -- the machine ----------------------------------------------------------------------


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.starts: dict[str, int] = {}
        self.live: dict[str, Incarnation] = {}
        self.sup: Supervisor | None = None
        self.model: Model | None = None
        self.steps = 0

    def _run(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loop.run_until_complete(make())

    @initialize(
        strategy=st.sampled_from(Strategy),
        scope=st.sampled_from(IntensityScope),
        max_restarts=st.sampled_from([3, 1, 5, 0, 2, 8]),
        max_seconds=st.sampled_from([1.0, 2.0, 4.0]),
        types=st.lists(st.sampled_from(RESTART_TYPES), min_size=2, max_size=5),
        initial_s=st.sampled_from([0.0, 0.25, 0.5]),
        factor=st.sampled_from([1.0, 2.0]),
        max_s=st.sampled_from([0.5, 1.0, 2.0]),
    )
    def build(
        self,
        strategy: Strategy,
        scope: IntensityScope,
        max_restarts: int,
        max_seconds: float,
        types: list[RestartType],
        initial_s: float,
        factor: float,
        max_s: float,
    ) -> None:
        backoff = Backoff(initial_s=initial_s, factor=factor, max_s=max_s, jitter=0.0)
        options = SupervisorOptions(strategy, max_restarts, max_seconds, scope, backoff)

        def factory(spec: ChildSpec) -> Incarnation:
            return Incarnation(spec, self.starts, self.live)

        children = [(ChildSpec(f"c{i}", t), factory) for i, t in enumerate(types)]

        async def start() -> None:
            self.sup = Supervisor("sup", options, children, clock=self.clock)
            await self.sup.start()

        self._run(start)
        self.model = Model(options, types, self.clock.monotonic())
        event(f"{strategy}, {scope} scope")

    def _settle(self) -> None:
        """Let the supervisor work until it matches the model, or a short real-time deadline."""

        async def poll() -> None:
            # A supervisor that disagrees with the model stops changing within a few loop
            # iterations: give up on it then rather than at the deadline, so that a failing
            # example shrinks in seconds.
            deadline = time.monotonic() + 1.0
            last: tuple[object, ...] = ()
            unchanged = 0
            while (seen := self._observed()) != self._expected():
                unchanged = unchanged + 1 if seen == last else 0
                if unchanged > 200 or time.monotonic() > deadline:
                    return  # the invariants will show the difference
                last = seen
                await asyncio.sleep(0)

        self._run(poll)

    def _observed(self) -> tuple[object, ...]:
        assert self.sup is not None
        status = self.sup.status()
        children = tuple((c.id, str(c.status), c.restarts) for c in status.children)
        return children, status.restarts, self.sup.gave_up

    def _expected(self) -> tuple[object, ...]:
        assert self.model is not None
        m = self.model
        children = tuple((cid, c.status, c.restarts) for cid, c in m.children.items())
        return children, m.restarts, m.gave_up

    def _end(self, pick: int, reason: ExitReason) -> None:
        assert self.model is not None
        running = self.model.running()
        if not running:
            return
        cid = running[pick % len(running)]
        self.live[cid].end(reason)
        self.model.exit(cid, reason)
        self._settle()

    @rule(pick=st.integers(0, 64))
    def crash(self, pick: int) -> None:
        self._end(pick, BOOM)

    @rule(pick=st.integers(0, 64))
    def exit_normally(self, pick: int) -> None:
        self._end(pick, BYE)

    @precondition(lambda self: self.model is not None and not self.model.gave_up)
    @rule(pick=st.integers(0, 64))
    def operator_restart(self, pick: int) -> None:
        assert self.model is not None and self.sup is not None
        cid = list(self.model.children)[pick % len(self.model.children)]
        sup = self.sup
        self.model.restart(cid)

        async def restart() -> None:
            try:
                await sup.restart_child(cid)
            except SupervisorGaveUp:
                assert self.model is not None and self.model.gave_up

        self._run(restart)
        self._settle()

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.5]))
    def advance(self, dt: float) -> None:
        assert self.model is not None
        model = self.model
        target = model.now + dt
        # Step from one backoff deadline to the next, letting each restart settle at its
        # own time, as a real clock would.
        while (due := model.next_due()) is not None and due <= target:
            self._advance_to(due)
            model.fire_until(due)
            self._settle()
        self._advance_to(target)
        model.fire_until(target)
        self._settle()

    def _advance_to(self, t: float) -> None:
        step = t - self.clock.monotonic()
        self._run(lambda: self.clock.advance(step))

    @invariant()
    def statuses_and_restarts_match_the_model(self) -> None:
        self.steps += 1
        if self.model is not None:
            assert self._observed() == self._expected()

    @invariant()
    def running_incarnations_match_the_model(self) -> None:
        if self.model is None:
            return
        alive = {cid for cid, inc in self.live.items() if inc.alive}
        assert alive == set(self.model.running())
        for cid, child in self.model.children.items():
            assert self.starts.get(cid, 0) == child.restarts + 1, cid

    @invariant()
    def clock_matches_the_model(self) -> None:
        if self.model is not None:
            assert self.clock.monotonic() == self.model.now

    def teardown(self) -> None:
        if self.model is not None:
            event(f"gave up: {self.model.gave_up}")
            decisions = self.model.restarts
            event(f"restart decisions: {'5+' if decisions >= 5 else decisions}")
            event(f"steps: {self.steps // 10 * 10}+")
        try:
            if self.sup is not None:
                sup = self.sup

                async def stop() -> None:
                    await sup.shutdown()
                    me = asyncio.current_task()
                    leftovers = [t for t in asyncio.all_tasks() if t is not me]
                    assert not leftovers, leftovers

                self._run(stop)
                assert not any(inc.alive for inc in self.live.values())
        finally:
            self.loop.close()


TestSupervisorTree = SupervisorMachine.TestCase
TestSupervisorTree.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # The explain phase replays a failure for minutes; the shrunk steps are explanation enough.
    phases=[phase for phase in Phase if phase is not Phase.explain],
)
