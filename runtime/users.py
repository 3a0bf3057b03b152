"""Where the admin web's users are kept: one record per user, changed atomically.

A record is a JSON object (:mod:`admin_web.auth` says what it holds: role,
scopes, desks, password hash, token digests, flags, times); this module only
keeps records and the index of API tokens, and never sees a secret in clear.
Key layout, under the store's namespace ``ns`` (beside :mod:`runtime.store`'s)::

    {ns}:users                  set     every user's name
    {ns}:user:{name}            string  the user's record, JSON
    {ns}:user_token:{digest}    string  -> the name of the user holding the API token whose
                                        SHA-256 is ``digest`` (the record's ``tokens[].digest``)

Every change goes through :meth:`UserRecords.change`, which reads the current
record, lets the caller compute the new one, and writes it only if nobody
changed the record meanwhile (Redis ``WATCH``/``MULTI``; a lock in memory),
trying again otherwise: two admins changing the same user at once both see
their change applied, one after the other, and neither is lost::

    records = RedisUserRecords("redis://127.0.0.1:6379/0")
    records.change("alice", lambda old: {**(old or {}), "role": "viewer"})
    records.get("alice")["role"]                 # "viewer", in every process
    records.name_of_token(digest)                # "alice" if one of her tokens has it
    records.record_of_token(digest)              # her record, in one round trip

Two implementations share that behaviour: :class:`RedisUserRecords` (blocking
``redis``, for the threaded admin web and the ``commandpost user`` command)
and :class:`MemoryUserRecords` for unit tests.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from runtime.errors import ConfigError, ConflictError, ProtocolError
from runtime.store import HTTP_DEADLINE_S, RetryPolicy, _check_url, _Guard, _redact, _text
from runtime.tracking import TrackedReads

__all__ = [
    "HTTP_RETRY",
    "MAX_CHANGE_ATTEMPTS",
    "MemoryUserRecords",
    "RedisUserRecords",
    "UserKeys",
    "UserRecords",
    "token_digests",
]

T = TypeVar("T")
Record = dict[str, Any]

#: An HTTP caller wants a prompt 503 rather than a wait on a Redis that is away: the
#: user behind a request is looked up within the deadline its command has.
HTTP_RETRY: Final = RetryPolicy(deadline_s=HTTP_DEADLINE_S)
#: How many times a change is tried again when another one landed between its read and
#: its write; past that it is refused (ConflictError) rather than looping.
MAX_CHANGE_ATTEMPTS: Final = 50

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The name the token index gives (KEYS[1]) and that user's record (ARGV[1] is the
#: users' key prefix): ``{name, record}``, ``{name}`` when the record is gone, or nil.
_TOKEN_USER_LUA: Final = """
local name = redis.call('GET', KEYS[1])
if not name then return false end
return {name, redis.call('GET', ARGV[1] .. name)}
"""
_DIGEST_RE: Final = re.compile(r"[0-9a-f]{64}")


class UserKeys:
    """The Redis key names of the users (the only place they are spelled)."""

    def __init__(self, namespace: str = "cp") -> None:
        if not namespace or any(c.isspace() for c in namespace):
            raise ConfigError(f"bad store namespace {namespace!r}")
        self.namespace = namespace

    @property
    def names(self) -> str:
        return f"{self.namespace}:users"

    @property
    def user_prefix(self) -> str:
        """What every user's key starts with (the name follows)."""
        return f"{self.namespace}:user:"

    def user(self, name: str) -> str:
        return f"{self.user_prefix}{_check_name(name)}"

    @property
    def token_prefix(self) -> str:
        """What every token index key starts with (the digest follows)."""
        return f"{self.namespace}:user_token:"

    def token(self, digest: str) -> str:
        return f"{self.token_prefix}{digest}"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"user name must be 1-64 of A-Z a-z 0-9 _ . -: {name!r}")
    return name


def token_digests(record: Record | None) -> set[str]:
    """The digests of the API tokens a record holds (its ``tokens[].digest``)."""
    if record is None:
        return set()
    out: set[str] = set()
    for token in record.get("tokens") or ():
        digest = token.get("digest") if isinstance(token, dict) else None
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise ConfigError(f"user {record.get('name')!r}: a token digest must be 64 "
                              "lowercase hex digits")
        out.add(digest)
    return out


def _decode(name: str, raw: bytes | str | None) -> Record | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"user {name}: stored record is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ProtocolError(f"user {name}: stored record is not an object")
    return record


def _encode(record: Record) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


class UserRecords(Protocol):
    """What the user registry needs from where users are kept."""

    def get(self, name: str) -> Record | None:
        """The record of ``name``, or None."""
        ...

    def all(self) -> list[Record]:
        """Every record, ordered by name."""
        ...

    def name_of_token(self, digest: str) -> str | None:
        """The name of the user holding the token of SHA-256 ``digest``, or None."""
        ...

    def record_of_token(self, digest: str) -> Record | None:
        """The record of the user the token index names for ``digest`` (None when it names
        nobody, or a user who is gone); the caller checks that the record holds the token."""
        ...

    def change(self, name: str, update: Callable[[Record | None], Record]) -> Record:
        """Replace ``name``'s record by ``update(current)`` (None when there is none),
        atomically; returns the record written.

        ``update`` may run more than once (when another change landed meanwhile)
        and must not have effects of its own; an exception it raises aborts the
        change and comes out unchanged. Raises :class:`ConfigError` when a token
        digest of the new record belongs to another user, and
        :class:`ConflictError` after :data:`MAX_CHANGE_ATTEMPTS` collisions.
        """
        ...


class MemoryUserRecords:
    """Records in a dict, behind a lock: the registry's unit tests and a lone process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        self._tokens: dict[str, str] = {}

    def get(self, name: str) -> Record | None:
        with self._lock:
            found = self._records.get(name)
            return copy.deepcopy(found) if found is not None else None

    def all(self) -> list[Record]:
        with self._lock:
            return [copy.deepcopy(self._records[n]) for n in sorted(self._records)]

    def name_of_token(self, digest: str) -> str | None:
        with self._lock:
            return self._tokens.get(digest)

    def record_of_token(self, digest: str) -> Record | None:
        with self._lock:
            name = self._tokens.get(digest)
            found = self._records.get(name) if name is not None else None
            return copy.deepcopy(found) if found is not None else None

    def change(self, name: str, update: Callable[[Record | None], Record]) -> Record:
        _check_name(name)
        with self._lock:
            current = self._records.get(name)
            new = update(copy.deepcopy(current))
            old_digests, new_digests = token_digests(current), token_digests(new)
            for digest in new_digests - old_digests:
                if self._tokens.get(digest, name) != name:
                    raise ConfigError(f"user {name}: token already in use")
            for digest in old_digests - new_digests:
                self._tokens.pop(digest, None)
            for digest in new_digests:
                self._tokens[digest] = name
            self._records[name] = copy.deepcopy(new)
            return copy.deepcopy(new)


class RedisUserRecords:
    """Records in Redis (module doc), over a blocking client safe to share between threads.

    Connection failures are retried under ``retry`` (:data:`HTTP_RETRY` by
    default) and then raise :class:`~runtime.errors.StoreUnavailableError`, as
    :mod:`runtime.store` does.

    With ``track`` (the admin web, which looks a user up at every request), the
    records read and the token index are kept in this process until Redis
    reports that a user changed (:class:`runtime.tracking.TrackedReads`): a change
    made here holds at once, one made elsewhere as soon as Redis tells this
    process (milliseconds); while Redis cannot tell, every read goes to it.
    """

    def __init__(self, url: str, namespace: str = "cp", retry: RetryPolicy = HTTP_RETRY, *,
                 socket_timeout: float = 1.0, connect_timeout: float = 1.0,
                 track: bool = False) -> None:
        _check_url(url)
        self.url = url
        self.keys = UserKeys(namespace)
        self._guard = _Guard(_redact(url), retry)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            decode_responses=False, retry=SyncRetry(NoBackoff(), 0),
        )
        self._token_user = self._redis.register_script(_TOKEN_USER_LUA)
        self._tracked: TrackedReads | None = None
        if track:
            self._tracked = TrackedReads(url, [self.keys.user_prefix, self.keys.token_prefix],
                                         whole=True, name=f"users of {_redact(url)}")

    @property
    def healthy(self) -> bool:
        """True when the last contact with Redis succeeded."""
        return self._guard.healthy

    def close(self) -> None:
        """Release the connection pool (and stop following changes)."""
        if self._tracked is not None:
            self._tracked.close()
        with contextlib.suppress(rex.RedisError, OSError):
            self._redis.close()

    def _read(self, key: str, op: str, fn: Callable[[], T]) -> T:
        """``fn``'s reply, kept under ``key`` while tracked (nothing changed since)."""
        if self._tracked is None:
            return self._call(op, fn)
        return self._tracked.get(key, lambda: self._call(op, fn))

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        # Real time here: the admin's threads cannot await an injected clock.
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
            except (rex.RedisError, OSError) as exc:
                time.sleep(self._guard.backoff(exc, op, attempt, time.monotonic() - started))
                continue
            self._guard.succeeded()
            return result

    def get(self, name: str) -> Record | None:
        key = self.keys.user(name)
        raw: Any = self._read(key, "get_user", lambda: self._redis.get(key))
        return _decode(name, raw)

    def all(self) -> list[Record]:
        def once() -> list[Record]:
            names = sorted(_text(n) for n in self._redis.smembers(self.keys.names))
            if not names:
                return []
            raws = self._redis.mget([self.keys.user(n) for n in names])
            return [r for n, raw in zip(names, raws, strict=True)
                    if (r := _decode(n, raw)) is not None]

        return self._call("list_users", once)

    def name_of_token(self, digest: str) -> str | None:
        if not _DIGEST_RE.fullmatch(digest):
            return None
        raw = self._call("token_owner", lambda: self._redis.get(self.keys.token(digest)))
        return raw.decode() if isinstance(raw, bytes) else raw

    def record_of_token(self, digest: str) -> Record | None:
        # Every API request asks this: the index and the record in one round trip.
        if not _DIGEST_RE.fullmatch(digest):
            return None
        key = self.keys.token(digest)
        reply: Any = self._read(key, "token_user", lambda: self._token_user(
            keys=[key], args=[self.keys.user_prefix]))
        if not reply:
            return None
        name = _text(reply[0])
        if not _NAME_RE.fullmatch(name):
            raise ProtocolError(f"the token index names no user: {name[:64]!r}")
        return _decode(name, reply[1] if len(reply) > 1 else None)

    def change(self, name: str, update: Callable[[Record | None], Record]) -> Record:
        key = self.keys.user(name)

        def once() -> Record | None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                current = _decode(name, pipe.get(key))
                new = update(current)
                old_digests, new_digests = token_digests(current), token_digests(new)
                added = sorted(new_digests - old_digests)
                if added:
                    token_keys = [self.keys.token(d) for d in added]
                    pipe.watch(key, *token_keys)  # type: ignore[no-untyped-call]
                    for owner in pipe.mget(token_keys):
                        if owner is not None and _text(owner) != name:
                            raise ConfigError(f"user {name}: token already in use")
                pipe.multi()
                pipe.set(key, _encode(new))
                pipe.sadd(self.keys.names, name)
                for digest in sorted(old_digests - new_digests):
                    pipe.delete(self.keys.token(digest))
                for digest in added:
                    pipe.set(self.keys.token(digest), name)
                try:
                    pipe.execute()
                except rex.WatchError:
                    return None  # changed meanwhile: read it again
                return new

        for _ in range(MAX_CHANGE_ATTEMPTS):
            written = self._call("change_user", once)
            if written is not None:
                if self._tracked is not None:
                    self._tracked.drop()  # holds here at once, not when Redis tells
                return written
        raise ConflictError(f"user {name} is being changed by others; try again",
                            names=[name], code="busy")
