"""The lean QoS 0 telemetry path: packets, and a real broker round trip."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devices.mqtt_wire import (
    TelemetryPublisher,
    TelemetrySubscriber,
    connect_packet,
    publish_packet,
    split_packets,
    subscribe_packet,
)
from runtime.embedded import EmbeddedBroker
from runtime.errors import ProtocolError
from runtime.inventory import Equipment

BROKER = "auto"  # mosquitto when on PATH, else amqtt


def test_packets_are_framed_as_mqtt_3_1_1() -> None:
    assert connect_packet("c") == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"
    auth = connect_packet("c", keepalive_s=30, username="u", password="p")
    assert auth[9] == 0xC2 and auth[10:12] == b"\x00\x1e" and auth.endswith(b"\x00\x01u\x00\x01p")
    assert publish_packet(b"a/b", b"xy") == b"\x30\x07\x00\x03a/bxy"
    assert subscribe_packet(1, ["a/+"]) == b"\x82\x08\x00\x01\x00\x03a/+\x00"
    big = publish_packet(b"t", b"x" * 300)
    assert big[1:3] == bytes([0x80 | (303 % 128), 303 // 128])


def test_split_packets_keeps_a_partial_packet_for_the_next_read() -> None:
    a, b = publish_packet(b"t/1", b"one"), publish_packet(b"t/2", b"x" * 200)
    buf = bytearray(a + b[:50])
    packets = split_packets(buf)
    assert [(first, body[5:]) for first, body in packets] == [(0x30, b"one")]
    assert bytes(buf) == b[:50]
    buf += b[50:]
    [(_first, body)] = split_packets(buf)
    assert body.endswith(b"x" * 200) and buf == bytearray()
    with pytest.raises(ProtocolError):
        split_packets(bytearray(b"\x30\xff\xff\xff\xff\x01"))


def through_a_broker(cameras: list[Equipment],
                     scenario: Callable[[str, str], Awaitable[None]]) -> None:
    """Run ``scenario(runtime URL, publisher URL)`` against a real broker of its own, the
    publisher's account allowed to publish as ``cameras``."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(Path(tmp) / "mqtt", prefer=BROKER)
        broker.start()
        try:
            publisher_url = broker.add_simulator("t-pub", cameras)
            asyncio.run(asyncio.wait_for(scenario(broker.url, publisher_url), 60))
        finally:
            broker.stop()


def test_publisher_to_subscriber_through_a_real_broker() -> None:
    cameras = [Equipment(id=f"cam-{i}", kind="camera", municipality="dijon", lat=47.3,
                         lon=5.0, endpoint="mqtt", profile="camera") for i in range(300)]

    async def scenario(url: str, publisher_url: str) -> None:
        got: list[tuple[str, bytes]] = []
        sub = TelemetrySubscriber(url, "cp-t-sub", lambda t, p: got.append((t, p)))
        sub.add_filters([f"city/dijon/camera/cam-{i}/telemetry" for i in range(300)])
        await sub.start()
        await sub.wait_connected(10)
        pub = TelemetryPublisher(publisher_url, "t-pub")
        await pub.connect()
        for i in range(2000):
            pub.publish(f"city/dijon/camera/cam-{i % 300}/telemetry".encode(), b"%d" % i)
        pub.publish(b"city/dijon/camera/other/telemetry", b"not subscribed")
        await pub.flush()
        for _ in range(200):
            if len(got) >= 2000:
                break
            await asyncio.sleep(0.02)
        await pub.close()
        await sub.stop()
        assert len(got) == 2000 and sub.received == 2000
        assert got[0] == ("city/dijon/camera/cam-0/telemetry", b"0")
        assert [int(p) for _, p in got] == list(range(2000))

    through_a_broker(cameras, scenario)


def test_filters_are_subscribed_and_unsubscribed_on_the_open_connection() -> None:
    cameras = [Equipment(id=f"cam-{i}", kind="camera", municipality="dijon", lat=47.3,
                         lon=5.0, endpoint="mqtt", profile="camera") for i in range(3)]
    names = [f"city/dijon/camera/cam-{i}/telemetry" for i in range(3)]

    async def scenario(url: str, publisher_url: str) -> None:
        got: list[str] = []
        sub = TelemetrySubscriber(url, "cp-t-live", lambda t, p: got.append(t))
        await sub.start()
        await sub.wait_connected(10)  # nothing to subscribe yet: connected all the same
        pub = TelemetryPublisher(publisher_url, "t-pub")
        await pub.connect()

        async def until_received(name: str) -> None:
            for _ in range(500):
                pub.publish(name.encode(), b"x")
                await asyncio.sleep(0.01)
                if name in got:
                    return
            raise AssertionError(f"{name} never arrived")

        sub.subscribe(names[:2])
        sub.subscribe(names[:1])  # already there: not twice
        await until_received(names[0])
        await until_received(names[1])
        sub.unsubscribe([names[0]])
        # Once the broker has the unsubscription, nothing more of cam-0 arrives.
        sub.subscribe([names[2]])
        await until_received(names[2])  # after the unsubscribe on the same connection
        got.clear()
        for _ in range(20):
            pub.publish(names[0].encode(), b"x")
            pub.publish(names[1].encode(), b"y")
        await pub.flush()
        for _ in range(200):
            if got.count(names[1]) >= 20:
                break
            await asyncio.sleep(0.01)
        assert got.count(names[1]) == 20 and names[0] not in got
        assert sub.malformed == 0 and sub.reconnects == 0
        await pub.close()
        await sub.stop()

    through_a_broker(cameras, scenario)
