"""MQTT transport: topics, payload codec and a persistent, self-healing session.

This is the only module that imports aiomqtt; everything above it sees
:class:`MqttSession`, plain ``(topic, payload)`` callbacks and the project's
own errors. A session is one client id with a persistent broker session::

    session = MqttSession("mqtt://127.0.0.1:1883", client_id="host-fleet-0")
    session.on_message(lambda topic, payload: print(topic, len(payload)))
    async with session:
        await session.subscribe("city/+/vehicle/+/telemetry", qos=1)
        await session.publish(topic("dijon", "camera", "cam-1", "cmd"),
                              encode_payload({"command_id": "c1", "action": "set",
                                              "params": {"preset": 3}}), qos=1)

Topics follow CONTRACT.md: ``city/{municipality}/{kind}/{id}/{leaf}`` with the
leaves ``telemetry``, ``event``, ``cmd``, ``ack`` and ``status``. Payloads are
msgpack maps; :func:`decode_payload` checks one against a device profile.

Broker URLs (:func:`parse_url`) carry the account and, for MQTT over TLS, the
certificates: ``mqtt://user:password@host:1883``, or
``mqtts://user:password@host:8883?cafile=/etc/commandpost/ca.pem`` (with
``&certfile=…&keyfile=…`` for a broker that asks for a client certificate).
Passwords never reach a log: :attr:`MqttUrl.redacted` replaces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import aiomqtt

from runtime.clock import Clock, SystemClock
from runtime.envelope import pack, unpack
from runtime.errors import (
    ConfigError,
    DeviceUnavailableError,
    MalformedMessageError,
    ProtocolError,
)

if TYPE_CHECKING:
    from devices.profile import FieldSpec, Profile

__all__ = [
    "LEAVES",
    "MqttSession",
    "MqttUrl",
    "check_field",
    "decode_ack",
    "decode_command",
    "decode_event",
    "decode_payload",
    "decode_status",
    "encode_payload",
    "encode_status",
    "parse_topic",
    "parse_url",
    "topic",
]

_log = logging.getLogger(__name__)

ROOT: Final = "city"
LEAVES: Final = ("telemetry", "event", "cmd", "ack", "status")
DEFAULT_PORT: Final = 1883
DEFAULT_TLS_PORT: Final = 8883
_TLS_FILES: Final = ("cafile", "certfile", "keyfile")
BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
#: How long stop() waits for the broker to close the connection after DISCONNECT.
DISCONNECT_TIMEOUT_S: Final = 2.0
#: A connection that lasted this long resets the backoff to its first step.
STABLE_AFTER_S: Final = 10.0
#: Publishes kept while disconnected; beyond it the oldest is dropped (counted).
DEFAULT_MAX_QUEUED: Final = 10_000
#: Messages the client buffers between the socket and our receive loop.
DEFAULT_MAX_INCOMING: Final = 100_000
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1

MessageCallback = Callable[[str, bytes], None]


# --- topics -----------------------------------------------------------------


def _check_segment(what: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"topic {what} must be a non-empty string")
    if any(ch in value for ch in "/+#\x00"):
        raise ProtocolError(f"topic {what} {value!r} must not contain '/', '+', '#' or NUL")


def topic(municipality: str, kind: str, device_id: str, leaf: str) -> str:
    """``city/{municipality}/{kind}/{device_id}/{leaf}``; ProtocolError on a bad part."""
    for what, value in (("municipality", municipality), ("kind", kind), ("id", device_id)):
        _check_segment(what, value)
    if leaf not in LEAVES:
        raise ProtocolError(f"topic leaf {leaf!r} is not one of {', '.join(LEAVES)}")
    return f"{ROOT}/{municipality}/{kind}/{device_id}/{leaf}"


def parse_topic(name: str) -> tuple[str, str, str, str]:
    """``(municipality, kind, id, leaf)`` of a device topic; ProtocolError when malformed."""
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 5 or parts[0] != ROOT:
        raise ProtocolError(f"topic {name!r} is not {ROOT}/MUNICIPALITY/KIND/ID/LEAF")
    _, municipality, kind, device_id, leaf = parts
    for what, value in (("municipality", municipality), ("kind", kind), ("id", device_id)):
        _check_segment(what, value)
    if leaf not in LEAVES:
        raise ProtocolError(f"topic {name!r}: leaf {leaf!r} is not one of {', '.join(LEAVES)}")
    return municipality, kind, device_id, leaf


# --- payloads ---------------------------------------------------------------


def encode_payload(data: Mapping[str, Any]) -> bytes:
    """msgpack-encode one payload map (telemetry, event, command or ack)."""
    if not isinstance(data, Mapping):
        raise MalformedMessageError("an MQTT payload must be a map")
    return pack(dict(data))


def _as_map(payload: bytes, max_size: int) -> dict[str, Any]:
    data = unpack(payload, max_size=max_size)
    if not isinstance(data, dict):
        raise MalformedMessageError(f"payload is a {type(data).__name__}, not a map")
    for key in data:
        if not isinstance(key, str):
            raise MalformedMessageError(f"payload key {key!r} is not a string")
    return data


def _check_value(spec: FieldSpec, key: str, value: Any) -> Any:
    """The value converted to the field's Python type; MalformedMessageError otherwise."""
    kind = spec.type
    if kind == "bool":
        if not isinstance(value, bool):
            raise MalformedMessageError(f"{key}: expected bool, got {type(value).__name__}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise MalformedMessageError(f"{key}: expected str, got {type(value).__name__}")
        if spec.choices and value not in spec.choices:
            raise MalformedMessageError(
                f"{key}: {value!r} is not one of {', '.join(spec.choices)}"
            )
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MalformedMessageError(f"{key}: expected float, got {type(value).__name__}")
        number: float | int = float(value)
        if not math.isfinite(number):
            raise MalformedMessageError(f"{key}: {value!r} is not a finite number")
    elif kind in ("i32", "u32", "i16", "u16"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedMessageError(f"{key}: expected int, got {type(value).__name__}")
        number = value
    else:
        raise MalformedMessageError(f"{key}: field type {kind!r} cannot travel over MQTT")
    if spec.min is not None and number < spec.min:
        raise MalformedMessageError(f"{key}: {number!r} is below the minimum {spec.min:g}")
    if spec.max is not None and number > spec.max:
        raise MalformedMessageError(f"{key}: {number!r} is above the maximum {spec.max:g}")
    return number


def check_field(spec: FieldSpec, value: Any) -> Any:
    """``value`` validated (type, range, choices) for one profile field, converted.

    Raises :class:`MalformedMessageError`; used for payloads and command params alike.
    """
    return _check_value(spec, spec.key or spec.name, value)


def decode_payload(profile: Profile, payload: bytes) -> dict[str, Any]:
    """Decode a telemetry payload and validate it against ``profile``.

    Every ``required`` field must be present; every known field must have its
    type (an int is accepted for a float and converted), its range and its
    choices. Keys the profile does not know pass through untouched, so a device
    with newer firmware is not dropped. Raises :class:`MalformedMessageError`
    naming the problem: over-size, not msgpack, not a map, missing key, wrong
    type, out of range.
    """
    data = _as_map(payload, profile.max_payload_bytes)
    for spec in profile.fields:
        key = spec.key or spec.name
        if key not in data:
            if spec.required:
                raise MalformedMessageError(f"{profile.name}: missing required key {key!r}")
            continue
        try:
            data[key] = _check_value(spec, key, data[key])
        except MalformedMessageError as exc:
            raise MalformedMessageError(f"{profile.name}: {exc}") from None
    return data


def decode_event(profile: Profile, payload: bytes) -> dict[str, Any]:
    """Decode an event payload ``{"ts", "event", ...}``; ``event`` must be a profile event."""
    data = _as_map(payload, profile.max_payload_bytes)
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise MalformedMessageError(f"{profile.name}: event needs a numeric 'ts'")
    data["ts"] = float(ts)
    event = data.get("event")
    if not isinstance(event, str) or event not in profile.events:
        raise MalformedMessageError(
            f"{profile.name}: event {event!r} is not one of {', '.join(profile.events) or '(none)'}"
        )
    return data


def decode_command(payload: bytes, *, max_size: int = 4096) -> dict[str, Any]:
    """Decode a command ``{"command_id": str, "action": str, "params": map}``."""
    data = _as_map(payload, max_size)
    if not isinstance(data.get("command_id"), str) or not data["command_id"]:
        raise MalformedMessageError("command needs a non-empty string 'command_id'")
    if not isinstance(data.get("action"), str) or not data["action"]:
        raise MalformedMessageError("command needs a non-empty string 'action'")
    params = data.setdefault("params", {})
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise MalformedMessageError("command 'params' must be a map with string keys")
    return data


def decode_ack(payload: bytes, *, max_size: int = 4096) -> dict[str, Any]:
    """Decode an ack ``{"command_id": str, "ok": bool, "ts": float, "error"?: str}``."""
    data = _as_map(payload, max_size)
    if not isinstance(data.get("command_id"), str) or not data["command_id"]:
        raise MalformedMessageError("ack needs a non-empty string 'command_id'")
    if not isinstance(data.get("ok"), bool):
        raise MalformedMessageError("ack needs a boolean 'ok'")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise MalformedMessageError("ack needs a numeric 'ts'")
    data["ts"] = float(ts)
    if "error" in data and not isinstance(data["error"], str):
        raise MalformedMessageError("ack 'error' must be a string")
    return data


STATUS_ONLINE: Final = "online"
STATUS_OFFLINE: Final = "offline"


def encode_status(online: bool) -> bytes:
    """The retained status payload: msgpack ``"online"`` or ``"offline"``."""
    return pack(STATUS_ONLINE if online else STATUS_OFFLINE)


def decode_status(payload: bytes) -> bool:
    """True for ``online``, False for ``offline``.

    Accepts the msgpack string and, since a broker-side will or an operator's
    ``mosquitto_pub`` often carries it, the bare UTF-8 word; anything else is a
    :class:`MalformedMessageError`.
    """
    text: object
    try:
        text = unpack(payload, max_size=64)
    except MalformedMessageError:
        text = None
    if not isinstance(text, str):
        text = payload.decode("utf-8", errors="replace").strip() if len(payload) <= 64 else None
    if text == STATUS_ONLINE:
        return True
    if text == STATUS_OFFLINE:
        return False
    raise MalformedMessageError(f"status payload {payload[:64]!r} is neither online nor offline")


# --- URL --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """A parsed broker URL: ``mqtt[s]://[user[:password]@]host[:port][?TLS files]``.

    ``mqtts`` is MQTT over TLS (port 8883 unless given): the broker's
    certificate is checked against ``cafile`` (else the system's CAs) and its
    host name; ``certfile`` (with ``keyfile`` unless the key is in the same
    file) is the client's certificate, for a broker that asks for one. The
    files are PEM, the key unencrypted (its file's permissions protect it).
    """

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("MQTT URL needs a host")
        if not 0 < self.port <= 65535:
            raise ConfigError(f"MQTT port {self.port} is out of range")
        if not self.tls and (self.cafile or self.certfile or self.keyfile):
            raise ConfigError("MQTT URL: cafile, certfile and keyfile need mqtts://")
        if self.keyfile and not self.certfile:
            raise ConfigError("MQTT URL: a keyfile needs its certfile")

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def redacted(self) -> str:
        """The URL with any password replaced by ``***`` (for logs and the admin API)."""
        auth = ""
        if self.username is not None:
            auth = self.username + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        files = [(k, v) for k, v in (("cafile", self.cafile), ("certfile", self.certfile),
                                     ("keyfile", self.keyfile)) if v]
        query = "?" + urllib.parse.urlencode(files, safe="/") if files else ""
        return f"{self.scheme}://{auth}{host}:{self.port}{query}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``mqtts`` URL (None for ``mqtt``); ConfigError when a
        file cannot be read or is not what it should be."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"MQTT TLS for {self.redacted}: {exc}") from None
        return context


def parse_url(url: str) -> MqttUrl:
    """Parse a broker URL; ConfigError for another scheme, a path, a bad port, an unknown
    query parameter (only ``cafile``, ``certfile`` and ``keyfile``, with ``mqtts``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                       strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"bad MQTT URL: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(
            f"MQTT URL must start with mqtt:// or mqtts://, not {parts.scheme or '(none)'}://")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError("MQTT URL must not carry a path or fragment")
    if not parts.hostname:
        raise ConfigError("MQTT URL needs a host")
    files: dict[str, str] = {}
    for key, value in query:
        if key not in _TLS_FILES:
            raise ConfigError(f"MQTT URL: unknown parameter {key!r} "
                              f"(known: {', '.join(_TLS_FILES)})")
        if key in files or not value:
            raise ConfigError(f"MQTT URL: {key} must be given once, with a path")
        files[key] = value
    tls = parts.scheme == "mqtts"
    unquote = urllib.parse.unquote
    return MqttUrl(
        host=parts.hostname,
        port=port if port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
        cafile=files.get("cafile"),
        certfile=files.get("certfile"),
        keyfile=files.get("keyfile"),
    )


# --- session ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttSession:
    """One persistent MQTT client session that reconnects on its own.

    * ``clean_session=False`` with a stable ``client_id``: the broker keeps the
      QoS 1 subscriptions and queues what arrives while we are away, so a
      replacement process with the same id receives it.
    * Subscriptions are remembered and sent again after every reconnect (the
      broker may have lost the session in a crash).
    * Reconnects wait with jittered, capped exponential backoff (0.1 s doubling
      to 5 s, each wait drawn between half and all of the step). The flip to
      offline is logged once, the recovery once.
    * ``publish`` while disconnected either raises
      :class:`DeviceUnavailableError` (``queue=False``) or keeps the message in
      a bounded outbox (``max_queued``, oldest dropped first and counted in
      ``dropped``) sent in order once the session is back. A QoS 1 publish
      whose connection drops before the broker's PUBACK is treated the same
      way (so it may arrive twice: at-least-once).
    * The will (``(topic, payload)``) is published by the broker, retained at
      QoS 1, when the connection dies without a clean disconnect.
    * Needs a broker that keeps the persistent sessions of its clients
      (mosquitto does, and amqtt 0.12 for clients that authenticate, as every
      client of the embedded broker does; it drops them for anonymous ones).
    * Messages reach the callbacks registered with :meth:`on_message`, called
      in the receive loop; a callback that raises is logged and counted in
      ``callback_errors`` and does not stop the loop.

    Reusable (start, stop, start) but not re-entrant.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        clean_session: bool = False,
        will: tuple[str, bytes] | None = None,
        keepalive: int = 30,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_incoming: int = DEFAULT_MAX_INCOMING,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._url = parse_url(url)
        # Built once, so that a missing or bad certificate file fails here, not in the loop.
        self._tls = self._url.ssl_context()
        if not client_id or not isinstance(client_id, str):
            raise ConfigError("an MQTT session needs a non-empty client_id")
        if keepalive <= 0:
            raise ConfigError(f"keepalive must be positive, not {keepalive}")
        if max_queued < 0 or max_incoming <= 0:
            raise ConfigError("max_queued must be >= 0 and max_incoming > 0")
        self.client_id = client_id
        self._clean_session = clean_session
        self._will = will
        self._keepalive = keepalive
        self._max_incoming = max_incoming
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._subscriptions: dict[str, int] = {}
        self._callbacks: list[MessageCallback] = []
        self._outbox: deque[_Outgoing] = deque(maxlen=max_queued if max_queued else None)
        self._max_queued = max_queued
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy = True  # logging state: an outage is logged once, its end once
        self._down_since = 0.0
        self.last_error = ""
        self.received = 0
        self.published = 0
        self.reconnects = 0
        self.dropped = 0
        self.callback_errors = 0

    # -- life cycle --

    @property
    def url(self) -> str:
        """The broker URL with any password redacted."""
        return self._url.redacted

    @property
    def connected(self) -> bool:
        """Connected, and every remembered subscription re-sent."""
        return self._connected.is_set()

    @property
    def queued(self) -> int:
        """Publishes waiting in the outbox for the connection to come back."""
        return len(self._outbox)

    async def start(self) -> None:
        """Start the background connection; returns at once (see :meth:`wait_connected`)."""
        if self._task is not None and not self._task.done():
            raise ConfigError(f"mqtt[{self.client_id}] is already started")
        self._task = asyncio.create_task(
            self._run(), name=f"mqtt[{self.client_id}].receive_loop"
        )

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until connected; DeviceUnavailableError after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise DeviceUnavailableError(
                f"mqtt[{self.client_id}]: no connection to {self.url} within {timeout:g} s"
                + (f" ({self.last_error})" if self.last_error else "")
            ) from None

    async def stop(self) -> None:
        """Disconnect cleanly (the will is not sent) and end the background task."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # A clean disconnect takes a round trip; if the broker does not close
        # the connection soon, cancel the wait for it as well. Cancelling again
        # also covers Python 3.11's asyncio.wait_for (used inside aiomqtt),
        # which can drop a cancellation that races with its result.
        await asyncio.wait((task,), timeout=DISCONNECT_TIMEOUT_S)
        while not task.done():
            _log.warning("mqtt[%s]: still running %.1f s after stop; cancelling again",
                         self.client_id, DISCONNECT_TIMEOUT_S)
            task.cancel()
            await asyncio.wait((task,), timeout=DISCONNECT_TIMEOUT_S)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # Our own caller is being cancelled: do not absorb it.
            raise asyncio.CancelledError

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.wait_connected()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- traffic --

    def on_message(self, callback: MessageCallback) -> None:
        """Call ``callback(topic, payload)`` for every message received."""
        self._callbacks.append(callback)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected (waiting for the broker's SUBACK), and after every reconnect.

        Raises :class:`ProtocolError` when the broker refuses the filter.
        """
        if qos not in (0, 1, 2):
            raise ConfigError(f"qos must be 0, 1 or 2, not {qos}")
        self._subscriptions[topic_filter] = qos
        client = self._client
        if client is None or not self.connected:
            return
        try:
            granted = await client.subscribe(topic_filter, qos)
        except aiomqtt.MqttError as exc:
            # The connection broke under us: the reconnect re-sends it.
            _log.debug("mqtt[%s]: subscribe %s deferred: %s", self.client_id, topic_filter, exc)
            return
        try:
            self._check_granted(topic_filter, granted)
        except ProtocolError:
            self._subscriptions.pop(topic_filter, None)
            raise

    async def unsubscribe(self, topic_filter: str) -> None:
        """Forget a subscription (and unsubscribe now when connected)."""
        self._subscriptions.pop(topic_filter, None)
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic_filter)

    async def publish(
        self,
        topic_name: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        queue: bool = True,
    ) -> None:
        """Publish one message.

        QoS 1 and 2 wait for the broker's acknowledgement. While disconnected the
        message goes to the bounded outbox (``queue=True``) or
        :class:`DeviceUnavailableError` is raised (``queue=False``).
        """
        if qos not in (0, 1, 2):
            raise ConfigError(f"qos must be 0, 1 or 2, not {qos}")
        message = _Outgoing(topic_name, bytes(payload), qos, retain)
        client = self._client
        if client is not None and self.connected:
            try:
                await self._send(client, message)
            except aiomqtt.MqttError as exc:
                self._note_error(exc)
            else:
                self.published += 1
                return
        if not queue:
            raise DeviceUnavailableError(
                f"mqtt[{self.client_id}]: not connected to {self.url}; {topic_name} not sent"
            )
        self._enqueue(message)

    # -- internals --

    async def _send(self, client: aiomqtt.Client, message: _Outgoing) -> None:
        """Publish on ``client``; MqttError when the connection drops before the broker acks."""
        if message.qos == 0:
            await client.publish(message.topic, message.payload, qos=0, retain=message.retain)
            return
        # aiomqtt would wait out its whole timeout for a PUBACK that a dead
        # connection never brings: give up as soon as the connection is lost.
        lost = self._lost
        publishing = asyncio.ensure_future(
            client.publish(message.topic, message.payload, qos=message.qos,
                           retain=message.retain)
        )
        watching = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((publishing, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not publishing.done():
                publishing.cancel()
        if not publishing.done() or publishing.cancelled():
            raise aiomqtt.MqttError("connection lost before the broker acknowledged")
        publishing.result()

    def _enqueue(self, message: _Outgoing) -> None:
        if self._max_queued == 0:
            self.dropped += 1
            return
        if len(self._outbox) == self._max_queued:
            self.dropped += 1  # deque(maxlen) evicts the oldest
        self._outbox.append(message)

    def _check_granted(self, topic_filter: str, granted: Any) -> None:
        for code in granted if isinstance(granted, (list, tuple)) else ():
            value = getattr(code, "value", code)
            if isinstance(value, int) and value >= 0x80:
                raise ProtocolError(
                    f"mqtt[{self.client_id}]: broker refused subscription {topic_filter!r}"
                )

    def _note_error(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__

    def _make_client(self) -> aiomqtt.Client:
        will = None
        if self._will is not None:
            will = aiomqtt.Will(topic=self._will[0], payload=self._will[1], qos=1, retain=True)
        return aiomqtt.Client(
            self._url.host,
            self._url.port,
            username=self._url.username,
            password=self._url.password,
            identifier=self.client_id,
            tls_context=self._tls,
            clean_session=self._clean_session,
            will=will,
            keepalive=self._keepalive,
            timeout=10.0,
            max_queued_incoming_messages=self._max_incoming,
            logger=_log,
        )

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                # A fresh client per connection: aiomqtt's connection futures are
                # not reset after an unexpected disconnect.
                client = self._make_client()
                self._lost = asyncio.Event()
                connected_at: float | None = None
                try:
                    async with client:
                        self._client = client
                        await self._on_connected(client)
                        connected_at = self._clock.monotonic()
                        await self._receive(client)
                except aiomqtt.MqttError as exc:
                    self._note_error(exc)
                except Exception as exc:
                    # A bug must not end the session for good: log it, reconnect.
                    self._note_error(exc)
                    _log.exception("mqtt[%s]: connection failed", self.client_id)
                finally:
                    self._lost.set()
                    self._client = None
                    self._connected.clear()
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # aiomqtt's disconnect may have replaced our CancelledError
                    # with a timeout error: stopping must still stop.
                    raise asyncio.CancelledError
                # Only a connection that stayed up resets the backoff: two
                # processes fighting over one client id must not spin.
                if connected_at is not None and (
                    self._clock.monotonic() - connected_at >= STABLE_AFTER_S
                ):
                    attempt = 0
                self._mark_down()
                delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**attempt)
                attempt = min(attempt + 1, 16)
                await self._clock.sleep(delay * self._rng.uniform(0.5, 1.0))
                self.reconnects += 1
        finally:
            self._client = None
            self._connected.clear()

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        sent: set[str] = set()
        while True:
            # Filters subscribed and messages queued while we were busy here
            # would otherwise wait for the next reconnect.
            pending = [f for f in self._subscriptions if f not in sent]
            if not pending and not self._outbox:
                break
            for topic_filter in pending:
                qos = self._subscriptions.get(topic_filter)
                sent.add(topic_filter)
                if qos is None:
                    continue
                try:
                    self._check_granted(topic_filter, await client.subscribe(topic_filter, qos))
                except ProtocolError as exc:
                    # An ACL refusal will not heal by reconnecting: keep the rest.
                    _log.error("%s", exc)
            while self._outbox:
                message = self._outbox[0]
                await client.publish(message.topic, message.payload, qos=message.qos,
                                     retain=message.retain)
                self._outbox.popleft()
                self.published += 1
        self._connected.set()
        if not self._healthy:
            self._healthy = True
            _log.info(
                "mqtt[%s]: connected to %s again after %.1f s",
                self.client_id, self.url, self._clock.monotonic() - self._down_since,
            )

    def _mark_down(self) -> None:
        if self._healthy:
            self._healthy = False
            self._down_since = self._clock.monotonic()
            _log.warning("mqtt[%s]: lost %s: %s; reconnecting", self.client_id, self.url,
                         self.last_error or "disconnected")

    async def _receive(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        try:
            async for message in messages:
                self._dispatch(message)
        except aiomqtt.MqttError:
            # What the client had already received (and acknowledged to the
            # broker) must still reach the callbacks before we reconnect.
            while len(messages):
                try:
                    message = await anext(messages)
                except aiomqtt.MqttError:
                    break
                self._dispatch(message)
            raise

    def _dispatch(self, message: aiomqtt.Message) -> None:
        self.received += 1
        payload = message.payload
        if isinstance(payload, str):
            data = payload.encode()
        elif isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
        else:
            data = b"" if payload is None else str(payload).encode()
        name = message.topic.value
        for callback in self._callbacks:
            try:
                callback(name, data)
            except Exception:
                self.callback_errors += 1
                _log.exception("mqtt[%s]: message callback failed on %s", self.client_id, name)
