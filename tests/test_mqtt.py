"""MQTT transport and simulated MQTT devices, against a real broker.

One embedded broker (mosquitto when installed) serves the whole module; the
mosquitto command-line clients stand in for programs nobody here wrote.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devices.mqtt import (
    MqttSession,
    decode_ack,
    decode_event,
    decode_payload,
    decode_status,
    encode_payload,
    encode_status,
    parse_topic,
    parse_url,
    topic,
)
from devices.profile import builtin_profile
from devices.sim.mqtt_devices import MALFORMED_KINDS, MqttDeviceSimulator, _Bus
from runtime.embedded import EmbeddedBroker, free_port
from runtime.envelope import pack
from runtime.errors import (
    ConfigError,
    DeviceUnavailableError,
    MalformedMessageError,
    ProtocolError,
)
from runtime.inventory import Equipment
from tests.helpers import poll

T = TypeVar("T")
LIMIT_S = 20.0
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT_S)

    return asyncio.run(bounded())


def _tool(name: str) -> str | None:
    path = shutil.which(name) or f"/usr/bin/{name}"
    return path if Path(path).is_file() else None


def _paho(name: str, args: tuple[str, ...], stdin: bytes | None) -> bytes:
    """The same call made with paho-mqtt, a client nobody here wrote either.

    Used where Debian's mosquitto-clients are not installed (no root). Knows the
    options these tests use: -h -p -u -P -C -t -F (%t %x %r) for mosquitto_sub and
    -h -p -u -P -q -t -s for mosquitto_pub.
    """
    import paho.mqtt.publish as publish
    import paho.mqtt.subscribe as subscribe

    opts: dict[str, str] = {}
    flags = iter(args)
    for flag in flags:
        if flag in ("-d", "-s"):
            continue
        opts[flag] = next(flags)
    host, port = opts.get("-h", "127.0.0.1"), int(opts.get("-p", "1883"))
    auth = {"username": opts["-u"], "password": opts["-P"]} if "-u" in opts else None
    if name == "mosquitto_pub":
        publish.single(opts["-t"], stdin or b"", qos=int(opts.get("-q", "0")), hostname=host,
                       port=port, auth=auth)  # type: ignore[arg-type]
        return b""
    count = int(opts.get("-C", "1"))
    got = subscribe.simple(  # type: ignore[no-untyped-call]
        opts["-t"], msg_count=count, hostname=host, port=port, auth=auth)
    messages = got if isinstance(got, list) else [got]
    fmt = opts.get("-F", "%p")
    lines = []
    for m in messages:
        line = (fmt.replace("%t", m.topic).replace("%x", m.payload.hex())
                .replace("%r", "1" if m.retain else "0"))
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


async def cli(name: str, *args: str, stdin: bytes | None = None, limit_s: float = 10.0) -> bytes:
    """Run a mosquitto command-line client; its stdout, or a failure naming what it said."""
    tool = _tool(name)
    if tool is None:
        return await asyncio.wait_for(asyncio.to_thread(_paho, name, args, stdin), limit_s)
    proc = await asyncio.create_subprocess_exec(
        tool, *args, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit_s)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"{name} {' '.join(args)} did not finish within {limit_s} s; "
                             f"stdout: {out.decode(errors='replace')!r}; "
                             f"stderr: {err.decode(errors='replace')!r}") from None
    assert proc.returncode == 0, f"{name} failed: {err.decode(errors='replace')}"
    return out


def login(url: str) -> tuple[str, ...]:
    """The command-line clients' options for the account of ``url``: host, port, user."""
    u = parse_url(url)
    return ("-h", u.host, "-p", str(u.port), "-u", u.username or "", "-P", u.password or "")


def sim_urls(broker: EmbeddedBroker, name: str, equipment: list[Equipment]) -> dict[str, str]:
    """A simulator's two accounts: its session's and its telemetry connection's."""
    return {"url": broker.add_simulator(name, equipment),
            "telemetry_url": broker.add_simulator(f"{name}-telemetry", equipment)}


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    # One broker per test: retained messages, wills and persistent sessions of
    # one test must not reach the next (amqtt keeps them differently from mosquitto).
    server = EmbeddedBroker(tmp_path_factory.mktemp("mqtt"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bus(eid: str, line: str = "L1") -> Equipment:
    return Equipment(id=eid, kind="vehicle", municipality="dijon", lat=47.322, lon=5.041,
                     endpoint="mqtt", profile="bus", attrs={"line": line})


def service_vehicle(eid: str) -> Equipment:
    return Equipment(id=eid, kind="vehicle", municipality="talant", lat=47.337, lon=5.005,
                     endpoint="mqtt", profile="service_vehicle", attrs={"role": "sweeper"})


def camera(eid: str) -> Equipment:
    return Equipment(id=eid, kind="camera", municipality="dijon", lat=47.33, lon=5.03,
                     endpoint="mqtt", profile="camera")


class Inbox:
    """Collects (topic, payload) pairs from a session callback."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, name: str, payload: bytes) -> None:
        self.items.append((name, payload))

    def on(self, leaf: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.items if t.endswith("/" + leaf)]


# --- pure functions ------------------------------------------------------------------------


def test_topic_round_trip_and_rejects_malformed_topics() -> None:
    name = topic("fontaine-les-dijon", "camera", "cam-1", "cmd")
    assert name == "city/fontaine-les-dijon/camera/cam-1/cmd"
    assert parse_topic(name) == ("fontaine-les-dijon", "camera", "cam-1", "cmd")
    for bad in ("city/dijon/camera/cam-1", "town/dijon/camera/cam-1/cmd",
                "city/dijon/camera/cam-1/reboot", "city//camera/cam-1/cmd",
                "city/dijon/camera/cam-1/cmd/extra"):
        with pytest.raises(ProtocolError):
            parse_topic(bad)
    with pytest.raises(ProtocolError):
        topic("dijon", "camera", "cam/1", "cmd")
    with pytest.raises(ProtocolError):
        topic("dijon", "camera", "cam-1", "nope")


def test_url_parsing_and_redaction() -> None:
    url = parse_url("mqtt://ops:s%40cret@broker.example:1884")
    assert (url.host, url.port, url.username, url.password) == (
        "broker.example", 1884, "ops", "s@cret")
    assert url.redacted == "mqtt://ops:***@broker.example:1884"
    assert parse_url("mqtt://127.0.0.1").port == 1883
    for bad in ("http://127.0.0.1:1883", "mqtt://127.0.0.1:99999", "mqtt://h:1883/path", "mqtt://"):
        with pytest.raises(ConfigError):
            parse_url(bad)
    with pytest.raises(ConfigError):
        MqttSession("tcp://127.0.0.1:1883", client_id="x")


def test_mqtts_url_carries_its_tls_files_and_defaults_to_8883() -> None:
    url = parse_url("mqtts://dev:pw@broker.example?cafile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem")
    assert (url.tls, url.port, url.cafile, url.certfile, url.keyfile) == (
        True, 8883, "/etc/ca.pem", "/c.pem", "/k.pem")
    assert url.redacted == ("mqtts://dev:***@broker.example:8883"
                            "?cafile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem")
    assert parse_url("mqtt://h").ssl_context() is None
    assert parse_url("mqtts://h:8884").port == 8884
    for bad, needle in (("mqtt://h?cafile=/ca.pem", "need mqtts"),
                        ("mqtts://h?ca=/ca.pem", "unknown parameter 'ca'"),
                        ("mqtts://h?keyfile=/k.pem", "needs its certfile"),
                        ("mqtts://h?cafile=/a&cafile=/b", "once"),
                        ("mqtts://h?cafile=", "once")):
        with pytest.raises(ConfigError, match=needle):
            parse_url(bad)
    with pytest.raises(ConfigError, match="no-such-ca"):
        MqttSession("mqtts://h?cafile=/no-such-ca.pem", client_id="x")


VALID_BUS = {"ts": 1_700_000_000.5, "lat": 47.32, "lon": 5.04, "speed": 7, "heading": 90.0,
             "seq": 12, "line": "L1", "delay_s": 30.0}


def test_decode_payload_accepts_a_valid_sample() -> None:
    profile = builtin_profile("bus")
    data = decode_payload(profile, encode_payload({**VALID_BUS, "extra": "kept"}))
    assert data["speed"] == 7.0 and isinstance(data["speed"], float)
    assert data["line"] == "L1" and data["extra"] == "kept"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        pytest.param(b"\xc1\xc1\xc1", "not valid msgpack", id="not-msgpack"),
        pytest.param(pack([1, 2, 3]), "not a map", id="not-a-map"),
        pytest.param(encode_payload({k: v for k, v in VALID_BUS.items() if k != "lat"}),
                     "missing required key 'lat'", id="missing-key"),
        pytest.param(encode_payload({**VALID_BUS, "seq": "12"}), "seq: expected int",
                     id="wrong-type-int"),
        pytest.param(encode_payload({**VALID_BUS, "speed": True}), "speed: expected float",
                     id="wrong-type-bool-for-float"),
        pytest.param(encode_payload({**VALID_BUS, "line": 1}), "line: expected str",
                     id="wrong-type-str"),
        pytest.param(encode_payload({**VALID_BUS, "heading": 361.0}), "above the maximum",
                     id="out-of-range-high"),
        pytest.param(encode_payload({**VALID_BUS, "speed": -1.0}), "below the minimum",
                     id="out-of-range-low"),
        pytest.param(encode_payload({**VALID_BUS, "lat": math.nan}), "finite",
                     id="nan"),
        pytest.param(encode_payload({**VALID_BUS, "pad": "x" * 2048}), "exceeds 2048",
                     id="over-size"),
    ],
)
def test_decode_payload_rejects(payload: bytes, needle: str) -> None:
    with pytest.raises(MalformedMessageError, match=needle):
        decode_payload(builtin_profile("bus"), payload)


def test_camera_choices_events_acks_and_status() -> None:
    profile = builtin_profile("camera")
    good = {"ts": 1.0, "seq": 1, "recording": True, "health": "ok", "preset": 3}
    assert decode_payload(profile, encode_payload(good))["preset"] == 3
    with pytest.raises(MalformedMessageError, match="not one of"):
        decode_payload(profile, encode_payload({**good, "health": "on fire"}))
    with pytest.raises(MalformedMessageError, match="recording: expected bool"):
        decode_payload(profile, encode_payload({**good, "recording": 1}))
    assert decode_event(profile, encode_payload({"ts": 2, "event": "tamper"}))["ts"] == 2.0
    with pytest.raises(MalformedMessageError):
        decode_event(profile, encode_payload({"ts": 2, "event": "explosion"}))
    ack = decode_ack(encode_payload({"command_id": "c1", "ok": False, "ts": 3,
                                     "error": "nope"}))
    assert ack["ok"] is False and ack["error"] == "nope"
    with pytest.raises(MalformedMessageError):
        decode_ack(encode_payload({"command_id": "c1", "ok": "yes", "ts": 3}))
    assert decode_status(encode_status(True)) is True
    assert decode_status(b"offline") is False
    with pytest.raises(MalformedMessageError):
        decode_status(b"maybe")


def test_bus_speed_and_heading_follow_its_track() -> None:
    profile = builtin_profile("bus")
    model = _Bus(bus("bus-dijon-0001", "L4"), profile, (47.322, 5.0415), random.Random(5))
    rng = random.Random(6)
    samples = [model.sample(1_700_000_000.0 + t, rng) for t in range(900)]
    moving = 0
    for before, after in itertools.pairwise(samples):
        decode_payload(profile, encode_payload(after))
        dy = (after["lat"] - before["lat"]) * 111_320.0
        dx = (after["lon"] - before["lon"]) * 111_320.0 * math.cos(math.radians(47.322))
        moved = math.hypot(dx, dy)
        # Displacement matches the reported speed, except around a waypoint (cut corner).
        assert moved <= after["speed"] + 0.5
        if moved > 3.0:
            moving += 1
            bearing = math.degrees(math.atan2(dx, dy)) % 360.0
            diff = abs((bearing - after["heading"] + 180.0) % 360.0 - 180.0)
            assert diff < 40.0 or moved < after["speed"] * 0.9
    assert moving > 300
    assert {s["seq"] for s in samples} == set(range(1, 901))
    assert any(s["speed"] == 0.0 for s in samples), "buses dwell at stops"


# --- sessions against the broker -----------------------------------------------------------


def test_publish_while_disconnected_raises_or_queues() -> None:
    async def scenario() -> None:
        session = MqttSession(f"mqtt://127.0.0.1:{free_port()}", client_id="nobody-home",
                              max_queued=2)
        await session.start()
        try:
            with pytest.raises(DeviceUnavailableError):
                await session.wait_connected(0.3)
            with pytest.raises(DeviceUnavailableError):
                await session.publish("test/x", b"1", qos=1, queue=False)
            for n in range(3):
                await session.publish("test/x", str(n).encode(), qos=1)
            assert session.queued == 2 and session.dropped == 1
            await poll(lambda: session.reconnects >= 2, 5.0, what="reconnect attempts")
        finally:
            await session.stop()

    run(scenario())


def test_persistent_session_receives_what_was_queued_while_away(broker: EmbeddedBroker) -> None:
    events = topic("dijon", "camera", "cam-persist", "event")
    device_url = broker.add_device(camera("cam-persist"))

    async def scenario() -> None:
        first = MqttSession(broker.url, client_id="cp-host-persist")
        async with first:
            await first.subscribe(events, qos=1)
        async with MqttSession(device_url, client_id="cam-persist") as publisher:
            for n in range(5):
                await publisher.publish(events, str(n).encode(), qos=1)
        # A replacement process with the same client id, subscribing to nothing itself.
        inbox = Inbox()
        replacement = MqttSession(broker.url, client_id="cp-host-persist")
        replacement.on_message(inbox)
        async with replacement:
            await poll(lambda: len(inbox.items) == 5, 5.0, what="queued messages")
        assert sorted(p for _, p in inbox.items) == [b"0", b"1", b"2", b"3", b"4"]
        assert replacement.received == 5

    run(scenario())


def test_session_reconnects_after_the_broker_is_killed(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="devices.mqtt")
    events = topic("dijon", "camera", "cam-kill", "event")
    device_url = broker.add_device(camera("cam-kill"))

    async def scenario() -> None:
        inbox = Inbox()
        receiver = MqttSession(broker.url, client_id="cp-kill-receiver")
        receiver.on_message(inbox)
        sender = MqttSession(device_url, client_id="cam-kill")
        async with receiver, sender:
            await receiver.subscribe(events, qos=1)
            await sender.publish(events, b"before", qos=1)
            await poll(lambda: len(inbox.items) == 1, 5.0, what="message before the crash")
            await asyncio.to_thread(broker.kill)
            await poll(lambda: not receiver.connected and not sender.connected, 5.0,
                       what="both sessions notice the crash")
            await asyncio.to_thread(broker.start)
            await receiver.wait_connected(10.0)
            await sender.wait_connected(10.0)
            await sender.publish(events, b"after", qos=1)
            await poll(lambda: len(inbox.items) >= 2, 10.0, what="message after the restart")
        assert inbox.items[-1] == (events, b"after")
        assert receiver.reconnects >= 1 and sender.reconnects >= 1

    run(scenario())
    # However many attempts the outage took, it is logged once, and its end once.
    mine = [r.getMessage() for r in caplog.records if "mqtt[cp-kill-receiver]" in r.getMessage()]
    assert sum("lost" in m for m in mine) == 1, mine
    assert sum("again" in m for m in mine) == 1, mine


WILL_CHILD = """
import asyncio, sys
from devices.mqtt import MqttSession, encode_status
async def main():
    session = MqttSession(sys.argv[1], client_id="cam-will", keepalive=5,
                          will=(sys.argv[2], encode_status(False)))
    async with session:
        await session.publish(sys.argv[2], encode_status(True), qos=1, retain=True)
        print("ready", flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def test_last_will_marks_a_killed_process_offline(broker: EmbeddedBroker) -> None:
    status = topic("dijon", "camera", "cam-will", "status")
    device_url = broker.add_device(camera("cam-will"))

    async def scenario() -> list[bool]:
        seen: list[bool] = []
        watcher = MqttSession(broker.url, client_id="cp-will-watcher", clean_session=True)
        watcher.on_message(lambda _t, payload: seen.append(decode_status(payload)))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WILL_CHILD, device_url, status,
            stdout=subprocess.PIPE, cwd=PROJECT_ROOT)
        try:
            assert child.stdout is not None
            assert (await asyncio.wait_for(child.stdout.readline(), 15.0)).strip() == b"ready"
            async with watcher:
                await watcher.subscribe(status, qos=1)
                await poll(lambda: seen == [True], 5.0, what="retained online")
                child.kill()
                await poll(lambda: seen[-1:] == [False], 5.0, what="the will")
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
        return seen

    assert run(scenario()) == [True, False]


# --- the simulator, seen by clients nobody here wrote --------------------------------------


def test_simulator_telemetry_reaches_mosquitto_sub(broker: EmbeddedBroker) -> None:
    equipment = [bus("bus-dijon-0001", "L1"), bus("bus-dijon-0002", "B12"),
                 service_vehicle("veh-talant-0001"), camera("cam-dijon-0001")]

    async def scenario() -> list[str]:
        sim = MqttDeviceSimulator(equipment, rng=random.Random(1), rate_hz=20.0,
                                  client_id="sim-telemetry",
                                  **sim_urls(broker, "sim-telemetry", equipment))
        await sim.start()
        try:
            out = await cli("mosquitto_sub", *login(broker.url),
                            "-C", "6", "-t", "city/+/vehicle/+/telemetry", "-F", "%t %x")
            await poll(lambda: all(sim.published(d) >= 3 for d in sim.devices), 5.0,
                       what="three samples from every device")
            assert sim.last_seq("bus-dijon-0001") >= sim.published("bus-dijon-0001")
            return out.decode().splitlines()
        finally:
            await sim.stop()

    lines = run(scenario())
    assert len(lines) == 6
    for line in lines:
        name, hexed = line.split(" ", 1)
        _, _, device_id, leaf = parse_topic(name)
        assert leaf == "telemetry"
        profile = builtin_profile("bus" if device_id.startswith("bus") else "service_vehicle")
        sample = decode_payload(profile, bytes.fromhex(hexed))
        assert sample["seq"] >= 1
        if profile.name == "bus":
            assert sample["line"] in ("L1", "B12")
            assert abs(sample["lat"] - 47.322) < 0.05 and abs(sample["lon"] - 5.0415) < 0.08


def test_mosquitto_pub_command_is_acked_by_the_simulator(broker: EmbeddedBroker) -> None:
    cam = camera("cam-dijon-0002")
    cmd_topic = topic("dijon", "camera", cam.id, "cmd")

    async def mosquitto_pub(payload: dict[str, Any]) -> None:
        await cli("mosquitto_pub", "-d", *login(broker.url), "-q", "1",
                  "-t", cmd_topic, "-s", stdin=encode_payload(payload))

    async def scenario() -> None:
        fleet = [cam, bus("bus-dijon-0003")]
        sim = MqttDeviceSimulator(fleet, client_id="sim-commands",
                                  **sim_urls(broker, "sim-commands", fleet))
        inbox = Inbox()
        observer = MqttSession(broker.url, client_id="cp-ack-observer")
        observer.on_message(inbox)
        await sim.start()
        try:
            async with observer:
                await observer.subscribe("city/+/+/+/ack", qos=1)
                await mosquitto_pub({"command_id": "c-1", "action": "set",
                                     "params": {"preset": 7, "recording": False}})
                await poll(lambda: len(inbox.items) == 1, 5.0, what="ack of c-1")
                await mosquitto_pub({"command_id": "c-2", "action": "set",
                                     "params": {"preset": 300}})
                await mosquitto_pub({"command_id": "c-3", "action": "set",
                                     "params": {"zoom": 2}})
                await poll(lambda: len(inbox.items) == 3, 5.0, what="acks of c-2 and c-3")
        finally:
            await sim.stop()
        acks = {}
        for name, payload in inbox.items:
            assert parse_topic(name) == ("dijon", "camera", cam.id, "ack")
            ack = decode_ack(payload)
            acks[ack["command_id"]] = ack
        assert acks["c-1"]["ok"] is True and "error" not in acks["c-1"]
        assert acks["c-2"]["ok"] is False and "maximum 255" in acks["c-2"]["error"]
        assert acks["c-3"]["ok"] is False and "not a writable field" in acks["c-3"]["error"]
        # The refused commands changed nothing.
        assert sim.values(cam.id) == {"preset": 7, "recording": False}

    run(scenario())


def test_stopped_device_is_offline_and_malformed_payloads_are_rejected(
    broker: EmbeddedBroker,
) -> None:
    cam = camera("cam-dijon-0003")
    telemetry = topic("dijon", "camera", cam.id, "telemetry")
    status = topic("dijon", "camera", cam.id, "status")

    async def retained_status() -> bool:
        out = await cli("mosquitto_sub", *login(broker.url), "-C", "1",
                        "-t", status, "-F", "%r %x")
        retained, hexed = out.decode().split()
        assert retained == "1"
        return decode_status(bytes.fromhex(hexed))

    async def scenario() -> None:
        sim = MqttDeviceSimulator([cam], client_id="sim-faults", event_interval_s=0.05,
                                  **sim_urls(broker, "sim-faults", [cam]))
        inbox = Inbox()
        watcher = MqttSession(broker.url, client_id="cp-fault-watcher")
        watcher.on_message(inbox)
        await sim.start()
        try:
            assert await retained_status() is True
            async with watcher:
                await watcher.subscribe(f"city/dijon/camera/{cam.id}/+", qos=1)
                await poll(lambda: len(inbox.on("event")) >= 2, 5.0, what="camera events")
                await sim.stop_device(cam.id)
                assert await retained_status() is False
                inbox.items.clear()
                for kind in MALFORMED_KINDS:
                    await sim.malformed(cam.id, kind)
                await poll(lambda: len(inbox.on("telemetry")) == len(MALFORMED_KINDS), 5.0,
                           what="malformed payloads")
                assert not inbox.on("event"), "a stopped camera raises no events"
                await sim.start_device(cam.id)
                assert await retained_status() is True
                await poll(lambda: len(inbox.on("telemetry")) > len(MALFORMED_KINDS), 5.0,
                           what="telemetry after restart")
        finally:
            await sim.stop()
        assert await retained_status() is False
        profile = builtin_profile("camera")
        bad = inbox.on("telemetry")[: len(MALFORMED_KINDS)]
        reasons = []
        for name, payload in bad:
            assert name == telemetry
            with pytest.raises(MalformedMessageError) as caught:
                decode_payload(profile, payload)
            reasons.append(str(caught.value))
        assert len(set(reasons)) == len(MALFORMED_KINDS), reasons
        good = inbox.on("telemetry")[len(MALFORMED_KINDS)]
        assert decode_payload(profile, good[1])["health"] in ("ok", "degraded")

    run(scenario())
