"""The bus-priority pool: members that watch the buses and ask the crossroads for priority.

**Members.** The pool is N entities (``priority-1`` … ``priority-N``, two by
default), each placed ``dedicated``: one host process of its own, supervised
like every host (a member killed is replaced by the tree), shown in the tree.
A member runs no device; its host's main loop is its own.

**Partitions, one owner per bus.** A bus belongs to partition
``stable_shard(bus id) % N``; member *k* serves partition *k*. Ownership is a
lease of the store (``priority:part:K``), renewed every :data:`TICK_S` for
:data:`LEASE_S`; each member also holds a liveness lease
(``priority:member:K``). When a member dies, its leases lapse within
:data:`LEASE_S`; the next live member in ring order takes its partition
(the lease, then the MQTT subscriptions of its buses) and serves it until the
member is back, then gives it up (subscriptions first, then the lease). A
member serves a partition's positions only while the lease's last renewal
began less than :data:`_SAFE_S` ago, well before it could lapse, so that no
two members ever serve one bus — which a broker's shared subscription,
spreading one bus's messages over members, would not give. A renewal late
under load only drops the positions that arrive meanwhile (``errors.
lease_unsure``): the subscriptions and the buses' tracks stay, and the next
renewal resumes the partition at once. The partition is given up when
another member holds its lease, or after :data:`_LOST_S` without renewal.

**The path.** Each member subscribes to its buses' telemetry topics
(``city/{municipality}/vehicle/{id}/telemetry``). A position goes through the
:class:`~actors.priority.tracker.BusTracker` (check-in, check-out, cancel);
a check-in the line's rules allow (:func:`~actors.priority.policy.eligible`)
becomes a request with a fresh id (:class:`~actors.priority.policy.RequestIdAllocator`)
sent with one call into the crossroad's priority lane
(:meth:`~runtime.entity.EntityContext.priority`, :mod:`actors.priority.lane`);
check-out and cancel clear it there. The time from the position's receipt to
the lane's answer (the controller's write acknowledged) is the member's
latency, kept as a histogram, and broken down by stage (:data:`STAGES`: the
member's decode, tracker and hand-off, the call to the crossroad's host, the
lane's policy and controller write, the answer's way back; wall-clock times,
the lane's from its answer's ``lane_ts``). Each request may carry an
OpenTelemetry span (:mod:`actors.priority.tracing`).

**Rules.** The shipped ``actors/plans/priority.toml``, or the service's own
(``ServiceOptions.priority_rules``, given to each member in its ``attrs``);
the crossroads' lanes decide by the same.

**Read model.** Every member publishes ``priority-member-K`` (its pid, the
buses it serves, requests granted and refused by reason, latency and its
stages) about once a
second; ``GET /api/v1/priority`` merges them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from actors.priority import tracing
from actors.priority.lane import CLEAR, REQUEST
from actors.priority.policy import (
    PolicyConfig,
    RequestIdAllocator,
    builtin_priority_config,
    eligible,
    parse_priority_config,
)
from actors.priority.tracker import BusTracker, EventKind, TrackEvent
from devices.mqtt import decode_payload, topic
from devices.mqtt_wire import TelemetrySubscriber
from devices.profile import builtin_profile
from runtime.broker_accounts import RUNTIME_CLIENT_PREFIX
from runtime.entity import Checkpoint, Entity
from runtime.envelope import Envelope, MessageKind, pack
from runtime.errors import CommandpostError, MalformedMessageError
from runtime.inventory import PRIORITY_PREFIX, Inventory
from runtime.niceness import realtime_of
from runtime.placement import stable_shard
from runtime.transit import line_from_wire, line_to_wire

log = logging.getLogger("commandpost.priority")

__all__ = ["BUCKETS_MS", "LEASE_S", "MEMBER_PREFIX", "STAGES", "TICK_S", "PoolMember",
           "member_ids", "partition_of"]

#: Entity ids of the members: ``priority-1`` … ``priority-N``.
MEMBER_PREFIX: Final = PRIORITY_PREFIX
#: How long a lease holds without renewal, and how often members renew theirs (s).
LEASE_S: Final = 0.5
TICK_S: Final = 0.1
#: A member serves a partition's positions only this long after its lease's last renewal
#: began (the lease holds at least :data:`LEASE_S` from then).
_SAFE_S: Final = LEASE_S - 1.5 * TICK_S
#: A member gives up a partition whose lease it could not renew for this long.
_LOST_S: Final = 2 * LEASE_S
#: The latency histogram's upper bounds (ms); the last bucket holds the rest.
BUCKETS_MS: Final = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
#: How long a request may take before it is given up (s).
_CALL_TIMEOUT_S: Final = 1.0
#: A granted request's way, stage by stage: decoding the position, the tracker, the
#: hand-off to the request's task, the call to the crossroad's lane, its policy, its
#: controller write, and the answer back to the member.
STAGES: Final = ("decode", "track", "spawn", "call", "policy", "write", "answer")
_PUBLISH_S: Final = 1.0
#: How many recent grants' times a member keeps (:meth:`PoolMember.on_status`).
_TIMELINE: Final = 4096


def member_ids(n: int) -> tuple[str, ...]:
    """The ids of a pool of ``n`` members."""
    return tuple(f"{MEMBER_PREFIX}{k}" for k in range(1, n + 1))


def partition_of(bus_id: str, members: int) -> int:
    """The partition (0-based) a bus belongs to: stable across processes and runs."""
    return stable_shard("bus", bus_id, members)


def _part_lease(p: int) -> str:
    return f"priority:part:{p}"


def _member_lease(p: int) -> str:
    return f"priority:member:{p}"


class _Latency:
    """A fixed-bucket histogram of latencies in ms, with exact p50/p99 of recent ones."""

    def __init__(self, keep: int = 4096) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.recent: list[float] = []
        self._keep = keep

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1
        self.recent.append(ms)
        if len(self.recent) > self._keep:
            del self.recent[: len(self.recent) - self._keep]

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.recent)

        def q(f: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(f * len(ordered)))], 3) \
                if ordered else None

        edges: list[float | None] = [*BUCKETS_MS, None]
        return {"p50": q(0.5), "p99": q(0.99),
                "histogram": [[e, n] for e, n in zip(edges, self.counts, strict=True)]}


class _Stages:
    """Recent durations (ms) of each of :data:`STAGES`, with their p50/p99."""

    def __init__(self, keep: int = 1024) -> None:
        self.recent: dict[str, list[float]] = {s: [] for s in STAGES}
        self._keep = keep

    def add(self, stamps: Sequence[float]) -> None:
        """``stamps``: wall-clock times (s) bounding the stages, one more than them."""
        for name, a, b in zip(STAGES, stamps, stamps[1:], strict=False):
            kept = self.recent[name]
            kept.append((b - a) * 1000)
            if len(kept) > self._keep:
                del kept[: len(kept) - self._keep]

    def summary(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for name, kept in self.recent.items():
            ordered = sorted(kept)
            out[name] = {f"p{round(f * 100)}": (
                round(ordered[min(len(ordered) - 1, int(f * len(ordered)))], 3)
                if ordered else None) for f in (0.5, 0.99)}
        return out


class PoolMember(Entity):
    """One member of the bus-priority pool (see the module doc)."""

    kind = "priority_member"
    #: On the bus-priority path: its host keeps the normal process priority.
    LATENCY_CRITICAL = True

    @classmethod
    def coordinator_attrs(cls, inventory: Inventory) -> dict[str, Any]:
        """The buses (id → municipality), and the lines and crossroads the tracker needs."""
        buses = {eq.id: eq.municipality for eq in inventory.equipment
                 if eq.kind == "vehicle" and eq.profile == "bus"}
        return {"buses": buses, "bus_lines": [line_to_wire(line)
                                              for line in inventory.bus_lines.values()]}

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        attrs = self.ctx.equipment.attrs
        members = [str(m) for m in attrs.get("members") or (self.ctx.id,)]
        self.index = members.index(self.ctx.id) if self.ctx.id in members else 0
        self.members = len(members)
        rules = attrs.get("rules")
        self.config: PolicyConfig = (parse_priority_config(str(rules), "<service priority_rules>")
                                     if rules else builtin_priority_config())
        if attrs.get("grant_all"):
            from dataclasses import replace

            self.config = replace(self.config, grant_all=True)
        self.tracker = BusTracker([line_from_wire(d) for d in attrs.get("bus_lines") or ()],
                                  clock_speed=self.ctx.clock.speed)
        buses: Mapping[str, str] = attrs.get("buses") or {}
        self.buses = {str(b): str(m) for b, m in buses.items()}
        self.parts: dict[int, list[str]] = {}
        for bus in sorted(self.buses):
            self.parts.setdefault(partition_of(bus, self.members), []).append(bus)
        self.serving: dict[int, float] = {}  # partition -> monotonic time of the last renewal
        self.ids = RequestIdAllocator(self.index, time.time())
        self.active: dict[tuple[str, str], int] = {}  # (bus, crossroad) -> request id
        self.latency = _Latency()
        self.stages = _Stages()
        # Each recent grant's times: request id, then the wall-clock times the position
        # was received, the request sent, and the lane took, decided and wrote it.
        self.timeline: deque[tuple[int, float, float, float, float, float]] = deque(
            maxlen=_TIMELINE)
        self.granted = 0
        self.refused: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.received = 0
        self.tracked: Counter[str] = Counter()  # tracker events by kind
        self.profile = builtin_profile("bus")
        self._tasks: set[asyncio.Task[Any]] = set()
        url = self.ctx.option("mqtt_url")
        # The positions on a plain QoS 0 connection (devices.mqtt_wire): each read handed
        # over at once, where a full client takes a loop turn per packet.
        self.session: TelemetrySubscriber | None = None
        if url:
            self.session = TelemetrySubscriber(
                str(url), f"{RUNTIME_CLIENT_PREFIX}{self.ctx.id}", self._on_message)
            await self.session.start()
        self._loop = asyncio.get_running_loop().create_task(self._leases(),
                                                             name=f"{self.ctx.id}.leases")

    async def on_stop(self) -> None:
        self._loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop
        for p in list(self.serving):
            await self._give_up(p)
        for t in list(self._tasks):
            t.cancel()
        if self.session is not None:
            await self.session.stop()

    # -- partitions --------------------------------------------------------------------
    async def _leases(self) -> None:
        last_publish = 0.0
        while True:
            started = time.monotonic()
            try:
                await self._tick(started)
            except CommandpostError as exc:
                log.debug("%s: lease tick failed: %s", self.ctx.id, exc)
            for p, renewed in list(self.serving.items()):
                if time.monotonic() - renewed > _LOST_S:
                    await self._give_up(p)  # lapsed long ago: another may serve it
            for ev in self.tracker.expire(self.ctx.clock.time()):
                self._spawn(self._act(ev, time.perf_counter(), time.time_ns()))
            if started - last_publish >= _PUBLISH_S:
                last_publish = started
                self._publish()
            await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - started)))

    def _successor_of(self, p: int, alive: set[int]) -> int | None:
        for step in range(1, self.members):
            k = (p + step) % self.members
            if k in alive:
                return k
        return None

    async def _tick(self, now: float) -> None:
        # The round trips of one tick go out together: a store slow under load delays a
        # renewal by one of them, not by their sum.
        _, owners = await asyncio.gather(
            self.ctx.hold_lease(_member_lease(self.index), LEASE_S),
            self.ctx.lease_owners([_member_lease(k) for k in range(self.members)]))
        alive = {k for k in range(self.members) if _member_lease(k) in owners} | {self.index}
        wanted: list[int] = []
        for p in range(self.members):
            mine = p == self.index or (p not in alive and self._successor_of(p, alive)
                                        == self.index)
            if p != self.index and p in alive and p in self.serving:
                await self._give_up(p)  # its member is back
            elif mine:
                wanted.append(p)
        held = await asyncio.gather(*(self.ctx.hold_lease(_part_lease(p), LEASE_S)
                                      for p in wanted))
        for p, ok in zip(wanted, held, strict=True):
            if ok:
                if p not in self.serving:
                    await self._take(p)
                self.serving[p] = now
            elif p in self.serving:
                await self._give_up(p)  # another member holds it

    async def _take(self, p: int) -> None:
        if self.session is not None:
            self.session.subscribe([topic(self.buses[bus], "vehicle", bus, "telemetry")
                                    for bus in self.parts.get(p, ())])
        self.ctx.emit("priority_partition", partition=p, taken=True,
                      buses=len(self.parts.get(p, ())))
        self._publish()

    async def _give_up(self, p: int) -> None:
        self.serving.pop(p, None)
        if self.session is not None:
            self.session.unsubscribe([topic(self.buses[bus], "vehicle", bus, "telemetry")
                                      for bus in self.parts.get(p, ())])
        now = self.ctx.clock.time()
        for bus in self.parts.get(p, ()):
            for ev in self.tracker.drop(bus, now):
                self._spawn(self._act(ev, time.perf_counter(), time.time_ns()))
        with contextlib.suppress(CommandpostError):
            await self.ctx.release_lease(_part_lease(p))
        self.ctx.emit("priority_partition", partition=p, taken=False)
        self._publish()

    def served_buses(self) -> list[str]:
        return [b for p in sorted(self.serving) for b in self.parts.get(p, ())]

    # -- positions ---------------------------------------------------------------------
    def _on_message(self, name: str, payload: bytes) -> None:
        received = time.perf_counter()
        received_ns = time.time_ns()
        stamps = [received_ns / 1e9]
        parts = name.split("/")
        bus = parts[3] if len(parts) == 5 else ""
        self.received += 1
        renewed = self.serving.get(partition_of(bus, self.members)) if bus in self.buses else None
        if renewed is None:
            self.errors["not_served"] += 1
            return
        if time.monotonic() - renewed > _SAFE_S:
            self.errors["lease_unsure"] += 1  # the lease may lapse before this is served
            return
        try:
            sample = decode_payload(self.profile, payload)
        except MalformedMessageError:
            self.errors["malformed"] += 1
            return
        stamps.append(time.time())
        now = self.ctx.clock.time()
        events = self.tracker.update(bus, sample, now)
        stamps.append(time.time())
        for ev in events:
            self.tracked[str(ev.kind)] += 1
            self._spawn(self._act(ev, received, received_ns, stamps))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, ev: TrackEvent, received: float, received_ns: int,
                   stamps: Sequence[float] = ()) -> None:
        key = (ev.bus_id, ev.crossroad)
        lateness = ev.lateness_s if ev.lateness_s is not None else math.nan
        if ev.kind is EventKind.CHECK_IN:
            reason = eligible(ev.line, lateness, self.config)
            if reason is not None:
                self.refused[reason] += 1
                return
            request_id = self.ids.allocate(time.time())
            span = tracing.start(ev.bus_id, ev.line, ev.crossroad, ev.approach, request_id,
                                 received_ns)
            payload = {"request_id": request_id, "bus_id": ev.bus_id, "line": ev.line,
                       "approach": ev.approach, "strategy": "extension",
                       "eta_s": ev.eta_s or 0.0,
                       "lateness_s": 0.0 if math.isnan(lateness) else lateness,
                       "arrival_ts": ev.ts}
            sent = time.time()
            try:
                answer = await self.ctx.priority(Envelope(
                    target=ev.crossroad, type=REQUEST, payload=payload,
                    sender=self.ctx.id, kind=MessageKind.COMMAND), _CALL_TIMEOUT_S)
            except (CommandpostError, TimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
                tracing.fail(span, str(exc))
                return
            self.latency.add((time.perf_counter() - received) * 1000)
            granted = bool(isinstance(answer, Mapping) and answer.get("granted"))
            lane_ts = answer.get("lane_ts") if isinstance(answer, Mapping) else None
            if granted and len(stamps) == 3 and isinstance(lane_ts, list) \
                    and len(lane_ts) == 3:
                entered, decided, written = map(float, lane_ts)
                self.stages.add([*stamps, sent, entered, decided, written, time.time()])
                self.timeline.append((request_id, stamps[0], sent, entered, decided, written))
            tracing.decided(span, answer if isinstance(answer, Mapping) else {})
            if granted:
                self.granted += 1
                self.active[key] = request_id
            else:
                reason = str(answer.get("reason") if isinstance(answer, Mapping) else "")
                self.refused[reason or "refused"] += 1
            return
        request_id = self.active.pop(key, 0)
        if not request_id:
            return
        reason = ("checked_out" if ev.kind is EventKind.CHECK_OUT
                  else str(ev.reason or "cancelled"))
        try:
            await self.ctx.priority(Envelope(
                target=ev.crossroad, type=CLEAR,
                payload={"request_id": request_id, "reason": reason},
                sender=self.ctx.id, kind=MessageKind.COMMAND), _CALL_TIMEOUT_S)
        except (CommandpostError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1  # the controller drops it at its deadline

    # -- read model --------------------------------------------------------------------
    def _publish(self) -> None:
        self.ctx.publish_read_model(f"priority-member-{self.index + 1}", pack({
            "id": self.ctx.id, "pid": os.getpid(), "buses": len(self.served_buses()),
            "realtime": realtime_of(os.getpid()), "partitions": sorted(self.serving),
            "granted": self.granted,
            "refused": dict(self.refused), "errors": dict(self.errors),
            "received": self.received, "tracked": dict(self.tracked),
            "spans": tracing.exported(),
            "ignored": dict(self.tracker.ignored),
            "latency_ms": {**self.latency.summary(),
                           "recent": [round(x, 3) for x in self.latency.recent[-1000:]]},
            "stages_ms": self.stages.summary(),
            "ts": time.time()}))

    async def on_status(self, msg: Envelope) -> dict[str, Any]:
        """What the member serves now, and its recent grants' times (``timeline``:
        request id, received, sent, lane entered, decided, written; tests, benches)."""
        return {"partitions": sorted(self.serving), "buses": self.served_buses(),
                "granted": self.granted, "refused": dict(self.refused),
                "timeline": [list(t) for t in self.timeline]}


def merge_members(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``GET /api/v1/priority`` from the members' read models."""
    members = [{"id": d.get("id"), "pid": d.get("pid"), "buses": d.get("buses", 0),
                "realtime": d.get("realtime", 0), "partitions": d.get("partitions", []),
                "received": d.get("received", 0),
                "tracked": d.get("tracked", {}), "ignored": d.get("ignored", {}),
                "errors": d.get("errors", {}), "spans": d.get("spans", 0),
                "stages_ms": d.get("stages_ms", {})} for d in docs]
    refused: Counter[str] = Counter()
    counts = [0] * (len(BUCKETS_MS) + 1)
    recent: list[float] = []
    granted = 0
    for d in docs:
        granted += int(d.get("granted", 0))
        refused.update({str(k): int(v) for k, v in (d.get("refused") or {}).items()})
        lat = d.get("latency_ms") or {}
        for i, (_, n) in enumerate(lat.get("histogram") or ()):
            if i < len(counts):
                counts[i] += int(n)
        recent += [float(x) for x in lat.get("recent") or ()]
    merged = _Latency()
    merged.counts, merged.recent = counts, recent
    return {"members": members, "requests": {"granted": granted, "refused": dict(refused)},
            "latency_ms": merged.summary()}
