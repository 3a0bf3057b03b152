"""Traffic between hosts: batched, at-least-once, one call per batch.

Entities send envelopes one by one; the :class:`Outbox` gathers the ones bound
for other hosts and ships each destination's pile as one msgpack blob in one
transport call (a Ray call in production). A batch that cannot be delivered is
kept and retried with backoff — receivers drop duplicates by envelope id — so a
host replaced mid-flight loses nothing it was sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.envelope import Envelope, encode_batch
from runtime.errors import CommandpostError, RetryableError

log = logging.getLogger("commandpost.router")


class Transport(Protocol):
    """Delivers a batch blob to another host."""

    async def send_batch(self, host_id: str, blob: bytes) -> Mapping[str, Any]:
        """Deliver ``blob`` to ``host_id``; raise RetryableError if it cannot now."""

    async def priority(self, host_id: str, blob: bytes) -> bytes:
        """Hand one packed envelope to ``host_id``'s priority lane at once (never batched)
        and return the lane's packed answer; raise RetryableError if it cannot now."""
        ...


class Directory:
    """Which host owns which entity (static per placement plan, swappable whole)."""

    def __init__(self, owners: Mapping[str, str] | None = None) -> None:
        self._owners: dict[str, str] = dict(owners or {})

    def host_of(self, entity_id: str) -> str | None:
        return self._owners.get(entity_id)

    def replace(self, owners: Mapping[str, str]) -> None:
        self._owners = dict(owners)

    def __len__(self) -> int:
        return len(self._owners)

    def entities_of(self, host_id: str) -> list[str]:
        return [e for e, h in self._owners.items() if h == host_id]


@dataclass(slots=True)
class OutboxStats:
    calls: int = 0
    envelopes: int = 0
    retries: int = 0
    failed_calls: int = 0


class Outbox:
    """Per-destination buffers flushed as one call each."""

    def __init__(
        self,
        transport: Transport,
        *,
        max_batch: int = 1000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
    ) -> None:
        self._transport = transport
        self._max_batch = max_batch
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._buffers: dict[str, list[Envelope]] = defaultdict(list)
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._chains: dict[str, asyncio.Task[None]] = {}
        self.stats = OutboxStats()
        self.calls_to: dict[str, int] = defaultdict(int)
        self._closed = False

    def put(self, host_id: str, env: Envelope) -> None:
        """Queue ``env`` for ``host_id``; flushed once the current task yields."""
        buf = self._buffers[host_id]
        buf.append(env)
        if len(buf) >= self._max_batch:
            self._ship(host_id)
        elif not self._scheduled:
            # call_soon, not a timer: everything sent in the same loop turn
            # leaves together, and nothing waits to fill a batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def pending(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def _flush_all(self) -> None:
        self._scheduled = False
        for host_id in list(self._buffers):
            self._ship(host_id)

    def _ship(self, host_id: str) -> None:
        batch = self._buffers.pop(host_id, None)
        if not batch or self._closed:
            if batch:
                self._buffers[host_id] = batch
            return
        previous = self._chains.get(host_id)
        task = asyncio.get_running_loop().create_task(
            self._deliver(host_id, batch, previous), name=f"outbox[{host_id}].deliver"
        )
        self._chains[host_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        for host_id, t in list(self._chains.items()):
            if t is task:
                del self._chains[host_id]

    async def _deliver(
        self, host_id: str, batch: list[Envelope], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            # Keep per-destination order: a batch leaves after the one before it.
            await asyncio.wait([previous])
        blob = encode_batch(batch)
        delay = self._retry_initial_s
        while True:
            self.stats.calls += 1
            self.calls_to[host_id] += 1
            try:
                await self._transport.send_batch(host_id, blob)
            except RetryableError as exc:
                self.stats.failed_calls += 1
                self.stats.retries += 1
                log.debug("batch of %d to %s failed (%s), retrying", len(batch), host_id, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._retry_max_s)
                continue
            except CommandpostError as exc:
                self.stats.failed_calls += 1
                log.error("batch of %d to %s refused: %s", len(batch), host_id, exc)
                return
            self.stats.envelopes += len(batch)
            return

    async def drain(self, timeout: float = 5.0) -> None:
        """Ship everything buffered and wait for the deliveries in flight."""
        self._flush_all()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                if not t.cancelled():
                    raise
