"""The state store: entity checkpoints, the event stream and the durable command journal.

Everything the runtime keeps in Redis goes through this module, which maps
every redis-py exception into the project's error tree at the edge. Key
layout, under a namespace prefix ``ns`` (default ``cp``)::

    {ns}:ckpt:{entity_id}              string  an entity's msgpack checkpoint (opaque here)
    {ns}:events                        stream  operator-visible events
    {ns}:audit                         stream  operator actions (runtime.audit.AuditRecord)
    {ns}:journal                       stream  command submissions (command_id, target)
    {ns}:cmd:{command_id}              hash    the command (Command.to_fields), its path's
                                               timestamps set as it moves (sent_ts, device_*)
    {ns}:idem:{caller}:{target}:{key}  string  -> command_id, kept 48 h (parts %-escaped)
    {ns}:cursor:{name}                 string  last journal id a consumer has processed
    {ns}:kv:{name}                     string  small msgpack blobs (the host registry …)
    {ns}:kv:view:{model}               string  read models the coordinators publish (alarms,
                                               interventions, fleet), latest only
    {ns}:kv:view:energy.{id}.{date}    string  a lighting circuit's metered hours of a local
                                               date (runtime.energy)
    {ns}:hash:{name}                   hash    generic string hashes
    {ns}:users, {ns}:user:{name},      set,    the admin web's users and the index of their
    {ns}:user_token:{digest}           string  API tokens (:mod:`runtime.users`)

The events and audit streams are trimmed by age, never by count: each XADD
drops whole stream nodes older than ``retention_s`` (``MINID ~``, default
:data:`STREAM_RETENTION_S`), so an event that a consumer group has not read
yet is never dropped for being one too many. Paging them newest first
(:meth:`SyncStore.page`) uses exclusive ranges and ``MINID``: Redis 6.2 or later.

Three implementations share those keys and the Lua scripts:

* :class:`RedisStore` (``redis.asyncio``) for entities and hosts;
* :class:`SyncStore` (``redis``), the subset the threaded Flask admin needs;
* :class:`MemoryStore`, dict-backed with the same semantics, for unit tests.

Example::

    store = RedisStore("redis://127.0.0.1:6379/0")
    await store.connect()
    cmd, created = await store.submit_command(
        Command(new_command_id(), "xr-dijon-001", "set_plan", {"plan": 2}, "operator:ana"))
    # the reply came after the server's fsync: the command is durable
    await store.update_command(cmd.command_id, CommandStatus.SENT)
    await store.close()

Redis must run with ``appendonly yes`` and ``appendfsync always`` for a reply
to mean "durable"; the embedded server is started that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from runtime.clock import Clock, SystemClock
from runtime.commands import STAMPS, TERMINAL, TRANSITIONS, Command, CommandStatus
from runtime.errors import (
    AuthError,
    CommandpostError,
    ConfigError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
    StoreUnavailableError,
)

__all__ = [
    "HTTP_DEADLINE_S",
    "IDEMPOTENCY_TTL_S",
    "JOURNAL_MAXLEN",
    "STREAM_RETENTION_S",
    "TERMINAL_TTL_S",
    "EquipmentPage",
    "MemoryStore",
    "RedisStore",
    "RetryPolicy",
    "StateStore",
    "StoreKeys",
    "SyncStore",
]

log = logging.getLogger("commandpost.store")

T = TypeVar("T")

IDEMPOTENCY_TTL_S = 172_800  # 48 h: the contract promises at least 24 h
TERMINAL_TTL_S = 7 * 86_400  # a finished command stays readable for a week
#: How long a call behind an HTTP request rides out a Redis outage before the API
#: answers 503: an operator wants a prompt refusal, not a request that hangs.
HTTP_DEADLINE_S = 0.5
STREAM_RETENTION_S = 30 * 86_400  # events and audit: kept 30 days, however many
JOURNAL_MAXLEN = 1_000_000
SAVE_CHUNK = 500
LOAD_CHUNK = 1_000
EVENT_CHUNK = 1_000
EVENT_FILTER_WINDOW = 5_000  # newest events scanned when filtering by entity
RECENT_COMMANDS_SCAN = 2_000  # newest journal entries scanned for an equipment's commands
PAGE_BATCH = 1_000  # entries read per round trip while paging a stream
PAGE_SCAN = 10_000  # entries one page may scan for its filters before it hands a cursor back


# -- retry policy -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Jittered, capped exponential backoff for connection-level failures.

    An operation is retried until ``deadline_s`` seconds have passed since its
    first attempt, then fails with :class:`StoreUnavailableError`.
    """

    initial_s: float = 0.05
    max_s: float = 2.0
    factor: float = 2.0
    jitter: float = 0.2
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ConfigError("retry policy needs 0 < initial_s <= max_s")
        if self.factor < 1:
            raise ConfigError("retry policy factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ConfigError("retry policy jitter must be in [0, 1)")
        if self.deadline_s < 0:
            raise ConfigError("retry policy deadline_s must be >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based)."""
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


# -- keys ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreKeys:
    """Redis key names under one namespace (the only place they are spelled)."""

    namespace: str = "cp"

    def __post_init__(self) -> None:
        if not self.namespace or any(c.isspace() for c in self.namespace):
            raise ConfigError(f"bad store namespace {self.namespace!r}")

    def checkpoint(self, entity_id: str) -> str:
        return f"{self.namespace}:ckpt:{entity_id}"

    @property
    def events(self) -> str:
        return f"{self.namespace}:events"

    @property
    def audit(self) -> str:
        return f"{self.namespace}:audit"

    @property
    def journal(self) -> str:
        return f"{self.namespace}:journal"

    @property
    def command_prefix(self) -> str:
        return f"{self.namespace}:cmd:"

    def command(self, command_id: str) -> str:
        return self.command_prefix + command_id

    def idempotency(self, caller: str, target: str, key: str) -> str:
        # Escaped so that a colon inside a caller name cannot make two triples collide.
        parts = (quote(p, safe="") for p in (caller, target, key))
        return f"{self.namespace}:idem:" + ":".join(parts)

    def cursor(self, name: str) -> str:
        return f"{self.namespace}:cursor:{name}"

    def blob(self, name: str) -> str:
        return f"{self.namespace}:kv:{name}"

    def lease(self, name: str) -> str:
        return f"{self.namespace}:lease:{name}"

    def hash(self, name: str) -> str:
        return f"{self.namespace}:hash:{name}"


# -- Lua scripts (one text each, registered by both Redis-backed stores) ------------------------
# KEYS: cmd hash, journal stream[, idempotency key]
# ARGV: cmd key prefix, journal maxlen, idempotency ttl, command_id, target, field, value, …
# Reply: {1, {}} created; {0, fields} an earlier command holds the idempotency key;
#        {2, fields} a command with this id exists already.
SUBMIT_COMMAND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {2, redis.call('HGETALL', KEYS[1])}
end
if #KEYS == 3 then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local fields = redis.call('HGETALL', ARGV[1] .. existing)
    if #fields > 0 then
      return {0, fields}
    end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'command_id', ARGV[4], 'target', ARGV[5])
if #KEYS == 3 then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
end
return {1, {}}
"""


def _lua_set(statuses: frozenset[CommandStatus]) -> str:
    return "{" + ", ".join(f'["{s.value}"] = true' for s in sorted(statuses)) + "}"


# KEYS: cmd hash. ARGV: new status, ts, error, terminal ttl, "1" when this is a retry,
# then timestamp field/value pairs (Command STAMPS) recorded with the move.
# Reply: 1 moved, 0 not allowed, -1 no such command. On a retry, finding the
# status already at the target counts as moved: the lost first attempt did it.
UPDATE_COMMAND_LUA = (
    "local moves = {\n"
    + "".join(
        f'  ["{old.value}"] = {_lua_set(new)},\n' for old, new in sorted(TRANSITIONS.items())
    )
    + "}\n"
    + f"local terminal = {_lua_set(TERMINAL)}\n"
    + """
local old = redis.call('HGET', KEYS[1], 'status')
if not old then
  return -1
end
if old == ARGV[1] then
  if ARGV[5] == '1' then return 1 end
  return 0
end
local allowed = moves[old]
if not allowed or not allowed[ARGV[1]] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_ts', ARGV[2], 'error', ARGV[3])
if #ARGV > 5 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
end
if terminal[ARGV[1]] then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1
"""
)


# -- shared codecs ------------------------------------------------------------------------------
_STREAM_ID = re.compile(r"^(\d+)(?:-(\d+))?$")
#: The largest part of a stream id (milliseconds, then sequence): Redis keeps each in 64 bits.
MAX_STREAM_ID_PART: Final = 2**64 - 1


def _stream_id(value: str) -> tuple[int, int]:
    match = _STREAM_ID.match(value) if isinstance(value, str) and len(value) <= 41 else None
    if match is None:
        raise RejectedError(f"bad stream id {value[:50]!r}", code="bad_stream_id")
    ms, seq = int(match.group(1)), int(match.group(2) or 0)
    if ms > MAX_STREAM_ID_PART or seq > MAX_STREAM_ID_PART:
        raise RejectedError(f"bad stream id {value!r}: a part is past 2**64 - 1",
                            code="bad_stream_id")
    return ms, seq


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(stream_id: bytes | str) -> tuple[int, int]:
    """A stream id as Redis orders it (``ms-seq``)."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _min_id(now: float, retention_s: float) -> str:
    """The oldest stream id kept when trimming at ``now`` to ``retention_s`` seconds."""
    return f"{max(0, int((now - retention_s) * 1000))}-0"


def _check_retention(retention_s: float) -> float:
    if (isinstance(retention_s, bool) or not isinstance(retention_s, (int, float))
            or not math.isfinite(retention_s) or retention_s <= 0):
        raise ConfigError(f"stream retention must be a positive number of seconds: "
                          f"{retention_s!r}")
    return float(retention_s)


_EVENT_TYPES = "_types"  # a field naming the non-str values, so that events round-trip
_RESERVED_EVENT_FIELDS = frozenset({"event_id", _EVENT_TYPES})


def _encode_event(event: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(event, Mapping) or not event:
        raise RejectedError("an event must be a non-empty mapping", code="bad_event")
    fields: dict[str, str] = {}
    types: dict[str, str] = {}
    for name, value in event.items():
        if not isinstance(name, str) or not name or name in _RESERVED_EVENT_FIELDS:
            raise RejectedError(f"bad event field name {name!r}", code="bad_event")
        if isinstance(value, str):
            fields[name] = value
        elif isinstance(value, bool):
            fields[name], types[name] = ("true" if value else "false"), "b"
        elif isinstance(value, int):
            fields[name], types[name] = str(value), "i"
        elif isinstance(value, float):
            fields[name], types[name] = repr(value), "f"
        else:
            raise RejectedError(
                f"event field {name!r} must be str, int, float or bool, not "
                f"{type(value).__name__}",
                code="bad_event",
            )
    if types:
        fields[_EVENT_TYPES] = json.dumps(types, separators=(",", ":"))
    return fields


def _decode_event(event_id: str, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        types = json.loads(fields.pop(_EVENT_TYPES, "{}"))
    except ValueError as exc:
        raise MalformedMessageError(f"event {event_id} has a bad type map") from exc
    out: dict[str, Any] = dict(fields)
    try:
        for name, tag in types.items():
            if name not in fields:
                continue
            if tag == "b":
                out[name] = fields[name] == "true"
            elif tag == "i":
                out[name] = int(fields[name])
            elif tag == "f":
                out[name] = float(fields[name])
    except (ValueError, AttributeError) as exc:
        raise MalformedMessageError(f"event {event_id} has a bad value: {exc}") from exc
    out["event_id"] = event_id
    return out


def _pairs(flat: Sequence[Any]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise RejectedError(f"{kind} must be a non-empty string", code="bad_request")
    return value


def _check_blob(entity_id: str, blob: bytes) -> bytes:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise RejectedError(f"checkpoint of {entity_id!r} must be bytes", code="bad_request")
    return bytes(blob)


def _stamp(cmd: Command, clock: Clock) -> Command:
    """Give a fresh command its creation time if the caller left it at 0."""
    if cmd.created_ts:
        return cmd
    now = clock.time()
    return dataclasses.replace(cmd, created_ts=now, updated_ts=cmd.updated_ts or now)


def _submit_call(keys: StoreKeys, cmd: Command, maxlen: int) -> tuple[list[str], list[Any]]:
    script_keys = [keys.command(cmd.command_id), keys.journal]
    if cmd.idempotency_key:
        script_keys.append(keys.idempotency(cmd.caller, cmd.target, cmd.idempotency_key))
    args: list[Any] = [keys.command_prefix, maxlen, IDEMPOTENCY_TTL_S, cmd.command_id, cmd.target]
    for name, value in cmd.to_fields().items():
        args += [name, value]
    return script_keys, args


def _submit_result(cmd: Command, reply: Any, retried: bool) -> tuple[Command, bool]:
    try:
        code, flat = int(reply[0]), reply[1]
    except (TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"unexpected submit reply {reply!r}") from exc
    if code == 1:
        return cmd, True
    existing = Command.from_fields(_pairs(flat))
    # Same id already stored: after a retry it is our own lost first attempt.
    return existing, (code == 2 and retried)


def _update_args(status: CommandStatus, error: str, ts: float, retried: bool,
                 stamps: Mapping[str, float] | None = None) -> list[Any]:
    args: list[Any] = [status.value, repr(float(ts)), error, TERMINAL_TTL_S,
                       "1" if retried else "0"]
    for name, value in (stamps or {}).items():
        args += [name, repr(float(value))]
    return args


def _check_stamps(stamps: Mapping[str, float] | None) -> dict[str, float]:
    """Timestamps a status move may record: names from ``STAMPS``, finite and >= 0."""
    out: dict[str, float] = {}
    for name, value in (stamps or {}).items():
        if name not in STAMPS:
            raise RejectedError(f"{name!r} is not a command timestamp "
                                f"({', '.join(sorted(STAMPS))})", code="bad_command")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0):
            raise RejectedError(f"command {name} must be finite and >= 0", code="bad_command")
        out[name] = float(value)
    return out


def _check_all_stamps(
    stamps: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, dict[str, float]]:
    return {_check_id("command id", cid): _check_stamps(s) for cid, s in (stamps or {}).items()}


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _check_url(url: str) -> None:
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"bad redis URL {_redact(url)!r}: {exc}") from exc


# -- health and error mapping -------------------------------------------------------------------
_AUTH_ERRORS: tuple[type[Exception], ...] = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.AuthenticationWrongNumberOfArgsError,
    rex.NoPermissionError,
    rex.ExternalAuthProviderError,
)
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    rex.ConnectionError,  # includes BusyLoadingError (the server is loading its AOF)
    rex.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def _classify(exc: Exception, op: str) -> CommandpostError | None:
    """The project error for ``exc``, or None when it is connection-level (worth a retry)."""
    if isinstance(exc, _AUTH_ERRORS):
        return AuthError(f"redis refused {op}: {exc}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return None
    # The server is up but cannot write (maxmemory, a replica, a failing disk): not retried.
    cannot_write = isinstance(exc, (rex.OutOfMemoryError, rex.ReadOnlyError, OSError))
    if cannot_write or str(exc).startswith("MISCONF"):
        return StoreUnavailableError(f"redis cannot apply {op}: {exc}")
    return ProtocolError(f"redis error during {op}: {exc}")


class _Guard:
    """Health tracking, error mapping and retry timing shared by the Redis stores.

    Logs once when the store flips unhealthy and once when it recovers.
    """

    def __init__(self, where: str, policy: RetryPolicy) -> None:
        self.where = where
        self.policy = policy
        self.healthy = False
        self.last_error = ""
        self._known = False
        self._lock = threading.Lock()  # the sync store is shared by Flask's threads

    def succeeded(self) -> None:
        if self.healthy:
            return
        with self._lock:
            if self.healthy:
                return
            if self._known:
                log.info("store %s recovered", self.where)
            else:
                log.info("store %s reachable", self.where)
            self.healthy = True
            self._known = True

    def failed(self, error: str) -> None:
        with self._lock:
            self.last_error = error
            if self.healthy or not self._known:
                log.warning("store %s unavailable: %s", self.where, error)
            self.healthy = False
            self._known = True

    def backoff(self, exc: Exception, op: str, attempt: int, elapsed: float,
                deadline_s: float | None = None) -> float:
        """Seconds to wait before the next attempt, or raise the mapped error.

        ``deadline_s`` overrides the policy's deadline for this operation.
        """
        error = _classify(exc, op)
        if error is not None:
            if isinstance(error, (StoreUnavailableError, AuthError)):
                self.failed(str(error))
            raise error from exc
        self.failed(f"{op}: {type(exc).__name__}: {exc}")
        limit = self.policy.deadline_s if deadline_s is None else deadline_s
        remaining = limit - elapsed
        if remaining <= 0:
            raise StoreUnavailableError(
                f"redis at {self.where} unreachable: {op} failed {attempt} time(s) "
                f"over {elapsed:.1f} s: {exc}"
            ) from exc
        return min(self.policy.delay(attempt), remaining)


# -- the interface ------------------------------------------------------------------------------
class StateStore(Protocol):
    """What entities, hosts and supervisors need from the store (async)."""

    @property
    def healthy(self) -> bool:
        """True when the last contact with the store succeeded."""

    @property
    def last_error(self) -> str:
        """The last connection-level failure, for operators ("" if none yet)."""

    async def connect(self) -> None:
        """Reach the store, retrying within the policy's deadline."""

    async def close(self) -> None:
        """Release connections; the store may be connected again later."""

    async def ping(self) -> float:
        """Seconds of one round trip."""

    async def save_checkpoints(self, blobs: Mapping[str, bytes]) -> None:
        """Store each entity's checkpoint blob, replacing the previous one."""

    async def load_checkpoints(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Checkpoints of ``ids``; ids without one are missing from the result."""

    async def delete_checkpoints(self, ids: Sequence[str]) -> None:
        """Forget the checkpoints of ``ids`` (absent ones are ignored)."""

    async def append_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Append flat events (str, int, float or bool values) to the event stream."""

    async def recent_events(
        self, count: int = 100, *, entity: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest events first, each with its ``event_id``."""

    async def submit_command(self, cmd: Command) -> tuple[Command, bool]:
        """Journal ``cmd`` durably, or return the command its idempotency key names."""

    async def submit_commands(self, cmds: Sequence[Command]) -> list[tuple[Command, bool]]:
        """:meth:`submit_command` for each of ``cmds``, in one round trip."""

    async def get_command(self, command_id: str) -> Command:
        """The stored command; :class:`KeyError` when there is none."""

    async def get_commands(self, ids: Sequence[str]) -> dict[str, Command]:
        """The stored commands among ``ids``."""

    async def update_command(
        self, command_id: str, status: CommandStatus, *, error: str = "", ts: float | None = None,
        stamps: Mapping[str, float] | None = None,
    ) -> bool:
        """Move a command forward; whether it moved.

        ``stamps`` are path timestamps (``Command`` fields named in
        :data:`~runtime.commands.STAMPS`) recorded only if it moved.
        """

    async def update_commands(
        self, updates: Sequence[tuple[str, CommandStatus, str]], *,
        stamps: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[bool]:
        """Several ``(command_id, status, error)`` moves in one round trip.

        ``stamps`` maps a command id to the timestamps its move records.
        """

    async def read_journal(
        self, after_id: str, count: int = 500, block_ms: int = 0
    ) -> list[tuple[str, str, str]]:
        """Journal entries ``(stream_id, command_id, target)`` after ``after_id``."""

    async def get_cursor(self, name: str) -> str:
        """The journal id consumer ``name`` processed last ("0" when none)."""

    async def set_cursor(self, name: str, stream_id: str) -> None:
        """Record the journal id consumer ``name`` processed last."""

    async def hold_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take lease ``name`` for ``owner``, or renew it when ``owner`` holds it, for
        ``ttl_ms``; False when another owner holds it. A lease its owner stops
        renewing lapses by itself after ``ttl_ms``: at most one owner at any time."""

    async def release_lease(self, name: str, owner: str) -> bool:
        """Give lease ``name`` up if ``owner`` holds it (True when it did)."""

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        """Who holds each of these leases now (the lapsed and free ones left out)."""

    async def put_blob(self, name: str, data: bytes) -> None:
        """Store a small named blob."""

    async def get_blob(self, name: str) -> bytes | None:
        """A named blob, or None when it was never stored."""

    async def hset_many(self, name: str, mapping: Mapping[str, str]) -> None:
        """Set fields of the named hash."""

    async def hgetall(self, name: str) -> dict[str, str]:
        """Every field of the named hash ({} when absent)."""

    async def read_event_group(
        self, group: str, count: int = 500, block_ms: int = 0
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events for consumer group ``group`` (created at the stream's start on first use).

        Events delivered before and not acknowledged come first (a consumer that died
        before acknowledging sees them again), then new ones; ``(stream_id, event)``.
        """

    async def ack_event_group(self, group: str, ids: Sequence[str]) -> None:
        """Acknowledge events of ``group``: they are not delivered to it again."""


def _check_updates(
    updates: Sequence[tuple[str, CommandStatus, str]],
) -> list[tuple[str, CommandStatus, str]]:
    out = []
    for command_id, status, error in updates:
        out.append((_check_id("command id", command_id), _status(status), error))
    return out


def _status(status: CommandStatus | str) -> CommandStatus:
    try:
        return CommandStatus(status)
    except ValueError as exc:
        raise RejectedError(f"unknown command status {status!r}", code="bad_command") from exc


def _check_read(count: int, block_ms: int) -> None:
    if count <= 0 or block_ms < 0:
        raise RejectedError("count must be > 0 and block_ms >= 0", code="bad_request")


# -- Redis, async -------------------------------------------------------------------------------
#: Take or renew a lease: set it when free or already ours, with its time to live.
_HOLD_LEASE: Final = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: Give a lease up only when it is still ours.
_RELEASE_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore:
    """The state store on Redis through ``redis.asyncio``.

    The short socket timeouts make a dead server visible in about a second;
    connection-level failures are retried by ``retry`` and then raise
    :class:`StoreUnavailableError`. The client is created on first use in the
    running event loop and released by :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "cp",
        retry: RetryPolicy = RetryPolicy(),
        clock: Clock | None = None,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        health_check_interval: int = 2,
        retention_s: float = STREAM_RETENTION_S,
        journal_maxlen: int = JOURNAL_MAXLEN,
    ) -> None:
        _check_url(url)
        if socket_timeout <= 0 or connect_timeout <= 0 or journal_maxlen <= 0:
            raise ConfigError("store timeouts and stream lengths must be > 0")
        self._retention_s = _check_retention(retention_s)
        self.url = url
        self.keys = StoreKeys(namespace)
        self._clock: Clock = clock or SystemClock()
        self._guard = _Guard(_redact(url), retry)
        self._socket_timeout = socket_timeout
        # Per consumer group: whether its own unacknowledged entries may remain to re-read.
        self._group_pending: dict[str, bool] = {}
        self._connect_timeout = connect_timeout
        self._health_check_interval = health_check_interval
        self._journal_maxlen = journal_maxlen
        self._redis: aioredis.Redis | None = None
        self._submit_script: Any = None
        self._update_script: Any = None

    @property
    def healthy(self) -> bool:
        return self._guard.healthy

    @property
    def last_error(self) -> str:
        return self._guard.last_error

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._connect_timeout,
                health_check_interval=self._health_check_interval,
                decode_responses=False,
                # Our RetryPolicy is the only retry layer: redis-py's own would multiply it.
                retry=AsyncRetry(NoBackoff(), 0),
            )
            self._submit_script = client.register_script(SUBMIT_COMMAND_LUA)
            self._update_script = client.register_script(UPDATE_COMMAND_LUA)
            self._redis = client
        return self._redis

    async def _call(self, op: str, fn: Callable[[int], Awaitable[T]]) -> T:
        """Run ``fn(attempt)`` under the retry policy, mapping every redis error."""
        started = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await fn(attempt)
            except (rex.RedisError, OSError) as exc:
                elapsed = self._clock.monotonic() - started
                delay = self._guard.backoff(exc, op, attempt, elapsed)
                await self._clock.sleep(delay)
                continue
            self._guard.succeeded()
            return result

    async def connect(self) -> None:
        """Reach Redis (within the retry deadline) and warn if its replies are not durable."""
        await self.ping()
        client = self._client()

        async def once(_: int) -> Any:
            try:
                return await client.config_get("append*")
            except rex.ResponseError as exc:
                # Managed servers often disable CONFIG: durability cannot be checked there.
                log.debug("store %s: cannot read the AOF settings: %s", self._guard.where, exc)
                return None

        config = await self._call("connect", once)
        if config is not None:
            settings = {_text(k): _text(v) for k, v in config.items()}
            if settings.get("appendonly") != "yes" or settings.get("appendfsync") != "always":
                log.warning(
                    "store %s runs with appendonly=%s appendfsync=%s: an accepted command "
                    "may be lost if Redis crashes (needs appendonly yes, appendfsync always)",
                    self._guard.where, settings.get("appendonly"), settings.get("appendfsync"),
                )

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(rex.RedisError, OSError):
                await client.aclose()

    async def ping(self) -> float:
        client = self._client()

        async def once(_: int) -> float:
            start = time.perf_counter()
            await client.ping()
            return time.perf_counter() - start

        return await self._call("ping", once)

    async def save_checkpoints(self, blobs: Mapping[str, bytes]) -> None:
        items = [(_check_id("entity id", k), _check_blob(k, v)) for k, v in blobs.items()]
        client = self._client()
        for chunk in _chunks(items, SAVE_CHUNK):

            async def once(_: int, chunk: Sequence[tuple[str, bytes]] = chunk) -> None:
                # One MSET per chunk: one command and one reply, not one per entity.
                await client.mset({self.keys.checkpoint(eid): blob for eid, blob in chunk})

            await self._call("save_checkpoints", once)

    async def load_checkpoints(self, ids: Sequence[str]) -> dict[str, bytes]:
        wanted = [_check_id("entity id", i) for i in ids]
        if not wanted:
            return {}
        client = self._client()

        async def once(_: int) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for chunk in _chunks(wanted, LOAD_CHUNK):
                pipe.mget([self.keys.checkpoint(i) for i in chunk])
            return await pipe.execute()

        replies = await self._call("load_checkpoints", once)
        values = [v for reply in replies for v in reply]
        return {i: v for i, v in zip(wanted, values, strict=True) if v is not None}

    async def delete_checkpoints(self, ids: Sequence[str]) -> None:
        wanted = [_check_id("entity id", i) for i in ids]
        if not wanted:
            return
        client = self._client()

        async def once(_: int) -> None:
            pipe = client.pipeline(transaction=False)
            for chunk in _chunks(wanted, LOAD_CHUNK):
                pipe.delete(*(self.keys.checkpoint(i) for i in chunk))
            await pipe.execute()

        await self._call("delete_checkpoints", once)

    async def append_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Append events, trimming those older than the retention.

        After a connection-level retry some may be stored twice.
        """
        encoded = [_encode_event(e) for e in events]
        client = self._client()
        for chunk in _chunks(encoded, EVENT_CHUNK):

            async def once(_: int, chunk: Sequence[dict[str, str]] = chunk) -> None:
                oldest = _min_id(self._clock.time(), self._retention_s)
                pipe = client.pipeline(transaction=False)
                for fields in chunk:
                    pipe.xadd(self.keys.events, fields,  # type: ignore[arg-type]
                              minid=oldest, approximate=True)
                await pipe.execute()

            await self._call("append_events", once)

    async def recent_events(
        self, count: int = 100, *, entity: str | None = None
    ) -> list[dict[str, Any]]:
        _check_read(count, 0)
        client = self._client()
        window = count if entity is None else max(count, EVENT_FILTER_WINDOW)

        async def once(_: int) -> list[Any]:
            rows: Any = await client.xrevrange(self.keys.events, count=window)
            return list(rows or ())

        return _filter_events(await self._call("recent_events", once), count, entity)

    async def submit_command(self, cmd: Command) -> tuple[Command, bool]:
        """Journal ``cmd`` atomically, or return the command that holds its idempotency key.

        Returns ``(command, created)``: ``created`` is False when an earlier
        command of the same ``(caller, target, idempotency_key)`` (or the same
        id) is returned instead. A fresh command with ``created_ts`` 0 is
        stamped with the store's clock. The reply means the command is durable.
        """
        cmd = _stamp(cmd, self._clock)
        keys, args = _submit_call(self.keys, cmd, self._journal_maxlen)
        self._client()
        tries = 0

        async def once(attempt: int) -> Any:
            nonlocal tries
            tries = attempt
            return await self._submit_script(keys=keys, args=args)

        reply = await self._call("submit_command", once)
        return _submit_result(cmd, reply, tries > 1)

    async def submit_commands(self, cmds: Sequence[Command]) -> list[tuple[Command, bool]]:
        """Journal ``cmds`` as :meth:`submit_command` does each, pipelined in one round trip
        (each command's script is atomic; a retry after a lost reply finds its own)."""
        if not cmds:
            return []
        stamped = [_stamp(c, self._clock) for c in cmds]
        calls = [_submit_call(self.keys, c, self._journal_maxlen) for c in stamped]
        client = self._client()
        tries = 0

        async def once(attempt: int) -> list[Any]:
            nonlocal tries
            tries = attempt
            pipe = client.pipeline(transaction=False)
            for keys, args in calls:
                await self._submit_script(keys=keys, args=args, client=pipe)
            replies: list[Any] = await pipe.execute()
            return replies

        replies = await self._call("submit_commands", once)
        return [_submit_result(c, r, tries > 1) for c, r in zip(stamped, replies, strict=True)]

    async def get_command(self, command_id: str) -> Command:
        """The stored command; raises :class:`KeyError` when there is none."""
        found = await self.get_commands([command_id])
        if command_id not in found:
            raise KeyError(command_id)
        return found[command_id]

    async def get_commands(self, ids: Sequence[str]) -> dict[str, Command]:
        wanted = [_check_id("command id", i) for i in ids]
        if not wanted:
            return {}
        client = self._client()

        async def once(_: int) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for command_id in wanted:
                pipe.hgetall(self.keys.command(command_id))
            return await pipe.execute()

        replies = await self._call("get_commands", once)
        return {i: Command.from_fields(r) for i, r in zip(wanted, replies, strict=True) if r}

    async def update_command(
        self,
        command_id: str,
        status: CommandStatus,
        *,
        error: str = "",
        ts: float | None = None,
        stamps: Mapping[str, float] | None = None,
    ) -> bool:
        """Move a command forward if its lifecycle allows; whether it moved.

        ``stamps`` (path timestamps) are recorded with the move. Raises
        :class:`KeyError` for an unknown command.
        """
        command_id = _check_id("command id", command_id)
        status = _status(status)
        extra = _check_stamps(stamps)
        stamp = self._clock.time() if ts is None else ts
        key = self.keys.command(command_id)
        self._client()

        async def once(attempt: int) -> Any:
            args = _update_args(status, error, stamp, attempt > 1, extra)
            return await self._update_script(keys=[key], args=args)

        moved = int(await self._call("update_command", once))
        if moved < 0:
            raise KeyError(command_id)
        return moved == 1

    async def update_commands(
        self, updates: Sequence[tuple[str, CommandStatus, str]], *,
        stamps: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[bool]:
        """Several moves in one round trip; an unknown command id reports False.

        ``stamps`` maps a command id to path timestamps recorded with its move.
        """
        checked = _check_updates(updates)
        extra = _check_all_stamps(stamps)
        if not checked:
            return []
        client = self._client()
        stamp = self._clock.time()

        async def once(attempt: int) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for command_id, status, error in checked:
                args = _update_args(status, error, stamp, attempt > 1, extra.get(command_id))
                await self._update_script(
                    keys=[self.keys.command(command_id)], args=args, client=pipe
                )
            return await pipe.execute()

        replies = await self._call("update_commands", once)
        return [int(r) == 1 for r in replies]

    async def read_journal(
        self, after_id: str, count: int = 500, block_ms: int = 0
    ) -> list[tuple[str, str, str]]:
        """Journal entries after ``after_id`` ("0" = from the start), oldest first.

        With ``block_ms`` > 0, waits up to that long for an entry when there is
        none yet (in slices shorter than the socket timeout).
        """
        _stream_id(after_id)
        _check_read(count, block_ms)
        client = self._client()
        slice_ms = max(1, int(self._socket_timeout * 500))
        deadline = self._clock.monotonic() + block_ms / 1000
        while True:
            remaining_ms = int((deadline - self._clock.monotonic()) * 1000)
            block = min(slice_ms, remaining_ms) if remaining_ms > 0 else None

            async def once(_: int, block: int | None = block) -> Any:
                return await client.xread({self.keys.journal: after_id}, count=count, block=block)

            reply = await self._call("read_journal", once)
            entries = _journal_entries(reply)
            if entries or block is None:
                return entries

    async def get_cursor(self, name: str) -> str:
        key = self.keys.cursor(_check_id("cursor name", name))
        client = self._client()

        async def once(_: int) -> Any:
            return await client.get(key)

        value = await self._call("get_cursor", once)
        return "0" if value is None else _text(value)

    async def set_cursor(self, name: str, stream_id: str) -> None:
        key = self.keys.cursor(_check_id("cursor name", name))
        _stream_id(stream_id)
        client = self._client()

        async def once(_: int) -> None:
            await client.set(key, stream_id)

        await self._call("set_cursor", once)

    async def hold_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        key = self.keys.lease(_check_id("lease name", name))
        client = self._client()

        async def once(_: int) -> bool:
            return bool(await client.eval(_HOLD_LEASE, 1, key, owner, max(1, int(ttl_ms))))

        held: bool = await self._call("hold_lease", once)
        return held

    async def release_lease(self, name: str, owner: str) -> bool:
        key = self.keys.lease(_check_id("lease name", name))
        client = self._client()

        async def once(_: int) -> bool:
            return bool(await client.eval(_RELEASE_LEASE, 1, key, owner))

        released: bool = await self._call("release_lease", once)
        return released

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        keys = [self.keys.lease(_check_id("lease name", n)) for n in names]
        client = self._client()

        async def once(_: int) -> list[Any]:
            got: list[Any] = await client.mget(keys)
            return got

        values = await self._call("lease_owners", once)
        return {n: (v.decode() if isinstance(v, bytes) else str(v))
                for n, v in zip(names, values, strict=True) if v is not None}

    async def put_blob(self, name: str, data: bytes) -> None:
        key = self.keys.blob(_check_id("blob name", name))
        blob = _check_blob(name, data)
        client = self._client()

        async def once(_: int) -> None:
            await client.set(key, blob)

        await self._call("put_blob", once)

    async def get_blob(self, name: str) -> bytes | None:
        key = self.keys.blob(_check_id("blob name", name))
        client = self._client()

        async def once(_: int) -> Any:
            return await client.get(key)

        value = await self._call("get_blob", once)
        return None if value is None else bytes(value)

    async def hset_many(self, name: str, mapping: Mapping[str, str]) -> None:
        key = self.keys.hash(_check_id("hash name", name))
        fields = _check_hash(mapping)
        if not fields:
            return
        client = self._client()

        async def once(_: int) -> None:
            await client.hset(key, mapping=fields)  # type: ignore[arg-type]

        await self._call("hset_many", once)

    async def hgetall(self, name: str) -> dict[str, str]:
        key = self.keys.hash(_check_id("hash name", name))
        client = self._client()

        async def once(_: int) -> Any:
            return await client.hgetall(key)

        raw = await self._call("hgetall", once)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def read_event_group(
        self, group: str, count: int = 500, block_ms: int = 0
    ) -> list[tuple[str, dict[str, Any]]]:
        _check_id("group name", group)
        _check_read(count, block_ms)
        client = self._client()
        key = self.keys.events
        pending = self._group_pending.setdefault(group, True)

        async def once(_: int) -> Any:
            try:
                await client.xgroup_create(key, group, id="0", mkstream=True)
            except aioredis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            # Our own unacknowledged entries first ("0"), then new ones (">").
            start = "0" if pending else ">"
            block = None if pending or block_ms <= 0 else min(
                block_ms, max(1, int(self._socket_timeout * 500)))
            return await client.xreadgroup(group, group, {key: start}, count=count, block=block)

        reply = await self._call("read_event_group", once)
        rows = [(_text(raw_id), fields) for _stream, got in reply or () for raw_id, fields in got]
        if pending and not rows:
            self._group_pending[group] = False
        out: list[tuple[str, dict[str, Any]]] = []
        for stream_id, fields in rows:
            if not fields:
                continue  # trimmed away while pending: nothing left to deliver
            out.append((stream_id, _decode_event(stream_id, fields)))
        if pending and rows and not out:
            # Only trimmed entries were pending: acknowledge them and move on.
            await self.ack_event_group(group, [r for r, _ in rows])
        return out

    async def ack_event_group(self, group: str, ids: Sequence[str]) -> None:
        _check_id("group name", group)
        if not ids:
            return
        for i in ids:
            _stream_id(i)
        wanted = list(ids)
        client = self._client()

        async def once(_: int) -> None:
            await client.xack(self.keys.events, group, *wanted)

        await self._call("ack_event_group", once)


def _check_hash(mapping: Mapping[str, str]) -> dict[str, str]:
    for k, v in mapping.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise RejectedError("hash fields and values must be strings", code="bad_request")
    return dict(mapping)


def _filter_events(rows: Sequence[Any], count: int, entity: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    wanted = None if entity is None else entity.encode()
    for raw_id, fields in rows:
        if wanted is not None and fields.get(b"entity") != wanted:
            continue
        out.append(_decode_event(_text(raw_id), fields))
        if len(out) >= count:
            break
    return out


def _command_ids(rows: Sequence[Any], target: bytes, count: int) -> list[str]:
    """The command ids of the first ``count`` journal entries for ``target``."""
    return [_text(f[b"command_id"]) for _, f in rows or ()
            if f.get(b"target") == target and b"command_id" in f][:count]


def _journal_entries(reply: Any) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for _stream, rows in reply or ():
        for raw_id, fields in rows:
            out.append(
                (
                    _text(raw_id),
                    _text(fields.get(b"command_id", b"")),
                    _text(fields.get(b"target", b"")),
                )
            )
    return out


# -- Redis, sync (the Flask admin) --------------------------------------------------------------
Row = tuple[bytes, dict[bytes, bytes]]


class _StreamTail:
    """The newest ``size`` entries of a stream, kept in memory and indexed by the value
    of their ``field`` (an entity's events, a target's journal entries), for the pages
    that want an equipment's few newest among thousands.

    Each read brings it up to date with one ``XRANGE`` of what came since the
    last entry it holds (stream ids only grow), instead of reading the whole
    window again; when more came than the window holds, the window is read
    afresh. The read can go in a pipeline with others (:meth:`ask`, then
    :meth:`absorb` its reply). Safe to share between threads: what another
    thread brought over meanwhile is not added twice.
    """

    def __init__(self, key: str, size: int, field: bytes) -> None:
        self.key = key
        self.size = size
        self.field = field
        self._rows: deque[Row] = deque()
        self._by: dict[bytes, deque[Row]] = {}
        self._last: bytes | None = None
        self._lock = threading.Lock()

    def ask(self, pipe: Any) -> bytes | None:
        """Queue on ``pipe`` the read that brings the window up to date; returns what
        :meth:`absorb` needs back with its reply."""
        with self._lock:
            after = self._last
        if after is None:
            pipe.xrevrange(self.key, count=self.size)
        else:
            pipe.xrange(self.key, min=b"(" + after, count=self.size)
        return after

    def absorb(self, after: bytes | None, reply: Any, client: redis.Redis,
               oldest: tuple[int, int] = (0, 0)) -> None:
        """Take in ``reply`` (to the read :meth:`ask` queued), then let go of the entries
        older than the stream id ``oldest``; when more came than the window holds, the
        newest window is read afresh (one more round trip)."""
        rows: list[Row] = list(reply or ())
        with self._lock:
            if after is None:
                rows.reverse()
            elif len(rows) >= self.size:
                fresh: Any = client.xrevrange(self.key, count=self.size)
                rows = list(fresh or ())
                rows.reverse()
                self._rows.clear()
                self._by.clear()
                self._last = None
            if self._last is not None:
                last = _id_key(self._last)
                skip = 0
                while skip < len(rows) and _id_key(rows[skip][0]) <= last:
                    skip += 1
                rows = rows[skip:]
            for row in rows:
                if len(self._rows) >= self.size:
                    self._forget_oldest()
                self._rows.append(row)
                value = row[1].get(self.field)
                if value is not None:
                    self._by.setdefault(value, deque()).append(row)
            if self._rows:
                self._last = bytes(self._rows[-1][0])
            while self._rows and _id_key(self._rows[0][0]) < oldest:
                self._forget_oldest()

    def _forget_oldest(self) -> None:
        row = self._rows.popleft()
        value = row[1].get(self.field)
        same = self._by.get(value) if value is not None else None
        if same:
            same.popleft()  # the oldest of the window is the oldest of its value
            if not same and value is not None:
                del self._by[value]

    def newest(self, value: bytes, count: int) -> list[Row]:
        """The newest ``count`` entries whose ``field`` is ``value``, newest first."""
        with self._lock:
            same = self._by.get(value)
            if not same:
                return []
            return [same[-1 - i] for i in range(min(count, len(same)))]

    def refresh(self, client: redis.Redis, oldest: tuple[int, int] = (0, 0)) -> None:
        """Bring the window up to date (one round trip to Redis)."""
        pipe = client.pipeline(transaction=False)
        after = self.ask(pipe)
        self.absorb(after, pipe.execute()[0], client, oldest)


@dataclass(frozen=True)
class EquipmentPage:
    """What an equipment's page shows, as stored: its line of a hash (the hosts' view),
    its checkpoint, a blob (a read model), its recent events and commands."""

    line: str | None
    checkpoint: bytes | None
    blob: bytes | None
    events: list[dict[str, Any]]
    commands: list[Command]


class SyncStore:
    """The subset of the store the threaded admin needs, over a blocking ``redis.Redis``.

    Same keys, scripts, retry policy and error mapping as :class:`RedisStore`;
    safe to share between threads (redis-py's pool is thread-safe).
    """

    def __init__(
        self,
        url: str,
        namespace: str = "cp",
        retry: RetryPolicy = RetryPolicy(),
        clock: Clock | None = None,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        health_check_interval: int = 2,
        retention_s: float = STREAM_RETENTION_S,
        journal_maxlen: int = JOURNAL_MAXLEN,
    ) -> None:
        _check_url(url)
        self.url = url
        self.keys = StoreKeys(namespace)
        self._clock: Clock = clock or SystemClock()
        self._guard = _Guard(_redact(url), retry)
        self._retention_s = _check_retention(retention_s)
        self._journal_maxlen = journal_maxlen
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=health_check_interval,
            decode_responses=False,
            retry=SyncRetry(NoBackoff(), 0),
        )
        self._submit_script = self._redis.register_script(SUBMIT_COMMAND_LUA)
        self._event_tail = _StreamTail(self.keys.events, EVENT_FILTER_WINDOW, b"entity")
        self._journal_tail = _StreamTail(self.keys.journal, RECENT_COMMANDS_SCAN, b"target")

    @property
    def healthy(self) -> bool:
        return self._guard.healthy

    @property
    def last_error(self) -> str:
        return self._guard.last_error

    def _call(self, op: str, fn: Callable[[int], T], deadline_s: float | None = None) -> T:
        # Real time here: the admin's threads cannot await an injected clock.
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn(attempt)
            except (rex.RedisError, OSError) as exc:
                delay = self._guard.backoff(exc, op, attempt, time.monotonic() - started,
                                            deadline_s)
                time.sleep(delay)
                continue
            self._guard.succeeded()
            return result

    def close(self) -> None:
        """Release the connection pool."""
        with contextlib.suppress(rex.RedisError, OSError):
            self._redis.close()

    def ping(self) -> float:
        """Seconds of one round trip."""

        def once(_: int) -> float:
            start = time.perf_counter()
            self._redis.ping()
            return time.perf_counter() - start

        return self._call("ping", once)

    def submit_command(self, cmd: Command, *,
                       deadline_s: float | None = None) -> tuple[Command, bool]:
        """As :meth:`RedisStore.submit_command`.

        ``deadline_s`` bounds the retries of this call (the policy's deadline
        otherwise): an HTTP caller wants a prompt 503, not a 30 s wait.
        """
        cmd = _stamp(cmd, self._clock)
        keys, args = _submit_call(self.keys, cmd, self._journal_maxlen)
        tries = 0

        def once(attempt: int) -> Any:
            nonlocal tries
            tries = attempt
            return self._submit_script(keys=keys, args=args)

        reply = self._call("submit_command", once, deadline_s)
        return _submit_result(cmd, reply, tries > 1)

    def get_command(self, command_id: str) -> Command:
        """The stored command; raises :class:`KeyError` when there is none."""
        key = self.keys.command(_check_id("command id", command_id))
        raw = self._call("get_command", lambda _: self._redis.hgetall(key))
        if not raw:
            raise KeyError(command_id)
        return Command.from_fields(raw)

    def recent_events(self, count: int = 100, *, entity: str | None = None) -> list[dict[str, Any]]:
        """As :meth:`RedisStore.recent_events`.

        An entity's events are looked for in the newest :data:`EVENT_FILTER_WINDOW`
        events, which this store keeps (:class:`_StreamTail`): a read brings over
        only the events that came since the last one.
        """
        _check_read(count, 0)
        if entity is None or count > EVENT_FILTER_WINDOW:
            rows: Any = self._call(
                "recent_events", lambda _: self._redis.xrevrange(self.keys.events, count=count))
            return _filter_events(rows, count, entity)
        # The stream drops what is past its retention as it grows: so does the window.
        oldest = _id_key(_min_id(self._clock.time(), self._retention_s))
        self._call("recent_events", lambda _: self._event_tail.refresh(self._redis, oldest))
        return _filter_events(self._event_tail.newest(entity.encode(), count), count, entity)

    def append_audit(self, entry: Mapping[str, Any], *, deadline_s: float | None = None) -> str:
        """Append one flat entry (str, int, float or bool values) to the audit stream.

        Entries older than the retention are trimmed on the way. Returns the
        entry's stream id; ``deadline_s`` bounds the retries as in
        :meth:`submit_command`.
        """
        fields = _encode_event(entry)

        def once(_: int) -> Any:
            oldest = _min_id(self._clock.time(), self._retention_s)
            return self._redis.xadd(self.keys.audit, fields,  # type: ignore[arg-type]
                                    minid=oldest, approximate=True)

        return _text(self._call("append_audit", once, deadline_s))

    def page(
        self,
        stream: Literal["events", "audit"],
        *,
        limit: int = 100,
        before: str | None = None,
        since: float | None = None,
        match: Mapping[str, str] | None = None,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        scan: int = PAGE_SCAN,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a stream, newest first: ``(entries, cursor)``.

        Entries are those older than the stream id ``before`` (all when None)
        and at or after ``since`` (epoch seconds, by stream id), whose fields
        equal ``match`` (compared before decoding) and that ``keep`` accepts,
        each decoded with its ``event_id``. At most ``scan`` entries are read:
        a filter that matches little cannot make one request read the whole
        stream. ``cursor`` is the ``before`` of the next page, None once the
        range is exhausted; a page may come back short, or even empty, with a
        cursor when the scan stopped first.
        """
        _check_read(limit, 0)
        _check_read(scan, 0)
        key = {"events": self.keys.events, "audit": self.keys.audit}[stream]
        top = None if before is None else _stream_id(before)
        if since is not None and (not math.isfinite(since) or since < 0):
            raise RejectedError("since must be a finite number of seconds >= 0",
                                code="bad_request")
        since_ms = None if since is None else since * 1000.0
        if top == (0, 0) or (since_ms is not None and not since_ms <= MAX_STREAM_ID_PART):
            return [], None  # nothing comes before the first id, nor after the last
        high = "+" if top is None else "(" + _id_text(top)
        low = "-" if since_ms is None else f"{int(since_ms)}-0"
        wanted = {k.encode(): v.encode() for k, v in (match or {}).items()}
        out: list[dict[str, Any]] = []
        scanned = 0
        while scanned < scan:
            count = min(PAGE_BATCH, scan - scanned)

            def once(_: int, high: str = high, count: int = count) -> Any:
                return self._redis.xrevrange(key, max=high, min=low, count=count)

            rows: Any = self._call(f"page_{stream}", once)
            for raw_id, fields in rows or ():
                scanned += 1
                stream_id = _text(raw_id)
                high = "(" + stream_id
                if any(fields.get(k) != v for k, v in wanted.items()):
                    continue
                entry = _decode_event(stream_id, fields)
                if keep is not None and not keep(entry):
                    continue
                out.append(entry)
                if len(out) >= limit:
                    return out, stream_id
            if len(rows or ()) < count:
                return out, None
        return out, high[1:]

    def load_checkpoints(self, ids: Sequence[str]) -> dict[str, bytes]:
        """As :meth:`RedisStore.load_checkpoints`."""
        wanted = [_check_id("entity id", i) for i in ids]
        if not wanted:
            return {}

        def once(_: int) -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for chunk in _chunks(wanted, LOAD_CHUNK):
                pipe.mget([self.keys.checkpoint(i) for i in chunk])
            return pipe.execute()

        values = [v for reply in self._call("load_checkpoints", once) for v in reply]
        return {i: v for i, v in zip(wanted, values, strict=True) if v is not None}

    def get_blob(self, name: str) -> bytes | None:
        """A named blob, or None when it was never stored."""
        key = self.keys.blob(_check_id("blob name", name))
        value: Any = self._call("get_blob", lambda _: self._redis.get(key))
        return None if value is None else bytes(value)

    def get_blobs(self, names: Sequence[str]) -> dict[str, bytes]:
        """The named blobs that are stored, by name, in pipelined reads (energy reports)."""
        wanted = [_check_id("blob name", n) for n in names]
        if not wanted:
            return {}

        def once(_: int) -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for chunk in _chunks(wanted, LOAD_CHUNK):
                pipe.mget([self.keys.blob(n) for n in chunk])
            return pipe.execute()

        values = [v for reply in self._call("get_blobs", once) for v in reply]
        return {n: bytes(v) for n, v in zip(wanted, values, strict=True) if v is not None}

    def hgetall(self, name: str) -> dict[str, str]:
        """Every field of the named hash ({} when absent)."""
        key = self.keys.hash(_check_id("hash name", name))
        raw: Any = self._call("hgetall", lambda _: self._redis.hgetall(key))
        return {_text(k): _text(v) for k, v in raw.items()}

    def hmget(self, name: str, fields: Sequence[str]) -> dict[str, str]:
        """The named hash's ``fields`` that it holds (one round trip)."""
        key = self.keys.hash(_check_id("hash name", name))
        wanted = list(fields)
        if not wanted:
            return {}
        raw: Any = self._call("hmget", lambda _: self._redis.hmget(key, wanted))
        return {f: _text(v) for f, v in zip(wanted, raw, strict=True) if v is not None}

    def lines_and_checkpoints(self, name: str, ids: Sequence[str]
                              ) -> tuple[dict[str, str], dict[str, bytes]]:
        """``ids``' fields of the named hash and their checkpoints, those stored, in one
        round trip (a page of equipment: its lines of the hosts' view and its twins)."""
        key = self.keys.hash(_check_id("hash name", name))
        wanted = [_check_id("entity id", i) for i in ids]
        if not wanted:
            return {}, {}

        def once(_: int) -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(key, wanted)
            for chunk in _chunks(wanted, LOAD_CHUNK):
                pipe.mget([self.keys.checkpoint(i) for i in chunk])
            return pipe.execute()

        replies = self._call("lines_and_checkpoints", once)
        lines = {i: _text(v) for i, v in zip(wanted, replies[0], strict=True) if v is not None}
        blobs = [v for reply in replies[1:] for v in reply]
        return lines, {i: bytes(v) for i, v in zip(wanted, blobs, strict=True) if v is not None}

    def recent_commands(self, target: str, count: int = 10, *,
                        scan: int = RECENT_COMMANDS_SCAN) -> list[Command]:
        """The last ``count`` commands journaled for ``target``, newest first.

        Looks at the last ``scan`` journal entries only (one round trip for the
        entries, one for the commands): an equipment page's recent history.
        The default window is kept by this store (:class:`_StreamTail`), which
        brings over only the entries journaled since the last read.
        """
        _check_read(count, 0)
        _check_read(scan, 0)
        wanted = target.encode()
        rows: Any
        if scan == RECENT_COMMANDS_SCAN:
            self._call("recent_commands", lambda _: self._journal_tail.refresh(self._redis))
            rows = self._journal_tail.newest(wanted, count)
        else:
            rows = self._call("recent_commands",
                              lambda _: self._redis.xrevrange(self.keys.journal, count=scan))
        ids = _command_ids(rows, wanted, count)
        if not ids:
            return []

        def once(_: int) -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for command_id in ids:
                pipe.hgetall(self.keys.command(command_id))
            return pipe.execute()

        return [Command.from_fields(raw) for raw in self._call("recent_commands", once) if raw]

    def equipment_page(self, entity_id: str, *, view: str, blob: str | None = None,
                       events: int = 20, commands: int = 10) -> EquipmentPage:
        """One equipment's page in two round trips: its line of the hash ``view``, its
        checkpoint, the blob ``blob`` (when one is named), its last ``events`` events (as
        :meth:`recent_events`) and, once their ids are known, its last ``commands``
        commands (as :meth:`recent_commands`)."""
        _check_read(events, 0)
        _check_read(commands, 0)
        ident = _check_id("entity id", entity_id)
        hash_key = self.keys.hash(_check_id("hash name", view))
        blob_key = None if blob is None else self.keys.blob(_check_id("blob name", blob))
        oldest = _id_key(_min_id(self._clock.time(), self._retention_s))

        def reads(_: int) -> tuple[Any, ...]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(hash_key, ident)
            pipe.get(self.keys.checkpoint(ident))
            if blob_key is not None:
                pipe.get(blob_key)
            after_events = self._event_tail.ask(pipe)
            after_journal = self._journal_tail.ask(pipe)
            replies = pipe.execute()
            if blob_key is None:
                replies.insert(2, None)
            line, checkpoint, value, new_events, new_journal = replies
            self._event_tail.absorb(after_events, new_events, self._redis, oldest)
            self._journal_tail.absorb(after_journal, new_journal, self._redis)
            return line, checkpoint, value

        line, checkpoint, value = self._call("equipment_page", reads)
        wanted = ident.encode()
        ids = _command_ids(self._journal_tail.newest(wanted, commands), wanted, commands)
        found: list[Command] = []
        if ids:
            def records(_: int) -> list[Any]:
                pipe = self._redis.pipeline(transaction=False)
                for command_id in ids:
                    pipe.hgetall(self.keys.command(command_id))
                return pipe.execute()

            found = [Command.from_fields(raw) for raw in self._call("equipment_page", records)
                     if raw]
        return EquipmentPage(
            line=None if line is None else _text(line),
            checkpoint=None if checkpoint is None else bytes(checkpoint),
            blob=None if value is None else bytes(value),
            events=_filter_events(self._event_tail.newest(wanted, events), events, ident),
            commands=found)


# -- in memory (unit tests) ---------------------------------------------------------------------
class _StreamIds:
    """Redis-style ``ms-seq`` ids, strictly increasing even when the clock stands still."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = (0, 0)

    def next(self) -> tuple[int, int]:
        ms = int(self._clock.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self._last


def _id_text(stream_id: tuple[int, int]) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


class MemoryStore:
    """A dict-backed :class:`StateStore` with the Redis store's semantics, for unit tests.

    The event stream is trimmed exactly at its retention and the journal at its
    maximum length; idempotency keys and finished commands expire on the
    injected clock. ``available = False``
    makes every operation raise :class:`StoreUnavailableError`, and
    :meth:`fail_next` makes only the next ``n`` operations fail.
    """

    def __init__(
        self,
        url: str = "memory://",
        namespace: str = "cp",
        retry: RetryPolicy = RetryPolicy(),
        clock: Clock | None = None,
        *,
        retention_s: float = STREAM_RETENTION_S,
        journal_maxlen: int = JOURNAL_MAXLEN,
    ) -> None:
        self._retention_s = _check_retention(retention_s)
        self.url = url
        self.keys = StoreKeys(namespace)
        self.retry = retry
        self.available = True
        self._clock: Clock = clock or SystemClock()
        self._guard = _Guard(url, retry)
        self._failures = 0
        self._ids = _StreamIds(self._clock)
        self._checkpoints: dict[str, bytes] = {}
        self._events: deque[tuple[tuple[int, int], dict[str, str]]] = deque()
        self._group_acked: dict[str, set[tuple[int, int]]] = {}
        self._group_last: dict[str, tuple[int, int]] = {}
        self._journal: deque[tuple[tuple[int, int], str, str]] = deque(maxlen=journal_maxlen)
        self._commands: dict[str, tuple[dict[str, str | bytes], float]] = {}  # fields, expiry
        self._idempotency: dict[str, tuple[str, float]] = {}  # command id, expiry
        self._cursors: dict[str, str] = {}
        self._blobs: dict[str, bytes] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, monotonic expiry)
        self._lease_clock: Clock = clock or SystemClock()
        self._hashes: dict[str, dict[str, str]] = {}
        self._journal_waiters: list[asyncio.Future[None]] = []

    @property
    def healthy(self) -> bool:
        return self._guard.healthy

    @property
    def last_error(self) -> str:
        return self._guard.last_error

    def fail_next(self, n: int = 1) -> None:
        """Make the next ``n`` operations raise :class:`StoreUnavailableError`."""
        self._failures += n

    def _enter(self, op: str) -> None:
        if not self.available or self._failures > 0:
            if self.available:
                self._failures -= 1
            error = StoreUnavailableError(f"memory store unavailable during {op}")
            self._guard.failed(str(error))
            raise error
        self._guard.succeeded()

    def _live_command(self, command_id: str) -> dict[str, str | bytes] | None:
        entry = self._commands.get(command_id)
        if entry is None:
            return None
        fields, expiry = entry
        if expiry and expiry <= self._clock.time():
            del self._commands[command_id]
            return None
        return fields

    async def connect(self) -> None:
        self._enter("connect")

    async def close(self) -> None:
        return None

    async def ping(self) -> float:
        self._enter("ping")
        return 0.0

    async def save_checkpoints(self, blobs: Mapping[str, bytes]) -> None:
        items = {_check_id("entity id", k): _check_blob(k, v) for k, v in blobs.items()}
        self._enter("save_checkpoints")
        self._checkpoints.update(items)

    async def load_checkpoints(self, ids: Sequence[str]) -> dict[str, bytes]:
        wanted = [_check_id("entity id", i) for i in ids]
        self._enter("load_checkpoints")
        return {i: self._checkpoints[i] for i in wanted if i in self._checkpoints}

    async def delete_checkpoints(self, ids: Sequence[str]) -> None:
        wanted = [_check_id("entity id", i) for i in ids]
        self._enter("delete_checkpoints")
        for i in wanted:
            self._checkpoints.pop(i, None)

    async def append_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        encoded = [_encode_event(e) for e in events]
        self._enter("append_events")
        for fields in encoded:
            self._events.append((self._ids.next(), fields))
        oldest = _stream_id(_min_id(self._clock.time(), self._retention_s))
        while self._events and self._events[0][0] < oldest:
            self._events.popleft()

    async def recent_events(
        self, count: int = 100, *, entity: str | None = None
    ) -> list[dict[str, Any]]:
        _check_read(count, 0)
        self._enter("recent_events")
        window = count if entity is None else max(count, EVENT_FILTER_WINDOW)
        out: list[dict[str, Any]] = []
        for scanned, (stream_id, fields) in enumerate(reversed(self._events)):
            if scanned >= window or len(out) >= count:
                break
            if entity is not None and fields.get("entity") != entity:
                continue
            out.append(_decode_event(_id_text(stream_id), fields))
        return out

    async def submit_commands(self, cmds: Sequence[Command]) -> list[tuple[Command, bool]]:
        return [await self.submit_command(c) for c in cmds]

    async def submit_command(self, cmd: Command) -> tuple[Command, bool]:
        cmd = _stamp(cmd, self._clock)
        self._enter("submit_command")
        same = self._live_command(cmd.command_id)
        if same is not None:
            return Command.from_fields(same), False
        idem = ""
        if cmd.idempotency_key:
            idem = self.keys.idempotency(cmd.caller, cmd.target, cmd.idempotency_key)
            held = self._idempotency.get(idem)
            if held is not None and held[1] > self._clock.time():
                existing = self._live_command(held[0])
                if existing is not None:
                    return Command.from_fields(existing), False
        self._commands[cmd.command_id] = (cmd.to_fields(), 0.0)
        self._journal.append((self._ids.next(), cmd.command_id, cmd.target))
        if idem:
            self._idempotency[idem] = (cmd.command_id, self._clock.time() + IDEMPOTENCY_TTL_S)
        for waiter in self._journal_waiters:
            if not waiter.done():
                waiter.set_result(None)
        return cmd, True

    async def get_command(self, command_id: str) -> Command:
        found = await self.get_commands([command_id])
        if command_id not in found:
            raise KeyError(command_id)
        return found[command_id]

    async def get_commands(self, ids: Sequence[str]) -> dict[str, Command]:
        wanted = [_check_id("command id", i) for i in ids]
        self._enter("get_commands")
        out: dict[str, Command] = {}
        for command_id in wanted:
            fields = self._live_command(command_id)
            if fields is not None:
                out[command_id] = Command.from_fields(fields)
        return out

    def _move(self, command_id: str, status: CommandStatus, error: str, ts: float,
              stamps: Mapping[str, float] | None = None) -> int:
        fields = self._live_command(command_id)
        if fields is None:
            return -1
        old = CommandStatus(_text(fields["status"]))
        if status not in TRANSITIONS[old]:
            return 0
        fields.update(status=status.value, updated_ts=repr(float(ts)), error=error)
        fields.update({name: repr(value) for name, value in (stamps or {}).items()})
        if status in TERMINAL:
            self._commands[command_id] = (fields, self._clock.time() + TERMINAL_TTL_S)
        return 1

    async def update_command(
        self,
        command_id: str,
        status: CommandStatus,
        *,
        error: str = "",
        ts: float | None = None,
        stamps: Mapping[str, float] | None = None,
    ) -> bool:
        command_id = _check_id("command id", command_id)
        status = _status(status)
        extra = _check_stamps(stamps)
        self._enter("update_command")
        moved = self._move(command_id, status, error, self._clock.time() if ts is None else ts,
                           extra)
        if moved < 0:
            raise KeyError(command_id)
        return moved == 1

    async def update_commands(
        self, updates: Sequence[tuple[str, CommandStatus, str]], *,
        stamps: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[bool]:
        checked = _check_updates(updates)
        extra = _check_all_stamps(stamps)
        if not checked:
            return []
        self._enter("update_commands")
        now = self._clock.time()
        return [self._move(i, status, error, now, extra.get(i)) == 1
                for i, status, error in checked]

    async def read_journal(
        self, after_id: str, count: int = 500, block_ms: int = 0
    ) -> list[tuple[str, str, str]]:
        after = _stream_id(after_id)
        _check_read(count, block_ms)
        self._enter("read_journal")
        entries = self._journal_after(after, count)
        if entries or block_ms == 0:
            return entries
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._journal_waiters.append(waiter)
        timer = asyncio.ensure_future(self._clock.sleep(block_ms / 1000))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._journal_waiters.remove(waiter)
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        return self._journal_after(after, count)

    def _journal_after(self, after: tuple[int, int], count: int) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for stream_id, command_id, target in self._journal:
            if stream_id > after:
                out.append((_id_text(stream_id), command_id, target))
                if len(out) >= count:
                    break
        return out

    async def get_cursor(self, name: str) -> str:
        _check_id("cursor name", name)
        self._enter("get_cursor")
        return self._cursors.get(name, "0")

    async def set_cursor(self, name: str, stream_id: str) -> None:
        _check_id("cursor name", name)
        _stream_id(stream_id)
        self._enter("set_cursor")
        self._cursors[name] = stream_id

    async def hold_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        _check_id("lease name", name)
        self._enter("hold_lease")
        now = self._lease_clock.monotonic()
        held = self._leases.get(name)
        if held is not None and held[1] > now and held[0] != owner:
            return False
        self._leases[name] = (owner, now + max(1, int(ttl_ms)) / 1000)
        return True

    async def release_lease(self, name: str, owner: str) -> bool:
        _check_id("lease name", name)
        self._enter("release_lease")
        held = self._leases.get(name)
        if held is None or held[0] != owner or held[1] <= self._lease_clock.monotonic():
            return False
        del self._leases[name]
        return True

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        self._enter("lease_owners")
        now = self._lease_clock.monotonic()
        return {n: held[0] for n in names
                if (held := self._leases.get(n)) is not None and held[1] > now}

    async def put_blob(self, name: str, data: bytes) -> None:
        _check_id("blob name", name)
        blob = _check_blob(name, data)
        self._enter("put_blob")
        self._blobs[name] = blob

    async def get_blob(self, name: str) -> bytes | None:
        _check_id("blob name", name)
        self._enter("get_blob")
        return self._blobs.get(name)

    async def hset_many(self, name: str, mapping: Mapping[str, str]) -> None:
        _check_id("hash name", name)
        fields = _check_hash(mapping)
        self._enter("hset_many")
        if fields:
            self._hashes.setdefault(name, {}).update(fields)

    async def hgetall(self, name: str) -> dict[str, str]:
        _check_id("hash name", name)
        self._enter("hgetall")
        return dict(self._hashes.get(name, {}))

    async def read_event_group(
        self, group: str, count: int = 500, block_ms: int = 0
    ) -> list[tuple[str, dict[str, Any]]]:
        _check_id("group name", group)
        _check_read(count, block_ms)
        self._enter("read_event_group")
        # As XREADGROUP BLOCK: wait for an event (checked every 10 ms) up to block_ms.
        # Without a wait, a consumer looping on an empty stream would never yield.
        waited = 0.0
        while True:
            out = self._group_rows(group, count)
            if out or waited * 1000 >= block_ms:
                return out
            await self._clock.sleep(0.01)
            waited += 0.01

    def _group_rows(self, group: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        acked = self._group_acked.setdefault(group, set())
        delivered = self._group_last.get(group, (0, 0))
        out: list[tuple[str, dict[str, Any]]] = []
        pending = [(i, f) for i, f in self._events if i <= delivered and i not in acked]
        fresh = [(i, f) for i, f in self._events if i > delivered]
        for ident, fields in (pending or fresh)[:count]:
            sid = f"{ident[0]}-{ident[1]}"
            out.append((sid, _decode_event(sid, fields)))
            if ident > delivered:
                self._group_last[group] = ident
        return out

    async def ack_event_group(self, group: str, ids: Sequence[str]) -> None:
        _check_id("group name", group)
        self._enter("ack_event_group")
        acked = self._group_acked.setdefault(group, set())
        for sid in ids:
            acked.add(_stream_id(sid))
