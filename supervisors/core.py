"""An Erlang/OTP supervisor for asyncio, used at both levels of the tree.

    import asyncio
    from supervisors import ChildSpec, ExitKind, ExitReason, Strategy, Supervisor
    from supervisors import SupervisorOptions

    class Worker:
        def __init__(self, spec: ChildSpec) -> None:
            self.done: asyncio.Future[ExitReason] = asyncio.get_running_loop().create_future()

        async def start(self) -> None:
            pass

        async def wait(self) -> ExitReason:
            return await asyncio.shield(self.done)

        async def stop(self) -> None:
            if not self.done.done():
                self.done.set_result(ExitReason(ExitKind.SHUTDOWN))

        async def kill(self) -> None:
            await self.stop()

    async def main() -> None:
        options = SupervisorOptions(strategy=Strategy.REST_FOR_ONE, max_restarts=3)
        sup = Supervisor("root", options, [(ChildSpec("db"), Worker), (ChildSpec("api"), Worker)])
        await sup.start()
        print([(c.id, str(c.status)) for c in sup.status().children])
        await sup.shutdown()  # api, then db

    asyncio.run(main())

A child is anything with ``start``/``wait``/``stop``/``kill`` (:class:`Child`);
a factory makes a fresh incarnation for every (re)start. Inside a host the
children are entity cells and a restart takes microseconds; in the root they
are host Ray actors and a restart is a new process. A :class:`Supervisor` is a
:class:`Child` itself, so trees nest: a supervisor that gives up ends with an
``error`` exit, which its parent handles like any other crash.

Exits, restarts and operator requests are handled one at a time under one
lock; a restart that has to wait out its backoff waits in a task of its own,
so a crash-looping child never delays the restarts of its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from runtime.clock import Clock, SystemClock
from runtime.errors import CommandpostError, ConfigError, RejectedError
from supervisors.spec import (
    ChildInfo,
    ChildSpec,
    ChildStatus,
    EventAction,
    ExitKind,
    ExitReason,
    IntensityScope,
    RestartType,
    Strategy,
    SupervisorEvent,
    SupervisorOptions,
    SupervisorStatus,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Statuses of a child that the supervisor still means to have running.
_LIVE = (ChildStatus.STARTING, ChildStatus.RUNNING, ChildStatus.RESTARTING)
_PENDING = (ChildStatus.STARTING, ChildStatus.RESTARTING)


class Child(Protocol):
    """One incarnation of a child. A new one is made for every (re)start.

    ``wait`` may be awaited more than once, and cancelling one of those awaits
    must not end the incarnation (wrap the underlying future in
    :func:`asyncio.shield`).
    """

    async def start(self) -> None:
        """Bring the incarnation up; raising counts as a crash."""

    async def wait(self) -> ExitReason:
        """Resolve when the incarnation has ended, for whatever reason."""

    async def stop(self) -> None:
        """Ask for a graceful stop; the supervisor bounds it with ``shutdown_timeout_s``."""

    async def kill(self) -> None:
        """End the incarnation at once."""


ChildFactory = Callable[[ChildSpec], Child]


class SupervisorGaveUp(CommandpostError):
    """A supervisor exceeded its restart intensity and stopped all its children."""

    def __init__(self, supervisor_id: str, reason: ExitReason) -> None:
        super().__init__(f"supervisor {supervisor_id!r} gave up: {reason}")
        self.supervisor_id = supervisor_id
        self.reason = reason


class UnknownChildError(RejectedError):
    """An operation named a child that the supervisor does not have."""

    def __init__(self, supervisor_id: str, child_id: str) -> None:
        super().__init__(
            f"supervisor {supervisor_id!r} has no child {child_id!r}", code="unknown_child"
        )
        self.child_id = child_id


@dataclass(eq=False)
class _Slot:
    """A child's place in the tree, which outlives its incarnations."""

    spec: ChildSpec
    factory: ChildFactory
    status: ChildStatus = ChildStatus.STARTING
    restarts: int = 0
    starts: int = 0
    consecutive: int = 0  # restarts in a row, for the backoff
    running_since: float | None = None
    last_exit: str = ""
    child: Child | None = None
    watcher: asyncio.Task[None] | None = None
    window: deque[float] = field(default_factory=deque)  # IntensityScope.CHILD

    @property
    def id(self) -> str:
        return self.spec.id


class Supervisor:
    """Starts children in order, restarts them by strategy and intensity, stops them in reverse.

    ``on_event`` receives every :class:`SupervisorEvent`; ``on_escalate``
    receives ``(self.id, reason)`` when the supervisor gives up, or
    ``(child_id, reason)`` when a child exceeds its own intensity
    (:attr:`IntensityScope.CHILD`). Exceptions raised by either callback are
    logged and otherwise ignored.
    """

    def __init__(
        self,
        id: str,
        options: SupervisorOptions,
        children: Sequence[tuple[ChildSpec, ChildFactory]],
        *,
        clock: Clock | None = None,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        on_escalate: Callable[[str, ExitReason], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(id, str) or not id.strip():
            raise ConfigError(f"supervisor id must be a non-empty string, not {id!r}")
        self._id = id
        self._options = options
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._on_event = on_event
        self._on_escalate = on_escalate
        self._rng = rng if rng is not None else random.Random()
        self._slots: dict[str, _Slot] = {}
        for spec, factory in children:
            if spec.id in self._slots:
                raise ConfigError(f"supervisor {id!r}: duplicate child id {spec.id!r}")
            self._slots[spec.id] = _Slot(spec, factory)
        self._status = ChildStatus.STARTING
        self._restarts = 0
        self._window: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._exits: asyncio.Queue[tuple[_Slot, Child, ExitReason] | None] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._timed: dict[str, asyncio.Task[None]] = {}  # child id -> its pending restart
        self._starting = False
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()
        self._gave_up_reason: ExitReason | None = None
        self._gave_up = asyncio.Event()
        self._ended = asyncio.Event()
        self._end_reason = ExitReason(ExitKind.SHUTDOWN)

    # -- public API --------------------------------------------------------

    @property
    def id(self) -> str:
        """The supervisor's id, stable across restarts of its children."""
        return self._id

    @property
    def gave_up(self) -> bool:
        """True once the supervisor-wide intensity was exceeded."""
        return self._gave_up.is_set()

    async def wait_gave_up(self) -> None:
        """Return once the supervisor has given up (at once if it already has)."""
        await self._gave_up.wait()

    async def start(self) -> None:
        """Start the children one after another in spec order.

        A child that cannot start is handled like a crash: restarted per
        strategy and intensity, after its backoff. Returns when every child is
        running (or, with :attr:`IntensityScope.CHILD`, has ended ``failed``);
        raises :class:`SupervisorGaveUp` when the intensity is exceeded on the
        way, after stopping the children already started (no escalation: the
        caller learns it from the exception).
        """
        if self._started or self._closing:
            raise RejectedError(
                f"supervisor {self._id!r} starts only once, and not after a shutdown",
                code="started",
            )
        self._started = True
        self._loop_task = asyncio.create_task(
            self._supervise(), name=f"supervisor[{self._id}].supervise"
        )
        async with self._lock:
            self._starting = True
            try:
                await self._converge(inline_backoff=True)
            finally:
                self._starting = False
            if self._gave_up_reason is not None:
                raise SupervisorGaveUp(self._id, self._gave_up_reason)
            if not self._closing:
                self._status = ChildStatus.RUNNING

    async def shutdown(self) -> None:
        """Stop every child in reverse spec order, each bounded by its shutdown timeout.

        A child that does not end within ``shutdown_timeout_s`` of ``stop()``
        is killed. Exits seen during shutdown are not crashes. Idempotent.
        """
        await self._close(graceful=True)

    async def stop(self) -> None:
        """:meth:`shutdown`, so that a supervisor can be the child of another."""
        await self._close(graceful=True)

    async def kill(self) -> None:
        """Kill every child at once, without asking them to stop."""
        await self._close(graceful=False)

    async def wait(self) -> ExitReason:
        """Resolve when the supervisor has ended: ``error`` after a give-up, else how it stopped."""
        await self._ended.wait()
        return self._end_reason

    async def add_child(self, spec: ChildSpec, factory: ChildFactory) -> None:
        """Append a child; once the supervisor runs, it is started at once.

        A start failure is handled like a crash. Raises :class:`ConfigError`
        for a duplicate id and :class:`SupervisorGaveUp` when starting it made
        the supervisor give up.
        """
        async with self._lock:
            self._check_open()
            if spec.id in self._slots:
                raise ConfigError(f"supervisor {self._id!r} already has a child {spec.id!r}")
            self._slots[spec.id] = _Slot(spec, factory)
            if self._status is ChildStatus.RUNNING:
                await self._converge(inline_backoff=False)
            if self._gave_up_reason is not None:
                raise SupervisorGaveUp(self._id, self._gave_up_reason)

    async def remove_child(self, child_id: str) -> None:
        """Stop a child (bounded by its shutdown timeout) and forget it."""
        async with self._lock:
            self._check_open()
            slot = self._slot(child_id)
            await self._forget_timer(slot)
            if slot.child is not None:
                await self._terminate(slot, ChildStatus.STOPPED)
            del self._slots[child_id]

    async def restart_child(self, child_id: str) -> None:
        """Restart a child now, as an operator or the parent asked.

        The strategy applies as for a crash (no backoff) and the restart counts
        toward intensity. A child waiting out its backoff is restarted at once
        without counting again; a ``failed`` child starts with a fresh window.
        """
        async with self._lock:
            self._check_open()
            if self._status is not ChildStatus.RUNNING:
                raise RejectedError(f"supervisor {self._id!r} is not running", code="not_running")
            slot = self._slot(child_id)
            timer = self._timed.get(slot.id)
            if slot.status is ChildStatus.RESTARTING and timer is not None:
                # Cut the whole group's backoff short, so that it still starts in order.
                await self._release(timer)
            else:
                if slot.status is ChildStatus.FAILED:
                    slot.window.clear()
                reason = ExitReason(ExitKind.SHUTDOWN, "restart requested")
                log.info("supervisor %s: restart of %s requested", self._id, child_id)
                await self._decide(slot, reason, backoff=False)
            await self._converge(inline_backoff=False)
            if self._gave_up_reason is not None:
                raise SupervisorGaveUp(self._id, self._gave_up_reason)

    def status(self) -> SupervisorStatus:
        """A snapshot of the supervisor and its children."""
        return SupervisorStatus(
            id=self._id,
            status=self._status,
            restarts=self._restarts,
            children=tuple(
                ChildInfo(s.id, s.status, s.restarts, s.last_exit) for s in self._slots.values()
            ),
        )

    # -- supervision -------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            item = await self._exits.get()
            if item is None:
                return
            slot, child, reason = item
            async with self._lock:
                if self._gave_up.is_set() or self._closing:
                    return
                if self._slots.get(slot.id) is not slot or slot.child is not child:
                    continue  # an incarnation the supervisor has already replaced or stopped
                await self._on_exit(slot, reason)

    async def _watch(self, slot: _Slot, child: Child) -> None:
        try:
            reason = await child.wait()
        except Exception as exc:
            reason = ExitReason(ExitKind.ERROR, f"wait() raised {exc!r}")
        self._exits.put_nowait((slot, child, reason))

    async def _on_exit(self, slot: _Slot, reason: ExitReason) -> None:
        slot.child = None
        slot.watcher = None
        slot.last_exit = str(reason)
        self._emit(EventAction.EXIT, slot.id, str(reason), slot.restarts)
        if not _restarts_after(slot.spec.restart, reason):
            slot.status = ChildStatus.STOPPED
            slot.running_since = None
            return
        await self._decide(slot, reason, backoff=True)
        await self._converge(inline_backoff=False)

    async def _decide(self, slot: _Slot, reason: ExitReason, *, backoff: bool) -> None:
        """Apply intensity and strategy to ``slot``, which must restart.

        Stops the rest of the strategy's group in reverse order and marks the
        group ``restarting``; the group then waits in a backoff timer, or is
        left for :meth:`_converge` to start when there is no delay (or when
        :meth:`start` sleeps it out inline).
        """
        opts = self._options
        now = self._clock.monotonic()
        window = self._window if opts.scope is IntensityScope.SUPERVISOR else slot.window
        window.append(now)
        while window and now - window[0] >= opts.max_seconds:
            window.popleft()
        if len(window) > opts.max_restarts:
            if opts.scope is IntensityScope.SUPERVISOR:
                await self._give_up(slot, reason)
            else:
                await self._fail_child(slot, reason)
            return
        self._restarts += 1
        if slot.running_since is not None and now - slot.running_since > opts.max_seconds:
            slot.consecutive = 0  # it had been healthy for a whole window: start over
        delay = opts.backoff.delay(slot.consecutive, self._rng) if backoff else 0.0
        slot.consecutive += 1
        group = self._group_for(slot)
        for other in reversed(group):
            if other.child is not None:
                await self._terminate(other, ChildStatus.RESTARTING)
        # A group that overlaps restarts still waiting out their backoff absorbs them:
        # one decision, one timer, one ordered start.
        ids = {s.id for s in group}
        for timer in {self._timed[i] for i in ids if i in self._timed}:
            ids.update(await self._release(timer))
        members = tuple(s for s in self._slots.values() if s.id in ids)
        for s in members:
            s.status = ChildStatus.RESTARTING
            s.running_since = None
        log.info(
            "supervisor %s: %s exited (%s); restarting %s in %.3f s",
            self._id, slot.id, reason, ", ".join(s.id for s in members), delay,
        )
        if delay <= 0:
            return
        if self._starting:
            await self._clock.sleep(delay)
            return
        task = asyncio.create_task(
            self._restart_after(delay), name=f"supervisor[{self._id}].backoff[{slot.id}]"
        )
        self._timers.add(task)
        for s in members:
            self._timed[s.id] = task

    def _group_for(self, slot: _Slot) -> list[_Slot]:
        strategy = self._options.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [slot]
        order = list(self._slots.values())
        candidates = order if strategy is Strategy.ONE_FOR_ALL else order[order.index(slot) :]
        return [s for s in candidates if s is slot or s.status in _LIVE]

    async def _restart_after(self, delay: float) -> None:
        await self._clock.sleep(delay)
        async with self._lock:
            me = asyncio.current_task()
            self._timers = {t for t in self._timers if t is not me}
            for child_id in [i for i, t in self._timed.items() if t is me]:
                del self._timed[child_id]
            if self._gave_up.is_set() or self._closing:
                return
            await self._converge(inline_backoff=False)

    async def _converge(self, *, inline_backoff: bool) -> None:
        """Start, in spec order, every child due to start that no timer holds back."""
        while self._gave_up_reason is None and not self._closing:
            ready = [
                s for s in self._slots.values() if s.status in _PENDING and s.id not in self._timed
            ]
            if not ready:
                return
            failed = await self._start_in_order(ready)
            if failed is None:
                return
            slot, reason = failed
            await self._decide(slot, reason, backoff=True)

    async def _start_in_order(self, slots: list[_Slot]) -> tuple[_Slot, ExitReason] | None:
        """Start ``slots`` in order; stop at the first that must be restarted."""
        for slot in slots:
            reason = await self._start_one(slot)
            if reason is None:
                continue
            slot.last_exit = str(reason)
            self._emit(EventAction.EXIT, slot.id, str(reason), slot.restarts)
            if not _restarts_after(slot.spec.restart, reason):
                slot.status = ChildStatus.STOPPED
                continue
            return slot, reason
        return None

    async def _start_one(self, slot: _Slot) -> ExitReason | None:
        again = slot.starts > 0
        slot.starts += 1
        if again:
            slot.restarts += 1
        slot.status = ChildStatus.STARTING
        slot.running_since = None
        try:
            child = slot.factory(slot.spec)
        except Exception as exc:
            log.warning("supervisor %s: factory of %s raised", self._id, slot.id, exc_info=exc)
            return ExitReason(ExitKind.ERROR, f"factory raised {exc!r}")
        # Recorded before start() so that a shutdown interrupting start() still stops it.
        slot.child = child
        try:
            await child.start()
        except Exception as exc:
            slot.child = None
            log.warning("supervisor %s: %s failed to start", self._id, slot.id, exc_info=exc)
            await self._kill_quietly(slot.id, child)
            return ExitReason(ExitKind.ERROR, f"start failed: {exc!r}")
        slot.status = ChildStatus.RUNNING
        slot.running_since = self._clock.monotonic()
        slot.watcher = asyncio.create_task(
            self._watch(slot, child), name=f"supervisor[{self._id}].watch[{slot.id}]"
        )
        action = EventAction.RESTART if again else EventAction.START
        self._emit(action, slot.id, "", slot.restarts)
        return None

    async def _give_up(self, slot: _Slot, reason: ExitReason) -> None:
        self._gave_up_reason = reason
        current = asyncio.current_task()
        for timer in list(self._timers):
            if timer is not current:
                await self._drop_timer(timer)
        self._timed.clear()
        for other in reversed(list(self._slots.values())):
            if other.child is not None:
                await self._terminate(other, ChildStatus.STOPPED)
            elif other.status in _LIVE:
                other.status = ChildStatus.STOPPED
            other.running_since = None
        slot.status = ChildStatus.FAILED
        self._status = ChildStatus.FAILED
        log.error("supervisor %s gave up after %s exited (%s)", self._id, slot.id, reason)
        self._emit(EventAction.GIVE_UP, slot.id, str(reason), self._restarts)
        if not self._starting:
            self._emit(EventAction.ESCALATE, slot.id, str(reason), self._restarts)
            self._escalate(self._id, reason)
        self._gave_up.set()
        self._end(ExitReason(ExitKind.ERROR, f"gave up after {slot.id}: {reason}"))
        self._exits.put_nowait(None)  # let the supervision loop end

    async def _fail_child(self, slot: _Slot, reason: ExitReason) -> None:
        if slot.child is not None:
            await self._terminate(slot, ChildStatus.FAILED)
        slot.status = ChildStatus.FAILED
        slot.running_since = None
        log.error(
            "supervisor %s: %s exceeded its restart intensity (%s)", self._id, slot.id, reason
        )
        self._emit(EventAction.FAILED, slot.id, str(reason), slot.restarts)
        self._emit(EventAction.ESCALATE, slot.id, str(reason), slot.restarts)
        self._escalate(slot.id, reason)

    # -- stopping ----------------------------------------------------------

    async def _terminate(self, slot: _Slot, then: ChildStatus, *, graceful: bool = True) -> None:
        """Stop the running incarnation of ``slot`` and leave it in status ``then``."""
        child = slot.child
        if slot.watcher is not None:
            await _reap(slot.watcher)
            slot.watcher = None
        if child is not None:
            reason = await self._stop_child(slot, child, graceful=graceful)
            # Cleared only now: if this stop is interrupted, a shutdown stops it again.
            slot.child = None
            slot.last_exit = str(reason)
            self._emit(EventAction.STOP, slot.id, str(reason), slot.restarts)
        slot.status = then
        slot.running_since = None

    async def _stop_child(self, slot: _Slot, child: Child, *, graceful: bool) -> ExitReason:
        timeout = slot.spec.shutdown_timeout_s
        if graceful:
            try:
                await self._within(_stop_and_wait(child), timeout)
                return ExitReason(ExitKind.SHUTDOWN)
            except TimeoutError:
                detail = f"no exit within {timeout:g} s of stop()"
            except Exception as exc:
                detail = f"stop() raised {exc!r}"
            log.warning("supervisor %s: killing %s: %s", self._id, slot.id, detail)
        else:
            detail = "killed by its supervisor"
        await self._kill_quietly(slot.id, child)
        return ExitReason(ExitKind.KILLED, detail)

    async def _within(self, coro: Coroutine[Any, Any, _T], limit_s: float) -> _T:
        """``coro``'s result, or :class:`TimeoutError` after ``limit_s`` of the clock."""
        work = asyncio.create_task(coro, name=f"supervisor[{self._id}].bounded")
        timer = asyncio.create_task(
            self._clock.sleep(limit_s), name=f"supervisor[{self._id}].timeout"
        )
        try:
            await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
            finished = work.done()
        finally:
            work.cancel()
            timer.cancel()
            await asyncio.wait((work, timer))
        if not finished:
            raise TimeoutError
        return work.result()

    async def _kill_quietly(self, child_id: str, child: Child) -> None:
        try:
            await child.kill()
        except Exception:
            log.exception("supervisor %s: kill() of %s raised", self._id, child_id)

    async def _close(self, *, graceful: bool) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._loop_task is not None:
                await _reap(self._loop_task)
            for timer in list(self._timers):
                await self._drop_timer(timer)
            self._timed.clear()
            async with self._lock:
                for slot in reversed(list(self._slots.values())):
                    if slot.child is not None:
                        await self._terminate(slot, ChildStatus.STOPPED, graceful=graceful)
                    if slot.status is not ChildStatus.FAILED:
                        slot.status = ChildStatus.STOPPED
                if self._status is not ChildStatus.FAILED:
                    self._status = ChildStatus.STOPPED
            kind = ExitKind.SHUTDOWN if graceful else ExitKind.KILLED
            self._end(ExitReason(kind))
        finally:
            self._closed.set()

    async def _drop_timer(self, timer: asyncio.Task[None]) -> None:
        self._timers.discard(timer)
        await _reap(timer)

    async def _release(self, timer: asyncio.Task[None]) -> list[str]:
        """Cancel a backoff timer; its children become due at once. Returns their ids."""
        held = [i for i, t in self._timed.items() if t is timer]
        for child_id in held:
            del self._timed[child_id]
        await self._drop_timer(timer)
        return held

    async def _forget_timer(self, slot: _Slot) -> None:
        timer = self._timed.pop(slot.id, None)
        if timer is not None and timer not in self._timed.values():
            await self._drop_timer(timer)

    # -- helpers -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise RejectedError(f"supervisor {self._id!r} is shut down", code="stopped")
        if self._gave_up_reason is not None:
            raise SupervisorGaveUp(self._id, self._gave_up_reason)

    def _slot(self, child_id: str) -> _Slot:
        slot = self._slots.get(child_id)
        if slot is None:
            raise UnknownChildError(self._id, child_id)
        return slot

    def _end(self, reason: ExitReason) -> None:
        if not self._ended.is_set():
            self._end_reason = reason
            self._ended.set()

    def _emit(self, action: EventAction, child: str, reason: str, restarts: int) -> None:
        if self._on_event is None:
            return
        event = SupervisorEvent(self._clock.time(), self._id, action, child, reason, restarts)
        try:
            self._on_event(event)
        except Exception:
            log.exception("supervisor %s: on_event raised for %s", self._id, event)

    def _escalate(self, who: str, reason: ExitReason) -> None:
        if self._on_escalate is None:
            return
        try:
            self._on_escalate(who, reason)
        except Exception:
            log.exception("supervisor %s: on_escalate raised for %s", self._id, who)


def _restarts_after(restart: RestartType, reason: ExitReason) -> bool:
    if restart is RestartType.PERMANENT:
        return True
    if restart is RestartType.TRANSIENT:
        return reason.abnormal
    return False


async def _stop_and_wait(child: Child) -> ExitReason:
    await child.stop()
    return await child.wait()


async def _reap(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, without hiding a cancellation of the caller."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        log.exception("task %s failed", task.get_name())
