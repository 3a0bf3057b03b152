"""Serving the admin web with waitress from a background thread.

    server = AdminServer(app, *parse_listen("127.0.0.1:0"))
    server.start()              # returns once the socket is bound
    print(server.url)           # http://127.0.0.1:41873
    server.stop()               # in-flight requests finish, thread joined

or ``with AdminServer(app) as server: ...``.

waitress reads a whole request body (to a temporary file past a few hundred
kilobytes) before it calls the app, and by default takes bodies up to 1 GiB:
the server refuses, with a 413 and before reading it, any body longer than
the app's ``MAX_CONTENT_LENGTH`` (:data:`DEFAULT_MAX_BODY_BYTES` when the
app sets none), whether its length is declared or it comes chunked.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from types import TracebackType
from typing import Any, Final, Self

from flask import Flask
from waitress import create_server, wasyncore
from waitress.server import BaseWSGIServer
from waitress.trigger import trigger

from runtime.errors import ConfigError

log: Final = logging.getLogger("commandpost.admin_web")

THREADS: Final = 8
#: The longest request body served when the app sets no ``MAX_CONTENT_LENGTH``.
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
# How long stop() lets running requests finish, then waits for the loop thread.
REQUEST_GRACE_S: Final = 5.0
JOIN_TIMEOUT_S: Final = 10.0

_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_listen(s: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8080"`` for IPv6) as ``(host, port)``; port 0 means any.

    Raises :class:`ConfigError` on anything else.
    """
    if s.startswith("["):
        host, bracket, rest = s[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"listen address must be [IPV6]:PORT: {s!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"not an IPv6 address in {s!r}") from None
    else:
        host, colon, port_text = s.rpartition(":")
        if not colon or not host:
            raise ConfigError(f"listen address must be HOST:PORT: {s!r}")
        if ":" in host:
            raise ConfigError(f"an IPv6 listen address goes in brackets, [{host}]:PORT: {s!r}")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ConfigError(f"bad host in listen address {s!r}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"listen port must be a number: {s!r}")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"listen port must be 0-65535: {s!r}")
    return host, port


class AdminServer:
    """A waitress server for ``app`` on a daemon thread; not restartable once stopped."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 8080) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0-65535: {port}")
        self._app = app
        self._host = host
        self._port = port
        self._map: dict[int, Any] = {}
        self._server: Any = None
        self._wake: Any = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        limit = app.config.get("MAX_CONTENT_LENGTH")
        self._max_body = int(limit) if limit else DEFAULT_MAX_BODY_BYTES

    @property
    def max_body_bytes(self) -> int:
        """The longest request body served; a longer one is answered 413 unread."""
        return self._max_body

    @property
    def host(self) -> str:
        """The address the server listens on (the first one, if the name has several)."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the one asked for before)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port/`` without the trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the serving thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind the socket and serve from a daemon thread; returns once bound.

        Raises :class:`ConfigError` when the address cannot be bound (in use,
        not local, unknown name).
        """
        if self._thread is not None or self._stopped:
            raise RuntimeError("an AdminServer starts once")
        try:
            server = create_server(
                self._app,
                map=self._map,
                host=self._host,
                port=self._port,
                threads=THREADS,
                ident="commandpost",
                # waitress refuses a body of this many bytes or more.
                max_request_body_size=self._max_body + 1,
            )
        except (OSError, ValueError) as exc:
            # A name resolving to several addresses may have bound some already.
            wasyncore.close_all(self._map, ignore_all=True)
            raise ConfigError(
                f"admin web cannot listen on {self._host}:{self._port}: {exc}"
            ) from exc
        # Our own trigger in the loop's map: stop() hands it the closing work,
        # which must run on the loop thread that owns every socket.
        self._wake = trigger(self._map)
        self._server = server
        listening = getattr(server, "effective_listen", None) or [
            (server.effective_host, server.effective_port)
        ]
        self._host, self._port = str(listening[0][0]), int(listening[0][1])
        self._thread = threading.Thread(target=self._serve, name="admin-web", daemon=True)
        self._thread.start()
        log.info("admin web listening on %s", self.url)

    def _serve(self) -> None:
        try:
            self._server.run()
        except Exception:
            log.exception("admin web server loop failed")
        finally:
            self._server.task_dispatcher.shutdown(timeout=REQUEST_GRACE_S)

    def stop(self) -> None:
        """Stop accepting, let running requests finish, close everything, join the thread."""
        if self._stopped:
            return
        self._stopped = True
        thread, server, wake = self._thread, self._server, self._wake
        if thread is None:
            return
        try:
            wake.pull_trigger(self._close_listeners)
            server.task_dispatcher.shutdown(timeout=REQUEST_GRACE_S)
            wake.pull_trigger(self._close_all)
        except OSError:
            # The loop already closed its trigger on the way out: nothing left to wake.
            log.debug("admin web loop ended before stop() woke it")
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.error("admin web thread still running %.0f s after stop", JOIN_TIMEOUT_S)
        else:
            log.info("admin web stopped")

    def _close_listeners(self) -> None:
        for dispatcher in list(self._map.values()):
            if isinstance(dispatcher, BaseWSGIServer):
                dispatcher.close()

    def _close_all(self) -> None:
        # An empty map ends the wasyncore loop, and with it the thread.
        wasyncore.close_all(self._map, ignore_all=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
