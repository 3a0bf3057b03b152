"""Login throttling: failed logins counted over a sliding window, password checks bounded.

Each password check costs a scrypt (16 MiB, tens of milliseconds: the point
of it), so a client guessing passwords could both try many and keep the
server's cores busy. :class:`LoginThrottle` counts failed logins per name
and per client address over the last :data:`WINDOW_S` seconds; past
:data:`MAX_NAME_FAILURES` for a name, or :data:`MAX_ADDRESS_FAILURES` from
an address, a login is refused at once (429, with the seconds until the
oldest failure leaves the window) without checking the password, right or
wrong. Nothing is locked for good: the window slides, and a refused attempt
is not a failure, so it does not push the end further. A success clears the
name's failures (not the address's: one valid account must not buy an
address more guesses at others). At most :data:`MAX_CONCURRENT_CHECKS`
password checks run at once; a login that finds no slot within
:data:`SLOT_WAIT_S` is refused (503) rather than queued::

    throttle = LoginThrottle()
    wait = throttle.retry_after(name, address)   # None, or seconds to wait: refuse
    with throttle.slot() as granted:             # False: too many checks at once
        ...                                      # check the password
    throttle.failed(name, address)               # or throttle.succeeded(name, address)

An IPv6 client is counted by its /64, which one host usually holds whole.
The tables are bounded (:data:`MAX_TRACKED` names and addresses each, the
least recently failed forgotten first), so a spray of names cannot grow
them without end. Counts live in memory, per process, like the sessions.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

__all__ = [
    "MAX_ADDRESS_FAILURES",
    "MAX_CONCURRENT_CHECKS",
    "MAX_NAME_FAILURES",
    "MAX_TRACKED",
    "SLOT_WAIT_S",
    "WINDOW_S",
    "LoginThrottle",
    "address_key",
]

WINDOW_S: Final = 300.0
MAX_NAME_FAILURES: Final = 5
MAX_ADDRESS_FAILURES: Final = 20
#: Password checks at once: each takes a core and 16 MiB while it runs.
MAX_CONCURRENT_CHECKS: Final = 2
#: How long a login waits for a check slot before it is refused.
SLOT_WAIT_S: Final = 0.5
MAX_TRACKED: Final = 10_000
_MAX_NAME_KEY: Final = 256


def address_key(address: str | None) -> str:
    """The key a client address is counted under: itself, or its /64 for IPv6."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:_MAX_NAME_KEY]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Window:
    """Failure times per key over a sliding window, at most ``max_keys`` keys."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._times[key]
            return None
        return times

    def retry_after(self, key: str, now: float) -> float | None:
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return None
        # Only the last ``limit`` failures are kept: once the oldest leaves the window.
        return times[0] + self.window_s - now

    def add(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            times = self._times[key] = deque(maxlen=self.limit)
            while len(self._times) > self.max_keys:
                self._times.popitem(last=False)
        else:
            self._times.move_to_end(key)
        times.append(now)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)

    def __len__(self) -> int:
        return len(self._times)


class LoginThrottle:
    """Failed logins per name and per address, and the password checks running; thread-safe.

    The limits default to the module's constants; ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        max_name_failures: int = MAX_NAME_FAILURES,
        max_address_failures: int = MAX_ADDRESS_FAILURES,
        max_concurrent: int = MAX_CONCURRENT_CHECKS,
        slot_wait_s: float = SLOT_WAIT_S,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or min(max_name_failures, max_address_failures, max_concurrent,
                                max_tracked) < 1 or slot_wait_s < 0:
            raise ValueError("throttle limits must be positive")
        self._lock = threading.Lock()
        self._names = _Window(max_name_failures, window_s, max_tracked)
        self._addresses = _Window(max_address_failures, window_s, max_tracked)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._slot_wait_s = slot_wait_s
        self._clock = clock

    def retry_after(self, name: str, address: str | None) -> float | None:
        """Seconds before ``name`` may try again from ``address``; None when he may now."""
        now = self._clock()
        with self._lock:
            waits = [w for w in (self._names.retry_after(name[:_MAX_NAME_KEY], now),
                                 self._addresses.retry_after(address_key(address), now))
                     if w is not None]
        return max(waits) if waits else None

    def failed(self, name: str, address: str | None) -> None:
        """Count a failed login of ``name`` from ``address``."""
        now = self._clock()
        with self._lock:
            self._names.add(name[:_MAX_NAME_KEY], now)
            self._addresses.add(address_key(address), now)

    def succeeded(self, name: str, address: str | None) -> None:
        """Forget ``name``'s failures (``address``'s stay counted)."""
        with self._lock:
            self._names.clear(name[:_MAX_NAME_KEY])

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Hold one of the password-check slots for the block; yields False when none
        freed up within the wait (the caller refuses the login then)."""
        granted = self._slots.acquire(timeout=self._slot_wait_s)
        try:
            yield granted
        finally:
            if granted:
                self._slots.release()

    def tracked(self) -> tuple[int, int]:
        """How many names and addresses have failures counted (bounded by ``max_tracked``)."""
        with self._lock:
            return len(self._names), len(self._addresses)
