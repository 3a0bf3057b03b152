"""A bounded entity mailbox with the overflow rules of DESIGN.md.

* Telemetry conflates when the box is full: the newest value for the same
  (sender, type) replaces the queued one; failing that the oldest telemetry is
  dropped. Both are counted.
* Commands and events are refused with :class:`MailboxFullError` so the sender
  learns it may retry; nothing is dropped silently.
* Control messages and replies are always admitted (a small overdraft), so a
  full box can still be pinged and stopped.
* A message whose id was seen recently is a duplicate (at-least-once delivery
  between hosts) and is dropped and counted.

The mailbox outlives entity incarnations: while an entity restarts, messages
keep arriving here, and this bounded queue is the stash they wait in.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass

from runtime.envelope import Envelope, MessageKind
from runtime.errors import MailboxFullError


@dataclass(slots=True)
class MailboxStats:
    """Counters an operator can read off an entity."""

    accepted: int = 0
    conflated: int = 0
    dropped_telemetry: int = 0
    refused: int = 0
    duplicates: int = 0


class Mailbox:
    """FIFO of envelopes, bounded at ``capacity``, deduplicating by envelope id."""

    def __init__(self, capacity: int = 256, *, dedupe_window: int = 2048) -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        self.capacity = capacity
        self._queue: deque[Envelope] = deque()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._waiter: asyncio.Future[None] | None = None
        self.stats = MailboxStats()

    def __len__(self) -> int:
        return len(self._queue)

    def seen(self, message_id: str) -> bool:
        return message_id in self._seen

    def remember(self, message_id: str) -> None:
        """Record an id as delivered (also used for ids restored from a checkpoint)."""
        self._seen[message_id] = None
        self._seen.move_to_end(message_id)
        while len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)

    def offer(self, env: Envelope) -> bool:
        """Queue ``env``; False when it was a duplicate (dropped and counted).

        Raises :class:`MailboxFullError` for a command or event that does not fit.
        """
        if env.id in self._seen:
            self.stats.duplicates += 1
            return False
        if len(self._queue) >= self.capacity:
            if env.kind is MessageKind.TELEMETRY:
                self._conflate(env)
                self._wake()
                return True
            if env.kind in (MessageKind.COMMAND, MessageKind.EVENT):
                self.stats.refused += 1
                raise MailboxFullError(f"mailbox of {env.target} is full ({self.capacity})")
        self._queue.append(env)
        if env.kind is not MessageKind.TELEMETRY:
            # Telemetry is never redelivered (it is conflated, not retried): no dedupe.
            self.remember(env.id)
        self.stats.accepted += 1
        self._wake()
        return True

    def _conflate(self, env: Envelope) -> None:
        for i, queued in enumerate(self._queue):
            if (
                queued.kind is MessageKind.TELEMETRY
                and queued.sender == env.sender
                and queued.type == env.type
            ):
                self._queue[i] = env
                self.stats.conflated += 1
                return
        for i, queued in enumerate(self._queue):
            if queued.kind is MessageKind.TELEMETRY:
                del self._queue[i]
                self._queue.append(env)
                self.stats.dropped_telemetry += 1
                return
        # Full of commands and control messages only: the telemetry is the one dropped.
        self.stats.dropped_telemetry += 1

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> Envelope | None:
        return self._queue.popleft() if self._queue else None

    async def get(self) -> Envelope:
        """The next envelope, waiting for one if the box is empty."""
        while not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def drain(self) -> list[Envelope]:
        out = list(self._queue)
        self._queue.clear()
        return out
