"""Just enough MQTT 3.1.1 for QoS 0 telemetry, at a few microseconds a message.

Telemetry is the one flow where the cost per message decides what a host can
take: thousands of small QoS 0 publishes a second, none of them acknowledged.
This module carries it on a connection of its own, read and written in
batches — where a full client reads each packet in a loop turn of its own.
Everything that needs a session (retained status, QoS 1 events, commands
and acks, persistent subscriptions) goes through :class:`devices.mqtt.MqttSession`.

* :class:`TelemetrySubscriber` (the runtime): a clean session subscribed at
  QoS 0 to telemetry topics, every PUBLISH handed to ``callback(topic,
  payload)``; reconnects with jittered, capped backoff and subscribes again.
* :class:`TelemetryPublisher` (simulated devices): QoS 0 publishes written
  without awaiting each one.

    sub = TelemetrySubscriber("mqtt://127.0.0.1:1883", "cp-fleet-0-telemetry", on_message)
    sub.add_filters(["city/dijon/vehicle/bus-dijon-0001/telemetry"])
    await sub.start()
    ...
    await sub.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Iterable
from typing import Final

from devices.mqtt import MqttUrl, parse_url
from runtime.errors import ConfigError, DeviceUnavailableError, ProtocolError

__all__ = [
    "TelemetryPublisher",
    "TelemetrySubscriber",
    "connect_packet",
    "publish_packet",
    "subscribe_packet",
    "unsubscribe_packet",
]

_log = logging.getLogger(__name__)

_CONNACK: Final = 0x20
_PUBLISH: Final = 0x30
_SUBACK: Final = 0x90
_UNSUBACK: Final = 0xB0
_PINGRESP: Final = 0xD0
_PINGREQ: Final = b"\xc0\x00"
_DISCONNECT: Final = b"\xe0\x00"
#: Stop buffering past this: the broker is not reading, the messages are dropped.
_MAX_BUFFER: Final = 4 << 20
_FILTERS_PER_SUBSCRIBE: Final = 200
#: Packet ids above this are the (un)subscriptions made on an open connection; those
#: below, the ones each connection starts with.
_FIRST_LIVE_ID: Final = 0x8000

MessageCallback = Callable[[str, bytes], None]


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, *, keepalive_s: int = 0, username: str | None = None,
                   password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session."""
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = (b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive_s.to_bytes(2, "big") + payload)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes) -> bytes:
    """An MQTT QoS 0 PUBLISH of ``payload`` on ``topic`` (not retained)."""
    n = 2 + len(topic) + len(payload)
    return b"\x30" + _remaining_length(n) + len(topic).to_bytes(2, "big") + topic + payload


def subscribe_packet(packet_id: int, filters: Iterable[str]) -> bytes:
    """An MQTT SUBSCRIBE of ``filters``, each at QoS 0."""
    body = packet_id.to_bytes(2, "big") + b"".join(_string(f) + b"\x00" for f in filters)
    return b"\x82" + _remaining_length(len(body)) + body


def unsubscribe_packet(packet_id: int, filters: Iterable[str]) -> bytes:
    """An MQTT UNSUBSCRIBE of ``filters``."""
    body = packet_id.to_bytes(2, "big") + b"".join(_string(f) for f in filters)
    return b"\xa2" + _remaining_length(len(body)) + body


def split_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete packet off the front of ``buf``: ``[(first byte, body)]``.

    Raises :class:`ProtocolError` on a malformed remaining length.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        length = 0
        shift = 0
        i = pos + 1
        while True:
            if i >= end:
                del buf[:pos]
                return out
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("MQTT remaining length longer than 4 bytes")
        if i + length > end:
            break
        out.append((buf[pos], bytes(buf[i:i + length])))
        pos = i + length
    del buf[:pos]
    return out


async def _open(url: MqttUrl, tls: ssl.SSLContext | None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the broker of ``url``: TLS (checking its host name) for ``mqtts``."""
    return await asyncio.open_connection(url.host, url.port, ssl=tls,
                                         server_hostname=url.host if tls else None)


class TelemetrySubscriber:
    """A QoS 0 subscription to telemetry topics on a clean session of its own."""

    def __init__(self, url: str, client_id: str, callback: MessageCallback, *,
                 keepalive_s: int = 30, timeout_s: float = 5.0) -> None:
        self._url = parse_url(url)
        self._tls = self._url.ssl_context()
        self._client_id = client_id
        self._callback = callback
        self._keepalive_s = keepalive_s
        self._timeout_s = timeout_s
        self._filters: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._rng = random.Random()
        self._live_id = _FIRST_LIVE_ID
        self.received = 0
        self.malformed = 0
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def add_filters(self, filters: Iterable[str]) -> None:
        """Topic filters to subscribe (on every connection, from the next one on)."""
        self._filters.extend(filters)

    def subscribe(self, filters: Iterable[str]) -> None:
        """Subscribe ``filters`` on the connection open now (if any) and on every later
        one; those already subscribed are left as they are."""
        new = [f for f in dict.fromkeys(filters) if f not in self._filters]
        self._filters.extend(new)
        self._send_live(new, subscribe_packet)

    def unsubscribe(self, filters: Iterable[str]) -> None:
        """Stop receiving ``filters``, on the connection open now and on later ones."""
        gone = set(filters)
        dropped = [f for f in self._filters if f in gone]
        self._filters = [f for f in self._filters if f not in gone]
        self._send_live(dropped, unsubscribe_packet)

    def _send_live(self, filters: list[str],
                   packet: Callable[[int, Iterable[str]], bytes]) -> None:
        # A connection being opened subscribes what the list holds once the broker
        # accepted it; one open now is told at once (a filter sent twice does no harm).
        w = self._writer
        if not filters or w is None or w.is_closing():
            return
        for k in range(0, len(filters), _FILTERS_PER_SUBSCRIBE):
            self._live_id = self._live_id % 0xFFFF + 1
            if self._live_id <= _FIRST_LIVE_ID:
                self._live_id = _FIRST_LIVE_ID + 1
            w.write(packet(self._live_id, filters[k:k + _FILTERS_PER_SUBSCRIBE]))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(),
                                             name=f"telemetry[{self._client_id}].run")

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError as exc:
            raise DeviceUnavailableError(
                f"telemetry[{self._client_id}]: not connected to {self._url.redacted}") from exc

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._close()

    def _close(self) -> None:
        self._connected.clear()
        w, self._writer = self._writer, None
        if w is not None and not w.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                w.write(_DISCONNECT)
            w.close()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError,
                    DeviceUnavailableError, ConfigError) as exc:
                if attempt == 0:
                    _log.warning("telemetry[%s]: %s: %s; reconnecting", self._client_id,
                                 self._url.redacted, exc)
            finally:
                self._close()
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(min(10.0, 0.2 * 2 ** min(attempt, 6))
                                * self._rng.uniform(0.8, 1.2))

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(_open(self._url, self._tls), self._timeout_s)
        self._writer = writer
        writer.write(connect_packet(self._client_id, keepalive_s=self._keepalive_s,
                                    username=self._url.username,
                                    password=self._url.password))
        head = await asyncio.wait_for(reader.readexactly(4), self._timeout_s)
        if head[0] != _CONNACK or head[3] != 0:
            raise DeviceUnavailableError(f"broker refused the telemetry session ({head!r})")
        filters = list(self._filters)
        pending = 0
        for k in range(0, len(filters), _FILTERS_PER_SUBSCRIBE):
            pending += 1
            writer.write(subscribe_packet(pending, filters[k:k + _FILTERS_PER_SUBSCRIBE]))
        if not pending:
            self._connected.set()  # nothing to subscribe yet (see subscribe)
        pinger = asyncio.create_task(self._ping(writer), name=f"telemetry[{self._client_id}].ping")
        try:
            await self._read(reader, pending)
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self._keepalive_s / 2)
            writer.write(_PINGREQ)

    async def _read(self, reader: asyncio.StreamReader, subacks: int) -> None:
        buf = bytearray()
        callback = self._callback
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise DeviceUnavailableError("the broker closed the telemetry session")
            buf += data
            for first, body in split_packets(buf):
                kind = first & 0xF0
                if kind == _PUBLISH:
                    tlen = int.from_bytes(body[:2], "big")
                    start = 2 + tlen + (2 if first & 0x06 else 0)  # QoS > 0 carries an id
                    try:
                        topic = body[2:2 + tlen].decode("utf-8")
                    except UnicodeDecodeError:
                        self.malformed += 1
                        continue
                    self.received += 1
                    try:
                        callback(topic, body[start:])
                    except Exception:
                        _log.exception("telemetry[%s]: callback failed on %s",
                                       self._client_id, topic)
                elif kind == _SUBACK:
                    if b"\x80" in body[2:]:
                        raise ConfigError(f"telemetry[{self._client_id}]: the broker refused "
                                          "a subscription (ACL?)")
                    if int.from_bytes(body[:2], "big") <= _FIRST_LIVE_ID:
                        subacks -= 1
                        if subacks <= 0:
                            self._connected.set()
                elif kind != _PINGRESP and kind != _UNSUBACK:
                    self.malformed += 1


class TelemetryPublisher:
    """QoS 0 publishes on one raw connection, written without awaiting each one."""

    def __init__(self, url: str, client_id: str) -> None:
        self._url = parse_url(url)
        self._tls = self._url.ssl_context()
        self._client_id = client_id
        self._writer: asyncio.StreamWriter | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        w = self._writer
        return w is not None and not w.is_closing()

    async def connect(self, timeout: float = 5.0) -> None:
        """Connect and wait for the CONNACK; :class:`DeviceUnavailableError` otherwise."""
        await self.close()
        handshaken = False
        try:
            reader, writer = await asyncio.wait_for(_open(self._url, self._tls), timeout)
            handshaken = True
            writer.write(connect_packet(self._client_id, username=self._url.username,
                                        password=self._url.password))
            ack = await asyncio.wait_for(reader.readexactly(4), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            hint = ""
            if handshaken and self._url.tls and not self._url.certfile \
                    and not isinstance(exc, TimeoutError) and "certificate" not in str(exc):
                # With TLS 1.3 a server checks the client's certificate after the
                # handshake: its alert may be lost to the reset of its close.
                hint = (" (closed after the TLS handshake: the broker may require a client "
                        "certificate, which the URL does not give: certfile=...&keyfile=...)")
            raise DeviceUnavailableError(
                f"telemetry connection to {self._url.redacted}: {exc}{hint}") from exc
        if ack[0] != _CONNACK or ack[3] != 0:
            writer.close()
            raise DeviceUnavailableError(f"broker refused the telemetry connection: {ack!r}")
        self._writer = writer
        # The broker sends nothing more on a QoS 0 publisher; reading notices a close.
        self._drain = asyncio.create_task(self._read_until_closed(reader),
                                          name="telemetry-publisher.reader")

    async def _read_until_closed(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass
        if self._writer is not None:
            self._writer.close()

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue one publish; :class:`DeviceUnavailableError` when not connected or backed up."""
        w = self._writer
        if w is None or w.is_closing():
            raise DeviceUnavailableError("telemetry connection is down")
        if w.transport.get_write_buffer_size() > _MAX_BUFFER:
            raise DeviceUnavailableError("the broker is not reading: telemetry dropped")
        w.write(publish_packet(topic, payload))

    async def flush(self) -> None:
        w = self._writer
        if w is not None and not w.is_closing():
            with contextlib.suppress(OSError):
                await w.drain()

    async def close(self) -> None:
        w, self._writer = self._writer, None
        task, self._drain = self._drain, None
        if w is not None:
            with contextlib.suppress(OSError):
                if not w.is_closing():
                    w.write(_DISCONNECT)
                w.close()
                await w.wait_closed()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
