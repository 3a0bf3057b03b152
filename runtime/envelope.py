"""The message envelope that every entity message travels in, and its msgpack codec.

An envelope is addressed to one entity (``target``); ``sender`` and
``reply_to`` name entities or external callers (``caller:…``); replies carry
the request's ``id`` as their ``correlation_id``. ``deadline`` is wall-clock
seconds since the epoch (0 means none). ``kind`` tells the mailbox how to
treat the message when it is full: telemetry conflates, commands are refused.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from runtime.errors import MalformedMessageError

_counter = itertools.count()
_PREFIX = os.urandom(6).hex()


def new_id() -> str:
    """A process-unique, cheap message id (random prefix + counter)."""
    return f"{_PREFIX}-{next(_counter):x}"


class MessageKind(enum.StrEnum):
    """How a mailbox treats a message when it is full."""

    TELEMETRY = "telemetry"  # conflated: the latest value per (sender, type) wins
    COMMAND = "command"  # refused back to the sender as retryable
    EVENT = "event"  # refused like a command: events must not vanish silently
    CONTROL = "control"  # pings, replies, lifecycle: always admitted
    REPLY = "reply"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to one entity."""

    target: str
    type: str
    payload: Any = None
    sender: str = ""
    kind: MessageKind = MessageKind.COMMAND
    id: str = field(default_factory=new_id)
    correlation_id: str = ""
    reply_to: str = ""
    deadline: float = 0.0
    trace: str = ""  # W3C traceparent of the sender's span, or ""
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.target or not isinstance(self.target, str):
            raise MalformedMessageError("envelope needs a target entity id")
        if not self.type or not isinstance(self.type, str):
            raise MalformedMessageError("envelope needs a message type")

    def expired(self, now: float) -> bool:
        """True when the envelope carries a deadline that ``now`` has passed."""
        return self.deadline > 0 and now > self.deadline

    def reply(self, type: str, payload: Any = None, *, sender: str = "") -> Envelope:
        """The reply to this envelope, addressed to its ``reply_to`` (or sender)."""
        return Envelope(
            target=self.reply_to or self.sender,
            type=type,
            payload=payload,
            sender=sender or self.target,
            kind=MessageKind.REPLY,
            correlation_id=self.id,
            trace=self.trace,
        )

    def with_target(self, target: str) -> Envelope:
        return replace(self, target=target)

    def to_wire(self) -> list[Any]:
        return [
            self.id,
            self.target,
            self.type,
            self.payload,
            self.sender,
            str(self.kind),
            self.correlation_id,
            self.reply_to,
            self.deadline,
            self.trace,
            self.ts,
        ]

    @classmethod
    def from_wire(cls, row: Any) -> Envelope:
        if not isinstance(row, (list, tuple)) or len(row) != 11:
            raise MalformedMessageError("envelope must be an 11-field array")
        try:
            kind = MessageKind(row[5])
        except ValueError as exc:
            raise MalformedMessageError(f"unknown message kind {row[5]!r}") from exc
        for i, name in ((0, "id"), (1, "target"), (2, "type"), (4, "sender"), (6, "correlation_id"),
                        (7, "reply_to"), (9, "trace")):
            if not isinstance(row[i], str):
                raise MalformedMessageError(f"envelope field {name} must be a string")
        if not isinstance(row[8], (int, float)) or not isinstance(row[10], (int, float)):
            raise MalformedMessageError("envelope deadline and ts must be numbers")
        return cls(
            id=row[0],
            target=row[1],
            type=row[2],
            payload=row[3],
            sender=row[4],
            kind=kind,
            correlation_id=row[6],
            reply_to=row[7],
            deadline=float(row[8]),
            trace=row[9],
            ts=float(row[10]),
        )


def pack(obj: Any) -> bytes:
    """msgpack-encode ``obj`` (bin type on, no str/bytes confusion)."""
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def unpack(data: bytes, *, max_size: int = 1 << 20) -> Any:
    """Decode msgpack, mapping every decoder failure to :class:`MalformedMessageError`."""
    if len(data) > max_size:
        raise MalformedMessageError(f"payload of {len(data)} bytes exceeds {max_size}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedMessageError(f"not valid msgpack: {exc}") from exc


def encode_batch(envelopes: list[Envelope]) -> bytes:
    """One msgpack blob for many envelopes: the unit of traffic between hosts."""
    return pack([e.to_wire() for e in envelopes])


def decode_batch(data: bytes) -> tuple[list[Envelope], int]:
    """Envelopes of a batch, and how many rows were malformed (dropped)."""
    rows = unpack(data, max_size=64 << 20)
    if not isinstance(rows, list):
        raise MalformedMessageError("a batch must be an array of envelopes")
    out: list[Envelope] = []
    bad = 0
    for row in rows:
        try:
            out.append(Envelope.from_wire(row))
        except MalformedMessageError:
            bad += 1
    return out, bad
