"""The generic supervisor, driven with in-memory children and a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import random
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

from runtime.clock import ManualClock
from runtime.errors import ConfigError, RejectedError
from supervisors import (
    Backoff,
    ChildFactory,
    ChildSpec,
    ChildStatus,
    EventAction,
    ExitKind,
    ExitReason,
    IntensityScope,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorEvent,
    SupervisorGaveUp,
    SupervisorOptions,
    UnknownChildError,
)
from supervisors import core as supervisor_core

BOOM = ExitReason(ExitKind.ERROR, "boom")
RUNNING = ChildStatus.RUNNING


class FakeChild:
    """One incarnation whose end the test decides; it records what it is asked."""

    def __init__(self, spec: ChildSpec, world: World) -> None:
        self.id = spec.id
        self.world = world
        self.exit: asyncio.Future[ExitReason] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        self.world.log.append(("start", self.id))
        if self.world.start_failures.get(self.id, 0) > 0:
            self.world.start_failures[self.id] -= 1
            raise RuntimeError(f"{self.id} cannot start")
        self.world.current[self.id] = self

    async def wait(self) -> ExitReason:
        return await asyncio.shield(self.exit)

    async def stop(self) -> None:
        self.world.log.append(("stop", self.id))
        if self.id not in self.world.deaf:
            self.end(ExitReason(ExitKind.SHUTDOWN))

    async def kill(self) -> None:
        self.world.log.append(("kill", self.id))
        self.end(ExitReason(ExitKind.KILLED))

    def end(self, reason: ExitReason) -> None:
        if not self.exit.done():
            self.exit.set_result(reason)


class World:
    """The children's shared record: what happened, in order, and the live incarnations."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.current: dict[str, FakeChild] = {}
        self.start_failures: dict[str, int] = {}
        self.deaf: set[str] = set()
        self.events: list[SupervisorEvent] = []
        self.escalations: list[tuple[str, ExitReason]] = []
        self.clock = ManualClock()

    def factory(self, spec: ChildSpec) -> FakeChild:
        return FakeChild(spec, self)

    def children(
        self, *ids: str, restart: RestartType = RestartType.PERMANENT, timeout_s: float = 5.0
    ) -> list[tuple[ChildSpec, ChildFactory]]:
        return [(ChildSpec(i, restart, timeout_s), self.factory) for i in ids]

    def supervisor(
        self,
        options: SupervisorOptions,
        children: Sequence[tuple[ChildSpec, ChildFactory]],
        *,
        sup_id: str = "sup",
        rng: random.Random | None = None,
    ) -> Supervisor:
        return Supervisor(
            sup_id,
            options,
            children,
            clock=self.clock,
            on_event=self.events.append,
            on_escalate=lambda who, why: self.escalations.append((who, why)),
            rng=rng,
        )

    def crash(self, child_id: str, reason: ExitReason = BOOM) -> None:
        self.current[child_id].end(reason)

    def actions(self, child_id: str | None = None) -> list[str]:
        return [str(e.action) for e in self.events if child_id is None or e.child == child_id]


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run an async test, then check that it left no task behind."""

    async def main() -> None:
        await test()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftovers, f"tasks left behind: {leftovers}"

    asyncio.run(main())


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 2.0) -> None:
    """Let the loop run until ``predicate`` holds; fail after ``timeout_s`` of real time."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


def statuses(sup: Supervisor) -> dict[str, str]:
    return {c.id: str(c.status) for c in sup.status().children}


def restarted(sup: Supervisor, child_id: str, times: int) -> Callable[[], bool]:
    def check() -> bool:
        info = sup.status().child(child_id)
        return info.status is RUNNING and info.restarts == times

    return check


# -- the vocabulary -----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Backoff(initial_s=-1),
        lambda: Backoff(factor=0.5),
        lambda: Backoff(initial_s=2, max_s=1),
        lambda: Backoff(jitter=1.5),
        lambda: Backoff(max_s=float("inf")),
        lambda: SupervisorOptions(max_restarts=-1),
        lambda: SupervisorOptions(max_restarts=True),
        lambda: SupervisorOptions(max_seconds=0),
        lambda: SupervisorOptions(strategy="one_for_some"),  # type: ignore[arg-type]
        lambda: SupervisorOptions(scope="galaxy"),  # type: ignore[arg-type]
        lambda: ChildSpec(""),
        lambda: ChildSpec("  "),
        lambda: ChildSpec("a", shutdown_timeout_s=0),
        lambda: ChildSpec("a", restart="sometimes"),  # type: ignore[arg-type]
        lambda: ExitReason("exploded"),  # type: ignore[arg-type]
        lambda: SupervisorEvent(0.0, "sup", "dance", "a"),  # type: ignore[arg-type]
    ],
)
def test_invalid_specs_raise_config_error(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()


def test_specs_accept_their_wire_strings() -> None:
    options = SupervisorOptions(strategy="rest_for_one", scope="child")  # type: ignore[arg-type]
    assert options.strategy is Strategy.REST_FOR_ONE
    assert options.scope is IntensityScope.CHILD
    assert ChildSpec("a", restart="transient").restart is RestartType.TRANSIENT  # type: ignore[arg-type]
    assert ExitReason("killed").kind is ExitKind.KILLED  # type: ignore[arg-type]


def test_exit_reason_is_abnormal_for_errors_and_kills_only() -> None:
    assert [ExitReason(k).abnormal for k in ExitKind] == [False, False, True, True]
    assert str(ExitReason(ExitKind.ERROR, "boom")) == "error: boom"
    assert str(ExitReason(ExitKind.NORMAL)) == "normal"


def test_backoff_is_exponential_and_capped_without_jitter() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=4.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(100_000, rng) == 4.0  # no overflow on a long crash loop


def test_backoff_zero_initial_restarts_immediately() -> None:
    rng = random.Random(1)
    assert {Backoff(initial_s=0.0, jitter=0.5).delay(n, rng) for n in range(10)} == {0.0}


def test_backoff_jitter_spreads_within_its_fraction_around_the_capped_value() -> None:
    backoff = Backoff(initial_s=1.0, factor=2.0, max_s=4.0, jitter=0.2)
    rng = random.Random(42)
    first = [backoff.delay(0, rng) for _ in range(500)]
    capped = [backoff.delay(9, rng) for _ in range(500)]
    assert all(0.8 <= d <= 1.2 for d in first)
    assert min(first) < 0.85 and max(first) > 1.15
    assert all(3.2 <= d <= 4.8 for d in capped)
    assert max(capped) > 4.6  # the cap is jittered too, so capped children do not align
    assert all(Backoff(initial_s=1.0, jitter=1.0).delay(0, rng) >= 0 for _ in range(200))
    with pytest.raises(ConfigError):
        backoff.delay(-1, rng)


# -- start and shutdown -------------------------------------------------------


def test_children_start_in_order_and_stop_in_reverse() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(), w.children("a", "b", "c"))
        assert sup.status().status is ChildStatus.STARTING
        await sup.start()
        assert w.log == [("start", "a"), ("start", "b"), ("start", "c")]
        assert sup.status().status is RUNNING
        assert statuses(sup) == {"a": "running", "b": "running", "c": "running"}
        await sup.shutdown()
        assert w.log[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]
        assert set(statuses(sup).values()) == {"stopped"}
        assert sup.status().status is ChildStatus.STOPPED
        assert w.actions() == ["start"] * 3 + ["stop"] * 3
        assert await sup.wait() == ExitReason(ExitKind.SHUTDOWN)
        await sup.shutdown()  # idempotent
        with pytest.raises(RejectedError):
            await sup.add_child(ChildSpec("d"), w.factory)

    run(body)


def test_shutdown_kills_a_child_that_ignores_stop_after_its_timeout() -> None:
    async def body() -> None:
        w = World()
        w.deaf.add("b")
        children = [*w.children("a"), *w.children("b", timeout_s=3.0), *w.children("c")]
        sup = w.supervisor(SupervisorOptions(), children)
        await sup.start()
        mark = len(w.log)
        stopping = asyncio.create_task(sup.shutdown())
        await until(lambda: ("stop", "b") in w.log, "stop b")
        w.crash("a")  # an exit during shutdown is not a crash
        await w.clock.advance(2.9)
        assert ("kill", "b") not in w.log and ("stop", "a") not in w.log
        await w.clock.advance(0.1)
        await until(stopping.done, "shutdown")
        await stopping
        assert w.log[mark:] == [("stop", "c"), ("stop", "b"), ("kill", "b"), ("stop", "a")]
        assert sup.status().child("b").last_exit == "killed: no exit within 3 s of stop()"
        assert set(statuses(sup).values()) == {"stopped"}
        assert w.actions("a") == ["start", "stop"]

    run(body)


def test_kill_kills_every_child_without_asking() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(), w.children("a", "b"))
        await sup.start()
        await sup.kill()
        assert w.log[2:] == [("kill", "b"), ("kill", "a")]
        assert (await sup.wait()).kind is ExitKind.KILLED

    run(body)


def test_a_child_whose_stop_raises_is_killed() -> None:
    class Stubborn(FakeChild):
        async def stop(self) -> None:
            raise RuntimeError("stop is broken")

    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(), [(ChildSpec("a"), lambda s: Stubborn(s, w))])
        await sup.start()
        await sup.shutdown()
        assert w.log == [("start", "a"), ("kill", "a")]
        assert sup.status().child("a").last_exit.startswith("killed: stop() raised")

    run(body)


def test_a_start_failure_is_retried_like_a_crash() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["b"] = 2
        sup = w.supervisor(SupervisorOptions(max_restarts=5), w.children("a", "b", "c"))
        await sup.start()
        assert w.log == [
            ("start", "a"),
            ("start", "b"), ("kill", "b"),
            ("start", "b"), ("kill", "b"),
            ("start", "b"),
            ("start", "c"),
        ]  # fmt: skip
        assert sup.status().child("b").restarts == 2
        assert sup.status().restarts == 2
        exits = [e for e in w.events if e.action is EventAction.EXIT]
        assert exits[0].reason == "error: start failed: RuntimeError('b cannot start')"
        await sup.shutdown()

    run(body)


def test_a_start_failure_under_one_for_all_restarts_the_started_children() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["b"] = 1
        options = SupervisorOptions(strategy=Strategy.ONE_FOR_ALL)
        sup = w.supervisor(options, w.children("a", "b", "c"))
        await sup.start()
        assert w.log == [
            ("start", "a"), ("start", "b"), ("kill", "b"),
            ("stop", "a"),
            ("start", "a"), ("start", "b"), ("start", "c"),
        ]  # fmt: skip
        assert set(statuses(sup).values()) == {"running"}
        await sup.shutdown()

    run(body)


def test_start_waits_out_the_backoff_of_a_child_that_failed_to_start() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["a"] = 1
        options = SupervisorOptions(backoff=Backoff(initial_s=2.0, jitter=0.0))
        sup = w.supervisor(options, w.children("a", "b"))
        starting = asyncio.create_task(sup.start())
        await until(lambda: ("kill", "a") in w.log, "first start of a")
        await w.clock.advance(1.9)
        assert not starting.done() and ("start", "b") not in w.log
        await w.clock.advance(0.1)
        await until(starting.done, "start")
        await starting
        assert w.log[-2:] == [("start", "a"), ("start", "b")]
        await sup.shutdown()

    run(body)


def test_start_raises_when_intensity_is_exceeded_and_stops_what_it_started() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["b"] = 99
        sup = w.supervisor(SupervisorOptions(max_restarts=1), w.children("a", "b", "c"))
        with pytest.raises(SupervisorGaveUp) as caught:
            await sup.start()
        assert caught.value.supervisor_id == "sup"
        assert w.log == [
            ("start", "a"), ("start", "b"), ("kill", "b"), ("start", "b"), ("kill", "b"),
            ("stop", "a"),
        ]  # fmt: skip
        assert sup.gave_up and sup.status().status is ChildStatus.FAILED
        assert statuses(sup) == {"a": "stopped", "b": "failed", "c": "stopped"}
        assert "give_up" in w.actions() and "escalate" not in w.actions()
        assert w.escalations == []  # the caller of start() hears it from the exception
        await sup.shutdown()
        assert sup.status().status is ChildStatus.FAILED

    run(body)


def test_start_with_child_scope_leaves_an_unstartable_child_failed() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["b"] = 99
        options = SupervisorOptions(max_restarts=1, scope=IntensityScope.CHILD)
        sup = w.supervisor(options, w.children("a", "b", "c"))
        await sup.start()
        assert statuses(sup) == {"a": "running", "b": "failed", "c": "running"}
        assert [who for who, _ in w.escalations] == ["b"]
        assert sup.status().status is RUNNING and not sup.gave_up
        await sup.shutdown()

    run(body)


def test_a_temporary_child_that_cannot_start_is_not_retried() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["t"] = 1
        children = [*w.children("t", restart=RestartType.TEMPORARY), *w.children("a")]
        sup = w.supervisor(SupervisorOptions(), children)
        await sup.start()
        assert w.log == [("start", "t"), ("kill", "t"), ("start", "a")]
        assert statuses(sup) == {"t": "stopped", "a": "running"}
        await sup.shutdown()

    run(body)


# -- strategies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, [("start", "b")]),
        (
            Strategy.ONE_FOR_ALL,
            [("stop", "d"), ("stop", "c"), ("stop", "a"),
             ("start", "a"), ("start", "b"), ("start", "c"), ("start", "d")],
        ),
        (
            Strategy.REST_FOR_ONE,
            [("stop", "d"), ("stop", "c"), ("start", "b"), ("start", "c"), ("start", "d")],
        ),
    ],
)  # fmt: skip
def test_strategy_decides_which_children_restart_and_in_which_order(
    strategy: Strategy, expected: list[tuple[str, str]]
) -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(strategy=strategy), w.children("a", "b", "c", "d"))
        await sup.start()
        mark = len(w.log)
        w.crash("b")
        await until(restarted(sup, "b", 1), "restart of b")
        assert w.log[mark:] == expected
        touched = {cid for _, cid in expected}
        for info in sup.status().children:
            assert info.status is RUNNING
            assert info.restarts == (1 if info.id in touched else 0)
            if info.id in touched - {"b"}:
                assert info.last_exit == "shutdown"
        assert sup.status().child("b").last_exit == "error: boom"
        assert sup.status().restarts == 1  # one decision, however many children
        await sup.shutdown()

    run(body)


@pytest.mark.parametrize(
    ("restart", "kind", "restarts"),
    [
        (RestartType.PERMANENT, ExitKind.NORMAL, True),
        (RestartType.PERMANENT, ExitKind.SHUTDOWN, True),
        (RestartType.PERMANENT, ExitKind.ERROR, True),
        (RestartType.TRANSIENT, ExitKind.NORMAL, False),
        (RestartType.TRANSIENT, ExitKind.SHUTDOWN, False),
        (RestartType.TRANSIENT, ExitKind.ERROR, True),
        (RestartType.TRANSIENT, ExitKind.KILLED, True),
        (RestartType.TEMPORARY, ExitKind.NORMAL, False),
        (RestartType.TEMPORARY, ExitKind.ERROR, False),
    ],
)
def test_restart_type_decides_whether_an_exit_restarts(
    restart: RestartType, kind: ExitKind, restarts: bool
) -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(strategy=Strategy.ONE_FOR_ALL)
        sup = w.supervisor(options, [*w.children("a"), *w.children("x", restart=restart)])
        await sup.start()
        mark = len(w.log)
        w.crash("x", ExitReason(kind, "bye"))
        if restarts:
            await until(restarted(sup, "x", 1), "restart of x")
            assert w.log[mark:] == [("stop", "a"), ("start", "a"), ("start", "x")]
        else:
            await until(lambda: sup.status().child("x").status is ChildStatus.STOPPED, "x stops")
            assert w.log[mark:] == []  # the strategy is not applied to a child that stays down
            assert sup.status().child("a").status is RUNNING
        assert sup.status().child("x").last_exit == f"{kind}: bye"
        await sup.shutdown()

    run(body)


def test_a_group_restart_leaves_children_that_ended_for_good_alone() -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(strategy=Strategy.ONE_FOR_ALL)
        children = [*w.children("t", restart=RestartType.TEMPORARY), *w.children("a", "b")]
        sup = w.supervisor(options, children)
        await sup.start()
        w.crash("t")
        await until(lambda: sup.status().child("t").status is ChildStatus.STOPPED, "t ends")
        mark = len(w.log)
        w.crash("b")
        await until(restarted(sup, "b", 1), "restart of b")
        assert w.log[mark:] == [("stop", "a"), ("start", "a"), ("start", "b")]
        assert statuses(sup) == {"t": "stopped", "a": "running", "b": "running"}
        await sup.shutdown()

    run(body)


# -- intensity ---------------------------------------------------------------------


def test_supervisor_scope_gives_up_and_escalates_once() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(max_restarts=2, max_seconds=5.0),
                           w.children("a", "b", "c"))  # fmt: skip
        await sup.start()
        for n in (1, 2):
            w.crash("b")
            await until(restarted(sup, "b", n), f"restart {n} of b")
        mark = len(w.log)
        w.crash("b")
        await asyncio.wait_for(sup.wait_gave_up(), timeout=2.0)
        assert sup.gave_up
        assert w.log[mark:] == [("stop", "c"), ("stop", "a")]
        assert w.escalations == [("sup", BOOM)]
        assert sup.status().status is ChildStatus.FAILED
        assert statuses(sup) == {"a": "stopped", "b": "failed", "c": "stopped"}
        assert w.actions()[-2:] == ["give_up", "escalate"]
        assert [e.child for e in w.events[-2:]] == ["b", "b"]
        assert (await sup.wait()).kind is ExitKind.ERROR
        with pytest.raises(SupervisorGaveUp):
            await sup.restart_child("a")
        await sup.shutdown()
        assert w.escalations == [("sup", BOOM)]

    run(body)


def test_intensity_window_slides_with_the_clock() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(max_restarts=1, max_seconds=5.0), w.children("a"))
        await sup.start()
        w.crash("a")
        await until(restarted(sup, "a", 1), "restart 1")
        await w.clock.advance(5.0)  # the first restart has left the window
        w.crash("a")
        await until(restarted(sup, "a", 2), "restart 2")
        await w.clock.advance(4.0)
        w.crash("a")
        await asyncio.wait_for(sup.wait_gave_up(), timeout=2.0)
        assert w.escalations == [("sup", BOOM)]
        await sup.shutdown()

    run(body)


def test_zero_max_restarts_gives_up_on_the_first_crash() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(max_restarts=0), w.children("a", "b"))
        await sup.start()
        w.crash("a")
        await asyncio.wait_for(sup.wait_gave_up(), timeout=2.0)
        assert w.log[2:] == [("stop", "b")]
        assert sup.status().restarts == 0
        await sup.shutdown()

    run(body)


def test_child_scope_fails_only_the_child_that_exceeds_its_window() -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(max_restarts=1, max_seconds=10.0, scope=IntensityScope.CHILD)
        sup = w.supervisor(options, w.children("a", "b", "c"))
        await sup.start()
        w.crash("b")
        await until(restarted(sup, "b", 1), "restart of b")
        w.crash("a")  # a's own window, not b's
        await until(restarted(sup, "a", 1), "restart of a")
        mark = len(w.log)
        w.crash("b")
        await until(lambda: sup.status().child("b").status is ChildStatus.FAILED, "b fails")
        assert w.log[mark:] == []
        assert w.escalations == [("b", BOOM)]
        assert w.actions("b")[-3:] == ["exit", "failed", "escalate"]
        assert statuses(sup) == {"a": "running", "b": "failed", "c": "running"}
        assert sup.status().status is RUNNING and not sup.gave_up
        await sup.restart_child("b")  # an operator's decision starts a fresh window...
        assert sup.status().child("b").status is RUNNING
        w.crash("b")  # ...in which that restart counts
        await until(lambda: sup.status().child("b").status is ChildStatus.FAILED, "b fails again")
        assert w.escalations == [("b", BOOM), ("b", BOOM)]
        assert sup.status().child("a").status is RUNNING
        await sup.shutdown()

    run(body)


# -- backoff -------------------------------------------------------------------------


def test_backoff_delays_restarts_exponentially_up_to_the_cap() -> None:
    async def body() -> None:
        w = World()
        backoff = Backoff(initial_s=1.0, factor=2.0, max_s=4.0, jitter=0.0)
        options = SupervisorOptions(max_restarts=10, max_seconds=30.0, backoff=backoff)
        sup = w.supervisor(options, w.children("a", "b"))
        await sup.start()

        async def crash_and_expect(delay: float, n: int) -> None:
            w.crash("b")
            await until(lambda: sup.status().child("b").status is ChildStatus.RESTARTING, "wait")
            await w.clock.advance(delay - 0.01)
            assert sup.status().child("b").status is ChildStatus.RESTARTING
            assert sup.status().child("a").status is RUNNING
            await w.clock.advance(0.01)
            await until(restarted(sup, "b", n), f"restart {n} after {delay} s")

        for n, delay in enumerate([1.0, 2.0, 4.0, 4.0], start=1):
            await crash_and_expect(delay, n)
        await w.clock.advance(30.5)  # healthy for longer than max_seconds: back to the start
        await crash_and_expect(1.0, 5)
        await sup.shutdown()

    run(body)


def test_backoff_delays_are_jittered_with_the_injected_rng() -> None:
    async def body() -> None:
        w = World()
        backoff = Backoff(initial_s=1.0, factor=2.0, max_s=4.0, jitter=0.5)
        expected_rng = random.Random(7)
        expected = [backoff.delay(n, expected_rng) for n in range(4)]
        assert expected != [1.0, 2.0, 4.0, 4.0]
        options = SupervisorOptions(max_restarts=10, max_seconds=60.0, backoff=backoff)
        sup = w.supervisor(options, w.children("a"), rng=random.Random(7))
        await sup.start()
        for n, delay in enumerate(expected, start=1):
            w.crash("a")
            await until(lambda: sup.status().child("a").status is ChildStatus.RESTARTING, "wait")
            await w.clock.advance(delay - 1e-6)
            assert sup.status().child("a").status is ChildStatus.RESTARTING
            await w.clock.advance(2e-6)
            await until(restarted(sup, "a", n), f"restart {n}")
        await sup.shutdown()

    run(body)


def test_a_restart_waiting_for_its_backoff_is_cancelled_by_shutdown() -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(backoff=Backoff(initial_s=10.0, max_s=10.0))
        sup = w.supervisor(options, w.children("a"))
        await sup.start()
        w.crash("a")
        await until(lambda: w.clock.pending == 1, "the backoff timer")
        await sup.shutdown()
        await w.clock.advance(20.0)
        assert w.log == [("start", "a")]
        assert statuses(sup) == {"a": "stopped"}

    run(body)


# -- dynamic children and operator requests --------------------------------------------


def test_children_can_be_added_and_removed_while_running() -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(strategy=Strategy.REST_FOR_ONE)
        sup = w.supervisor(options, w.children("a", "b"))
        await sup.start()
        await sup.add_child(ChildSpec("d"), w.factory)
        assert w.log[-1] == ("start", "d") and statuses(sup)["d"] == "running"
        with pytest.raises(ConfigError):
            await sup.add_child(ChildSpec("d"), w.factory)
        mark = len(w.log)
        w.crash("b")  # an added child is the last one: it restarts with b
        await until(restarted(sup, "d", 1), "restart of d")
        assert w.log[mark:] == [("stop", "d"), ("start", "b"), ("start", "d")]
        await sup.remove_child("d")
        assert w.log[-1] == ("stop", "d")
        assert list(statuses(sup)) == ["a", "b"]
        with pytest.raises(UnknownChildError):
            await sup.remove_child("d")
        with pytest.raises(UnknownChildError):
            await sup.restart_child("zz")
        await sup.shutdown()

    run(body)


def test_a_child_added_before_start_starts_with_the_others() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(), w.children("a"))
        await sup.add_child(ChildSpec("b"), w.factory)
        with pytest.raises(RejectedError):
            await sup.restart_child("a")  # not running yet
        await sup.start()
        assert w.log == [("start", "a"), ("start", "b")]
        await sup.shutdown()

    run(body)


def test_restart_child_applies_the_strategy_and_counts_toward_intensity() -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(strategy=Strategy.REST_FOR_ONE, max_restarts=1)
        sup = w.supervisor(options, w.children("a", "b", "c"))
        await sup.start()
        mark = len(w.log)
        await sup.restart_child("b")
        assert w.log[mark:] == [("stop", "c"), ("stop", "b"), ("start", "b"), ("start", "c")]
        assert sup.status().restarts == 1
        with pytest.raises(SupervisorGaveUp):
            await sup.restart_child("a")
        assert [(who, why.detail) for who, why in w.escalations] == [("sup", "restart requested")]
        assert statuses(sup) == {"a": "failed", "b": "stopped", "c": "stopped"}
        await sup.shutdown()

    run(body)


def test_restart_child_cuts_a_pending_backoff_short() -> None:
    async def body() -> None:
        w = World()
        options = SupervisorOptions(backoff=Backoff(initial_s=10.0, max_s=10.0, jitter=0.0))
        sup = w.supervisor(options, w.children("a"))
        await sup.start()
        w.crash("a")
        await until(lambda: w.clock.pending == 1, "the backoff timer")
        await sup.restart_child("a")
        assert statuses(sup) == {"a": "running"}
        assert sup.status().restarts == 1  # the crash counted; the expedited start does not
        await sup.shutdown()

    run(body)


# -- events and callbacks -------------------------------------------------------------


def test_every_decision_is_an_event() -> None:
    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(), w.children("a", "b"))
        await sup.start()
        w.crash("b")
        await until(restarted(sup, "b", 1), "restart of b")
        await sup.shutdown()
        assert [(str(e.action), e.child, e.reason, e.restarts) for e in w.events] == [
            ("start", "a", "", 0),
            ("start", "b", "", 0),
            ("exit", "b", "error: boom", 0),
            ("restart", "b", "", 1),
            ("stop", "b", "shutdown", 1),
            ("stop", "a", "shutdown", 0),
        ]
        assert {e.supervisor for e in w.events} == {"sup"}
        assert {e.ts for e in w.events} == {w.clock.time()}

    run(body)


def test_crashing_callbacks_do_not_break_the_supervisor() -> None:
    calls: list[str] = []

    def bad_event(event: SupervisorEvent) -> None:
        calls.append(str(event.action))
        raise RuntimeError("observer bug")

    def bad_escalate(who: str, why: ExitReason) -> None:
        calls.append(f"escalate {who}")
        raise RuntimeError("parent bug")

    async def body() -> None:
        w = World()
        sup = Supervisor("sup", SupervisorOptions(max_restarts=1), w.children("a", "b"),
                         clock=w.clock, on_event=bad_event, on_escalate=bad_escalate)  # fmt: skip
        await sup.start()
        w.crash("a")
        await until(restarted(sup, "a", 1), "restart despite the observer")
        w.crash("a")
        await asyncio.wait_for(sup.wait_gave_up(), timeout=2.0)
        assert calls[-3:] == ["give_up", "escalate", "escalate sup"]
        assert w.log[-1] == ("stop", "b")
        await sup.shutdown()

    run(body)


def test_a_wait_that_raises_counts_as_a_crash() -> None:
    class Broken(FakeChild):
        async def wait(self) -> ExitReason:
            await asyncio.shield(self.exit)
            raise ConnectionError("sentinel lost")

    async def body() -> None:
        w = World()
        sup = w.supervisor(SupervisorOptions(), [(ChildSpec("a"), lambda s: Broken(s, w))])
        await sup.start()
        w.crash("a")
        await until(restarted(sup, "a", 1), "restart of a")
        assert "ConnectionError('sentinel lost')" in sup.status().child("a").last_exit
        await sup.shutdown()

    run(body)


# -- two levels, one model -------------------------------------------------------------


def test_a_supervisor_is_a_child_whose_give_up_its_parent_restarts() -> None:
    async def body() -> None:
        w = World()
        inners: list[Supervisor] = []

        def make_inner(spec: ChildSpec) -> Supervisor:
            inner = Supervisor(spec.id, SupervisorOptions(max_restarts=0),
                               w.children("w1", "w2"), clock=w.clock)  # fmt: skip
            inners.append(inner)
            return inner

        outer = w.supervisor(SupervisorOptions(), [(ChildSpec("inner"), make_inner)])
        await outer.start()
        w.crash("w2")
        await until(restarted(outer, "inner", 1), "a fresh inner supervisor")
        assert inners[0].gave_up and not inners[1].gave_up
        assert statuses(inners[1]) == {"w1": "running", "w2": "running"}
        assert outer.status().child("inner").last_exit.startswith("error: gave up after w2")
        await outer.shutdown()
        assert statuses(inners[1]) == {"w1": "stopped", "w2": "stopped"}
        assert w.log[-2:] == [("stop", "w2"), ("stop", "w1")]

    run(body)


def test_the_module_docstring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    doc = supervisor_core.__doc__ or ""
    block = doc.split("\n\n", 1)[1].split("\n\nA child is", 1)[0]
    namespace: dict[str, object] = {"__name__": "example"}
    exec(compile(textwrap.dedent(block), "supervisors.core example", "exec"), namespace)
    assert capsys.readouterr().out.strip() == "[('db', 'running'), ('api', 'running')]"


def test_a_cancelled_start_leaves_nothing_behind() -> None:
    async def body() -> None:
        w = World()
        w.start_failures["a"] = 1
        options = SupervisorOptions(backoff=Backoff(initial_s=5.0, max_s=5.0))
        sup = w.supervisor(options, w.children("a"))
        starting = asyncio.create_task(sup.start())
        await until(lambda: w.clock.pending == 1, "start's backoff")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await sup.shutdown()
        assert sup.status().status is ChildStatus.STOPPED

    run(body)
