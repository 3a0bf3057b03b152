"""Just enough MQTT 3.1.1 to publish QoS 0 telemetry at a few microseconds a message.

Simulated devices and the load generator send their telemetry through this
instead of a full client: a CONNECT, then QoS 0 PUBLISH packets written in
batches on one TCP connection. Everything that needs a session (retained
status, QoS 1 events, commands and acks) goes through
:class:`devices.mqtt.MqttSession`.

    pub = TelemetryPublisher("mqtt://127.0.0.1:1883", client_id="sim-telemetry")
    await pub.connect()
    pub.publish(b"city/dijon/camera/cam-1/telemetry", payload)   # buffered, not awaited
    await pub.flush()
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final
from urllib.parse import urlparse

from runtime.errors import ConfigError, DeviceUnavailableError

__all__ = ["TelemetryPublisher", "connect_packet", "publish_packet"]

_CONNACK_OK: Final = b"\x20\x02\x00\x00"
#: Stop buffering past this: the broker is not reading, the messages are dropped.
_MAX_BUFFER: Final = 4 << 20


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no keep-alive."""
    cid = client_id.encode("utf-8")
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes) -> bytes:
    """An MQTT QoS 0 PUBLISH of ``payload`` on ``topic`` (not retained)."""
    n = 2 + len(topic) + len(payload)
    return b"\x30" + _remaining_length(n) + len(topic).to_bytes(2, "big") + topic + payload


def parse_mqtt_url(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme != "mqtt":
        raise ConfigError(f"telemetry is published over mqtt://, not {url!r}")
    return u.hostname or "127.0.0.1", u.port or 1883


class TelemetryPublisher:
    """QoS 0 publishes on one raw connection, written without awaiting each one."""

    def __init__(self, url: str, client_id: str) -> None:
        self._address = parse_mqtt_url(url)
        self._client_id = client_id
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        w = self._writer
        return w is not None and not w.is_closing()

    async def connect(self, timeout: float = 5.0) -> None:
        """Connect and wait for the CONNACK; :class:`DeviceUnavailableError` otherwise."""
        await self.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self._address), timeout)
            writer.write(connect_packet(self._client_id))
            ack = await asyncio.wait_for(reader.readexactly(4), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise DeviceUnavailableError(f"telemetry connection to {self._address}: {exc}") \
                from exc
        if ack != _CONNACK_OK:
            writer.close()
            raise DeviceUnavailableError(f"broker refused the telemetry connection: {ack!r}")
        self._reader, self._writer = reader, writer
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
        transport = w.transport
        if transport.get_write_buffer_size() > _MAX_BUFFER:
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
                    w.write(b"\xe0\x00")  # DISCONNECT
                w.close()
                await w.wait_closed()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
