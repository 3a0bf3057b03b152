"""Keys read from Redis, kept in this process until Redis says they changed.

The admin web reads the same few keys for almost every request: the user an
API token names, and the read models the coordinators publish (alarms,
crisis, interventions, fleet). :class:`TrackedReads` keeps what it read of
the keys under some prefixes and drops a key as soon as Redis reports that
it changed, whoever changed it: Redis's server-assisted client-side caching
in broadcasting mode (Redis 6.0 or later), over one connection of its own::

    CLIENT ID                                   -> its id
    CLIENT TRACKING on REDIRECT <id> BCAST PREFIX cp:kv:view:alarms PREFIX …
    SUBSCRIBE __redis__:invalidate              -> the changed keys, as they change

    reads = TrackedReads("redis://127.0.0.1:6379/0", ["cp:kv:view:alarms"])
    blob = reads.get("cp:kv:view:alarms", lambda: client.get("cp:kv:view:alarms"))
    reads.close()

A background thread holds that connection. Until its subscription stands
(at start, after the connection is lost, while Redis is away) nothing is
kept and every :meth:`TrackedReads.get` reads through; when it is lost,
everything kept is dropped. A value read while a change was being reported
is not kept (a generation counter), so a reader never keeps a value older
than the last change reported. What a change leaves stale is the time Redis
takes to tell this process: a few milliseconds; a change this process makes
itself can be dropped at once with :meth:`TrackedReads.drop`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import redis
import redis.exceptions as rex

from runtime.errors import ConfigError

__all__ = ["INVALIDATE_CHANNEL", "TrackedReads"]

log: Final = logging.getLogger("commandpost.tracking")

T = TypeVar("T")

#: Where Redis publishes the keys a tracking client redirected to it should forget.
INVALIDATE_CHANNEL: Final = "__redis__:invalidate"
#: How long the thread waits for a message before it checks on the connection.
POLL_S: Final = 0.25
#: A connection that answered nothing, not even a PING, this long is taken as lost.
SILENCE_S: Final = 10.0
RECONNECT_S: Final = 1.0
#: How long before asking again a Redis that refused tracking (older than 6.0, an ACL).
REFUSED_S: Final = 60.0
#: The most values kept at once (past it, all are dropped and kept again as read).
MAX_KEPT: Final = 1024


class TrackedReads:
    """Values of the keys under ``prefixes``, kept until Redis reports a change (module doc).

    With ``whole`` set, a change of any key drops every value kept (values that
    depend on several keys, such as a user found by his token). Safe to share
    between threads.
    """

    def __init__(self, url: str, prefixes: Iterable[str], *, whole: bool = False,
                 name: str = "reads", socket_timeout: float = 2.0,
                 connect_timeout: float = 1.0) -> None:
        self.prefixes = sorted(set(prefixes))
        if not self.prefixes:
            raise ConfigError("tracked reads need at least one key prefix")
        for a in self.prefixes:
            for b in self.prefixes:
                if a != b and b.startswith(a):
                    # Redis refuses overlapping prefixes in broadcasting mode.
                    raise ConfigError(f"tracked prefixes {a!r} and {b!r} overlap")
        self.name = name
        self._starts = tuple(self.prefixes)
        self._whole = whole
        self._pool = redis.ConnectionPool.from_url(
            url, protocol=2, socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout)
        self._lock = threading.Lock()
        self._kept: dict[str, Any] = {}
        self._generation = 0
        self._live = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tracked-{name}", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        """Whether values are kept (the subscription to their changes stands)."""
        return self._live

    def get(self, key: str, load: Callable[[], T]) -> T:
        """The value kept for ``key``, or ``load()`` (then kept, when nothing changed while
        it read). ``load`` raises as it would without this cache; nothing is kept then, nor
        for a key under none of the prefixes (no change of it would be reported)."""
        if not key.startswith(self._starts):
            return load()
        with self._lock:
            if key in self._kept:
                value: T = self._kept[key]
                return value
            generation, live = self._generation, self._live
        value = load()
        if live:
            with self._lock:
                if self._live and self._generation == generation:
                    if len(self._kept) >= MAX_KEPT:
                        self._kept.clear()
                    self._kept[key] = value
        return value

    def drop(self, keys: Iterable[str] | None = None) -> None:
        """Forget ``keys`` (every value when None): a change this process made."""
        with self._lock:
            self._generation += 1
            if keys is None or self._whole:
                self._kept.clear()
            else:
                for key in keys:
                    self._kept.pop(key, None)

    def close(self) -> None:
        """Stop the thread and drop everything; reads go straight to Redis afterwards."""
        self._stop.set()
        self._thread.join(POLL_S + 2.0)
        with self._lock:
            self._live = False
            self._kept.clear()
        self._pool.disconnect()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        lost = False
        while not self._stop.is_set():
            conn: Any = None
            wait = RECONNECT_S
            try:
                conn = self._pool.make_connection()
                self._subscribe(conn)
                with self._lock:
                    self._kept.clear()
                    self._generation += 1
                    self._live = True
                if lost:
                    log.info("%s: following changes again", self.name)
                lost = False
                self._listen(conn)
            except (rex.RedisError, OSError) as exc:
                if not lost:
                    log.info("%s: not following changes (%s); reading through",
                             self.name, exc)
                lost = True
                if isinstance(exc, rex.ResponseError):
                    wait = REFUSED_S
            finally:
                with self._lock:
                    self._live = False
                    self._kept.clear()
                    self._generation += 1
                if conn is not None:
                    with contextlib.suppress(rex.RedisError, OSError):
                        conn.disconnect()
            self._stop.wait(wait)

    def _subscribe(self, conn: Any) -> None:
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        args: list[Any] = ["CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST"]
        for prefix in self.prefixes:
            args += ["PREFIX", prefix]
        conn.send_command(*args)
        conn.read_response()
        conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
        reply = conn.read_response()
        if not (isinstance(reply, list) and reply and _text(reply[0]) == "subscribe"):
            raise rex.ConnectionError(f"SUBSCRIBE answered {reply!r}")

    def _listen(self, conn: Any) -> None:
        quiet = 0.0
        pinged = False
        while not self._stop.is_set():
            if not conn.can_read(timeout=POLL_S):
                quiet += POLL_S
                if quiet >= SILENCE_S:
                    if pinged:
                        raise rex.ConnectionError(f"no answer in {SILENCE_S:g} s")
                    conn.send_command("PING")
                    pinged, quiet = True, 0.0
                continue
            reply = conn.read_response()
            quiet, pinged = 0.0, False
            if not isinstance(reply, list) or len(reply) < 3 or _text(reply[0]) != "message":
                continue  # the PING's answer
            keys = reply[2]
            if keys is None:
                self.drop()  # a FLUSHDB or FLUSHALL
            else:
                self.drop(_text(k) for k in keys)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
