"""The command vocabulary: what an operator (or a plan) asks a piece of equipment to do.

A command is journaled before anything acts on it, then moves forward through
its lifecycle and never back::

    queued ──► sent ──► acked | failed | expired
       └─────► acked | failed | expired | superseded

``superseded`` means a newer setpoint for the same target replaced the command
before it was sent. This module does no I/O; :mod:`runtime.store` persists
commands as Redis hashes through :meth:`Command.to_fields` and
:meth:`Command.from_fields`.

Along its path a command collects timestamps (wall-clock seconds since the
epoch, 0 while not reached), so that a round trip can be split into stages::

    created_ts            journaled (stamped by whoever submitted it)
    sent_ts               its host picked it from the journal
    device_read_ts        the entity read its device while applying it (when it did)
    device_write_ts       the device write began
    device_confirmed_ts   the device confirmed the write
    updated_ts            the status last moved; for a final status, when it was written
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.envelope import pack, unpack
from runtime.errors import InvalidCommandError, MalformedMessageError, RejectedError

__all__ = [
    "MAX_ACTION_LENGTH",
    "MAX_PARAMS",
    "MAX_PARAMS_BYTES",
    "MAX_PARAM_NAME_LENGTH",
    "STAMPS",
    "TERMINAL",
    "TRANSITIONS",
    "Command",
    "CommandStatus",
    "can_move",
    "check_command_shape",
    "new_command_id",
    "shown",
]

#: Limits of every command, whatever its target, checked before it is journaled.
MAX_ACTION_LENGTH = 64
MAX_PARAM_NAME_LENGTH = 64
MAX_PARAMS = 64
MAX_PARAMS_BYTES = 4096  # params msgpack-encoded


class CommandStatus(enum.StrEnum):
    """Where a command is in its lifecycle."""

    QUEUED = "queued"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


TERMINAL: frozenset[CommandStatus] = frozenset(
    {CommandStatus.ACKED, CommandStatus.FAILED, CommandStatus.EXPIRED, CommandStatus.SUPERSEDED}
)

# The one definition of the lifecycle: the store's Lua script is generated from it.
TRANSITIONS: Mapping[CommandStatus, frozenset[CommandStatus]] = {
    CommandStatus.QUEUED: frozenset(
        {
            CommandStatus.SENT,
            CommandStatus.ACKED,
            CommandStatus.FAILED,
            CommandStatus.EXPIRED,
            CommandStatus.SUPERSEDED,
        }
    ),
    CommandStatus.SENT: frozenset(
        {CommandStatus.ACKED, CommandStatus.FAILED, CommandStatus.EXPIRED}
    ),
    **{status: frozenset() for status in TERMINAL},
}


def can_move(old: CommandStatus, new: CommandStatus) -> bool:
    """Whether a command in ``old`` may move to ``new`` (never back, never to itself)."""
    return new in TRANSITIONS.get(old, frozenset())


def new_command_id() -> str:
    """A fresh command id that sorts by creation time (millisecond hex + random suffix)."""
    return f"c-{int(time.time() * 1000):x}-{secrets.token_hex(4)}"


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for messages echoing a request.

    A refusal must not send back (or log) the 100 KB it refused, and an int of
    thousands of digits is not even printable (``sys.set_int_max_str_digits``).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "<a number too large>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"… ({len(value)} characters)"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return repr(value)
    return f"<{type(value).__name__}>"


def check_command_shape(action: object, params: object) -> dict[str, Any]:
    """``params`` as a dict if the command keeps to the limits of every command.

    The action is a string of 1 to :data:`MAX_ACTION_LENGTH` characters; params
    a mapping of at most :data:`MAX_PARAMS` names, each of 1 to
    :data:`MAX_PARAM_NAME_LENGTH` characters, and at most
    :data:`MAX_PARAMS_BYTES` once msgpack-encoded. Each test costs at most what
    the limits allow, so that a 60,000-key or 100 KB request is refused without
    being walked or encoded. Raises :class:`InvalidCommandError` naming
    ``action`` or ``params``.
    """
    if not isinstance(action, str) or not action:
        raise InvalidCommandError("action must be a non-empty string", field="action")
    if len(action) > MAX_ACTION_LENGTH:
        raise InvalidCommandError(
            f"action is {len(action)} characters long, more than {MAX_ACTION_LENGTH}",
            field="action", code="too_long")
    if not isinstance(params, Mapping):
        raise InvalidCommandError("params must be a mapping (a JSON object)", field="params")
    if len(params) > MAX_PARAMS:
        raise InvalidCommandError(f"params has {len(params)} names, more than {MAX_PARAMS}",
                                  field="params", code="too_many_params")
    for name in params:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_PARAM_NAME_LENGTH:
            raise InvalidCommandError(
                f"param name {shown(name)} is not a string of 1-{MAX_PARAM_NAME_LENGTH} "
                "characters", field="params", code="bad_name")
    if _size_at_least(params, MAX_PARAMS_BYTES) > MAX_PARAMS_BYTES:
        raise InvalidCommandError(f"params are larger than {MAX_PARAMS_BYTES} bytes",
                                  field="params", code="too_large")
    try:
        size = len(pack(dict(params)))
    except (TypeError, ValueError, OverflowError) as exc:
        where = next((f"params.{name}" for name, value in params.items()
                      if not _packs(value)), "params")
        raise InvalidCommandError(f"params are not encodable: {exc}", field=where) from None
    if size > MAX_PARAMS_BYTES:
        raise InvalidCommandError(
            f"params are {size} bytes encoded, more than {MAX_PARAMS_BYTES}",
            field="params", code="too_large")
    for name, value in params.items():
        # NaN compares false with any bound, and no device holds an infinity.
        if not _all_finite(value):
            raise InvalidCommandError(f"{name} holds a number that is not finite",
                                      field=f"params.{name}")
    return dict(params)


def _packs(value: Any) -> bool:
    """Whether msgpack encodes ``value`` (an int past 64 bits, an object it does not)."""
    try:
        pack(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _all_finite(value: Any) -> bool:
    """Whether every float in ``value`` (nested lists and mappings too) is finite."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


def _size_at_least(value: Any, budget: int) -> int:
    """A lower bound of ``value``'s msgpack size, given up once it passes ``budget``.

    Every value takes at least one byte and a string one per character, so the
    walk stops after at most ``budget`` values and never reads a long string:
    its cost is bounded by the limit, not by the size of what was sent. The
    exact size is then measured on what is known to be small.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        total += 1
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, (Mapping, list, tuple)):
            if len(item) > budget:
                return total + len(item)
            if isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
        if total + len(stack) > budget:
            return total + len(stack)
    return total


_REQUIRED = ("command_id", "target", "action", "caller")
#: Timestamps that a status update may record along with the move (see the module doc).
STAMPS: frozenset[str] = frozenset(
    {"sent_ts", "device_read_ts", "device_write_ts", "device_confirmed_ts"})
_FLOATS = ("created_ts", "deadline_ts", "updated_ts", "sent_ts", "device_read_ts",
           "device_write_ts", "device_confirmed_ts")


@dataclass(frozen=True, slots=True)
class Command:
    """One command to one target entity, as journaled.

    ``deadline_ts`` is wall-clock seconds since the epoch (0 means none);
    the other ``*_ts`` fields are the path's timestamps (module doc);
    ``idempotency_key`` is scoped to ``(caller, target)``; ``params`` must be
    msgpack-encodable and is copied, so the caller's mapping may change later
    without touching the command.
    """

    command_id: str
    target: str
    action: str
    params: Mapping[str, Any]
    caller: str
    status: CommandStatus = CommandStatus.QUEUED
    created_ts: float = 0.0
    deadline_ts: float = 0.0
    updated_ts: float = 0.0
    error: str = ""
    idempotency_key: str = ""
    sent_ts: float = 0.0
    device_read_ts: float = 0.0
    device_write_ts: float = 0.0
    device_confirmed_ts: float = 0.0

    def __post_init__(self) -> None:
        for name in _REQUIRED:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise RejectedError(f"command {name} must be a non-empty string",
                                    code="bad_command")
        if not isinstance(self.params, Mapping):
            raise RejectedError("command params must be a mapping", code="bad_command")
        if not all(isinstance(k, str) for k in self.params):
            raise RejectedError("command params keys must be strings", code="bad_command")
        try:
            status = CommandStatus(self.status)
        except ValueError as exc:
            raise RejectedError(f"unknown command status {self.status!r}",
                                code="bad_command") from exc
        for name in _FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RejectedError(f"command {name} must be a number", code="bad_command")
            if not math.isfinite(value) or value < 0:
                raise RejectedError(f"command {name} must be finite and >= 0",
                                    code="bad_command")
            object.__setattr__(self, name, float(value))
        for name in ("error", "idempotency_key"):
            if not isinstance(getattr(self, name), str):
                raise RejectedError(f"command {name} must be a string", code="bad_command")
        params = dict(self.params)
        try:
            pack(params)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RejectedError(f"command params are not encodable: {exc}",
                                code="bad_command") from exc
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "status", status)

    @property
    def terminal(self) -> bool:
        """True once the command can no longer move."""
        return self.status in TERMINAL

    def to_fields(self) -> dict[str, str | bytes]:
        """The command as Redis hash fields (params msgpack-encoded, numbers as text)."""
        return {
            "command_id": self.command_id,
            "target": self.target,
            "action": self.action,
            "params": pack(dict(self.params)),
            "caller": self.caller,
            "status": self.status.value,
            **{name: repr(getattr(self, name)) for name in _FLOATS},
            "error": self.error,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Command:
        """Rebuild a command from hash fields (str or bytes keys and values).

        Optional fields may be missing (older records); a record that cannot be
        a command raises :class:`MalformedMessageError`.
        """
        text: dict[str, str] = {}
        params_raw: bytes = b""
        for raw_key, raw_value in fields.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            if key == "params":
                params_raw = raw_value if isinstance(raw_value, bytes) else raw_value.encode()
                continue
            try:
                text[key] = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            except UnicodeDecodeError as exc:
                raise MalformedMessageError(f"command field {key} is not UTF-8") from exc
        params: Any = unpack(params_raw) if params_raw else {}
        if not isinstance(params, dict):
            raise MalformedMessageError("stored command params are not a mapping")
        try:
            numbers = {name: float(text.get(name) or 0.0) for name in _FLOATS}
        except ValueError as exc:
            raise MalformedMessageError(f"stored command has a bad timestamp: {exc}") from exc
        try:
            return cls(
                command_id=text.get("command_id", ""),
                target=text.get("target", ""),
                action=text.get("action", ""),
                params=params,
                caller=text.get("caller", ""),
                status=CommandStatus(text.get("status") or CommandStatus.QUEUED.value),
                error=text.get("error", ""),
                idempotency_key=text.get("idempotency_key", ""),
                **numbers,
            )
        except (RejectedError, ValueError) as exc:
            raise MalformedMessageError(f"stored record is not a command: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        """The command as the HTTP API shows it."""
        return {
            "command_id": self.command_id,
            "target": self.target,
            "action": self.action,
            "params": dict(self.params),
            "caller": self.caller,
            "status": self.status.value,
            "created_ts": self.created_ts,
            "deadline_ts": self.deadline_ts,
            "updated_ts": self.updated_ts,
            "sent_ts": self.sent_ts,
            "device_read_ts": self.device_read_ts,
            "device_write_ts": self.device_write_ts,
            "device_confirmed_ts": self.device_confirmed_ts,
            "error": self.error,
        }
