"""Who may speak on the broker: accounts, ACLs, client ids, packet size and TLS, for real.

The embedded broker (mosquitto; amqtt where it can do the same) and the production
configuration of ``deploy/mosquitto`` are run with real clients: a device publishes only
under its own id (a forged bus position never reaches the subscription the priority pool
makes), anonymous clients and wrong passwords are refused, no field account can take over
the runtime's client id, an oversized packet is refused, and the runtime's MQTT client
speaks MQTT over TLS (``mqtts://``) with and without a client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import socket
import ssl
import struct
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import pytest

from devices.mqtt import MqttSession, parse_url, topic
from devices.mqtt_wire import TelemetryPublisher, TelemetrySubscriber, connect_packet
from devices.sim.loadgen import LoadGenerator
from runtime.broker_accounts import (
    DEVICE_LEAVES,
    RUNTIME_USER,
    BrokerAccounts,
    DeviceRef,
    find_mosquitto_passwd,
    write_mosquitto_passwords,
)
from runtime.embedded import (
    MAX_PACKET_BYTES,
    BrokerTls,
    EmbeddedBroker,
    find_mosquitto,
    free_port,
)
from runtime.errors import ConfigError, DeviceUnavailableError, ProtocolError
from runtime.inventory import Equipment
from tests.certs import TestCA
from tests.helpers import poll

T = TypeVar("T")
LIMIT_S = 30.0
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"


def _mosquitto() -> str | None:
    try:
        return find_mosquitto()
    except ConfigError:
        return None


MOSQUITTO = _mosquitto()
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="needs Debian's mosquitto (apt install mosquitto; CI installs it)")
KINDS = [pytest.param("mosquitto", marks=needs_mosquitto), "amqtt"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT_S)

    return asyncio.run(bounded())


def bus(eid: str, municipality: str = "dijon") -> Equipment:
    return Equipment(id=eid, kind="vehicle", municipality=municipality, lat=47.32, lon=5.04,
                     endpoint="mqtt", profile="bus", attrs={"line": "L1"})


def camera(eid: str) -> Equipment:
    return Equipment(id=eid, kind="camera", municipality="dijon", lat=47.33, lon=5.03,
                     endpoint="mqtt", profile="camera")


def telemetry(eq: Equipment) -> str:
    return topic(eq.municipality, eq.kind, eq.id, "telemetry")


def with_port(url: str, port: int) -> str:
    """``url`` (its account, its TLS files) aimed at another port."""
    return re.sub(r"@127\.0\.0\.1:\d+", f"@127.0.0.1:{port}", url)


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, name: str, payload: bytes) -> None:
        self.items.append((name, payload))

    def payloads(self) -> list[bytes]:
        return [p for _, p in self.items]


async def refused(url: str, client_id: str = "nobody") -> str:
    """The error of a session that the broker does not let in (fails if it connects)."""
    session = MqttSession(url, client_id=client_id, clean_session=True)
    await session.start()
    try:
        await poll(lambda: bool(session.last_error) or session.connected, 10.0,
                   what=f"an answer to {parse_url(url).redacted}")
        assert not session.connected, f"{parse_url(url).redacted} was let in"
        return session.last_error
    finally:
        await session.stop()


@pytest.fixture(scope="module", params=KINDS)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(tmp_path_factory.mktemp("mqtt"), prefer=request.param)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    if MOSQUITTO is None:
        pytest.skip("needs Debian's mosquitto (apt install mosquitto; CI installs it)")
    server = EmbeddedBroker(tmp_path_factory.mktemp("mqtt"), prefer="mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the accounts, as data ----------------------------------------------------------------


def test_each_account_gets_its_rights_and_a_simulator_a_wildcard_only_over_what_it_owns(
) -> None:
    accounts = BrokerAccounts()
    fleet = [bus("bus-dijon-0001"), bus("bus-dijon-0002"), camera("cam-dijon-0001")]
    sim = accounts.add_simulator("sim-mqtt", fleet)
    assert accounts.grants(accounts.runtime) == (("city/+/+/+/cmd",), ("city/#",))
    publish, read = accounts.grants(sim)
    # The simulator speaks for every vehicle and camera of dijon the accounts know.
    assert publish[:2] == ("city/dijon/vehicle/+/telemetry", "city/dijon/camera/+/telemetry")
    assert read == ("city/dijon/vehicle/+/cmd", "city/dijon/camera/+/cmd")
    # Another bus, with an account of its own: the simulator's are written one by one.
    own = accounts.add_device(bus("bus-dijon-0003"))
    publish, read = accounts.grants(sim)
    assert "city/dijon/vehicle/+/telemetry" not in publish
    assert {"city/dijon/vehicle/bus-dijon-0001/telemetry",
            "city/dijon/vehicle/bus-dijon-0002/telemetry",
            "city/dijon/camera/+/telemetry"} <= set(publish)
    assert not any("bus-dijon-0003" in t for t in publish)
    assert accounts.grants(own) == (
        tuple(f"city/dijon/vehicle/bus-dijon-0003/{leaf}" for leaf in DEVICE_LEAVES),
        ("city/dijon/vehicle/bus-dijon-0003/cmd",))
    # Telemetry lines come first in the ACL file (mosquitto stops at the first match).
    acl = accounts.mosquitto_acl(accounts.devices_side())
    block = acl.split("user sim-mqtt\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all(line.endswith("/telemetry") for line in block[:3]), block
    # Adding an account again keeps its password.
    assert accounts.add_simulator("sim-mqtt", fleet[:1]).password == sim.password
    assert DeviceRef.of(fleet[0]).topic("cmd") == topic("dijon", "vehicle", "bus-dijon-0001",
                                                        "cmd")


@pytest.mark.parametrize(("name", "needle"), [
    ("commandpost", "runtime's"), ("cp-host-fleet-0", "runtime's"), ("sim+1", "does not match"),
    ("a/b", "does not match"), ("", "does not match"), ("Sim", "does not match")])
def test_account_names_cannot_be_the_runtime_s_nor_hold_topic_characters(
        name: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        BrokerAccounts().add_simulator(name, [bus("bus-dijon-0001")])


def test_a_device_account_is_its_device_and_the_roles_do_not_mix() -> None:
    accounts = BrokerAccounts()
    accounts.add_device(camera("cam-dijon-0001"))
    with pytest.raises(ConfigError, match="already a device account"):
        accounts.add_simulator("cam-dijon-0001", [camera("cam-dijon-0002")])
    with pytest.raises(ConfigError, match="speaks for no device"):
        accounts.add_simulator("empty", [])
    with pytest.raises(ConfigError, match="no broker account"):
        accounts.get("nobody")
    assert accounts.get(RUNTIME_USER) is accounts.runtime


# --- the embedded broker ------------------------------------------------------------------


def test_anonymous_clients_and_wrong_passwords_are_refused(broker: EmbeddedBroker) -> None:
    device_url = broker.add_device(camera("cam-refused"))
    runtime = parse_url(broker.url)

    async def scenario() -> None:
        for port in {broker.port, broker.field_port}:
            await refused(f"mqtt://127.0.0.1:{port}")
            await refused(f"mqtt://{RUNTIME_USER}@127.0.0.1:{port}")
        await refused(f"mqtt://{RUNTIME_USER}:{runtime.password}x@127.0.0.1:{broker.port}")
        await refused(f"mqtt://cam-refused:wrong-password-0000@127.0.0.1:{broker.field_port}")
        async with MqttSession(device_url, client_id="cam-refused", clean_session=True) as s:
            assert s.connected

    run(scenario())


def test_a_device_publishes_and_reads_under_its_own_id_alone(broker: EmbeddedBroker) -> None:
    me, other = bus("bus-acl-0001"), bus("bus-acl-0002")
    me_url, other_url = broker.add_device(me), broker.add_device(other)

    async def scenario() -> None:
        seen, mine = Inbox(), Inbox()
        runtime = MqttSession(broker.url, client_id="cp-acl-runtime", clean_session=True)
        runtime.on_message(seen)
        device = MqttSession(me_url, client_id="bus-acl-0001", clean_session=True)
        device.on_message(mine)
        async with runtime, device:
            await runtime.subscribe("city/#", qos=1)
            await device.subscribe(topic("dijon", "vehicle", me.id, "cmd"), qos=1)
            with contextlib.suppress(ProtocolError):  # refused, or granted and filtered
                await device.subscribe(topic("dijon", "vehicle", other.id, "cmd"), qos=1)
            for leaf in DEVICE_LEAVES:
                await device.publish(topic("dijon", "vehicle", other.id, leaf), b"forged", qos=1)
            await device.publish(topic("dijon", "vehicle", other.id, "cmd"), b"forged", qos=1)
            await device.publish(topic("dijon", "vehicle", me.id, "cmd"), b"forged", qos=1)
            await device.publish("elsewhere/x", b"forged", qos=1)
            await device.publish(telemetry(me), b"mine", qos=1)
            await runtime.publish(topic("dijon", "vehicle", other.id, "cmd"), b"not yours", qos=1)
            await runtime.publish(topic("dijon", "vehicle", me.id, "cmd"), b"yours", qos=1)
            async with MqttSession(other_url, client_id="x", clean_session=True) as genuine:
                await genuine.publish(telemetry(other), b"theirs", qos=1)
            # Each client's messages arrive in order: once the last ones are in, a
            # forged one that got through would be in too.
            await poll(lambda: b"theirs" in seen.payloads() and mine.payloads() == [b"yours"],
                       5.0, what="the genuine messages")
        assert b"forged" not in seen.payloads()
        assert (telemetry(me), b"mine") in seen.items
        assert mine.items == [(topic("dijon", "vehicle", me.id, "cmd"), b"yours")]

    run(scenario())


def test_a_forged_bus_position_never_reaches_the_pool_s_subscription(
        broker: EmbeddedBroker) -> None:
    victim, forger_bus, forger_cam = bus("bus-pool-0001"), bus("bus-pool-0002"), camera("cam-p1")
    fleet = [bus("bus-pool-0003"), bus("bus-pool-0004")]
    forgers = [broker.add_device(forger_bus), broker.add_device(forger_cam),
               broker.add_simulator("sim-pool", fleet)]
    victim_url = broker.add_device(victim)

    async def scenario() -> None:
        seen = Inbox()
        # What a member of the priority pool subscribes to: each of its buses' telemetry.
        pool = MqttSession(broker.url, client_id="cp-priority-test", clean_session=True)
        pool.on_message(seen)
        async with pool:
            await pool.subscribe(telemetry(victim), qos=0)
            # Each forged publish is acknowledged (and dropped) before the next client
            # connects: once the victim's own position is in, a forged one would be too.
            for url in forgers:
                async with MqttSession(url, client_id="forger", clean_session=True) as s:
                    await s.publish(telemetry(victim), b"forged position", qos=1)
            async with MqttSession(victim_url, client_id="victim", clean_session=True) as s:
                await s.publish(telemetry(victim), b"genuine position", qos=1)
            await poll(lambda: bool(seen.items), 5.0, what="the victim's own position")
        assert seen.items == [(telemetry(victim), b"genuine position")]

    run(scenario())


def test_the_runtime_s_client_id_cannot_be_taken_over(mosquitto: EmbeddedBroker) -> None:
    cam = camera("cam-takeover")
    device_url = mosquitto.add_device(cam)
    events = topic("dijon", "camera", cam.id, "event")

    async def scenario() -> None:
        seen = Inbox()
        runtime = MqttSession(mosquitto.url, client_id="cp-host-video-0")
        runtime.on_message(seen)
        async with runtime:
            await runtime.subscribe(events, qos=1)
            # A device asking for the runtime's client id gets its own user name instead.
            async with MqttSession(device_url, client_id="cp-host-video-0") as thief:
                await thief.publish(events, b"from the field", qos=1)
                await poll(lambda: bool(seen.items), 5.0, what="the device's event")
                assert runtime.connected and runtime.reconnects == 0
            # The device's account is unknown on the runtime's listener, and the
            # runtime's on the field's.
            await refused(with_port(device_url, mosquitto.port), "cp-host-video-0")
            await refused(with_port(mosquitto.url, mosquitto.field_port), "cp-host-video-0")
            assert runtime.connected and runtime.reconnects == 0
        log = mosquitto.log_path.read_text(errors="replace")
        assert "cp-host-video-0 already connected" not in log
        assert f"as {cam.id} (" in log

    run(scenario())


def test_an_oversized_packet_is_refused(mosquitto: EmbeddedBroker) -> None:
    cam = camera("cam-oversize")
    device_url = mosquitto.add_device(cam)
    url = parse_url(device_url)
    seen = Inbox()

    async def scenario() -> None:
        runtime = MqttSession(mosquitto.url, client_id="cp-oversize", clean_session=True)
        runtime.on_message(seen)
        async with runtime:
            await runtime.subscribe(telemetry(cam), qos=0)
            sock = await asyncio.to_thread(socket.create_connection, (url.host, url.port), 5.0)
            with sock:
                sock.sendall(connect_packet(cam.id, username=url.username,
                                            password=url.password))
                assert sock.recv(4) == b"\x20\x02\x00\x00"
                name = telemetry(cam).encode()
                body = len(name).to_bytes(2, "big") + name + b"x" * MAX_PACKET_BYTES
                length = len(body)
                head = bytearray(b"\x30")
                while True:
                    byte, length = length % 128, length // 128
                    head.append(byte | (0x80 if length else 0))
                    if not length:
                        break
                with contextlib.suppress(OSError):
                    sock.sendall(bytes(head) + body)
                # The broker closes the connection rather than take the packet.
                try:
                    rest = await asyncio.to_thread(sock.recv, 16)
                except ConnectionResetError:
                    rest = b""
                assert rest == b""
            publisher = TelemetryPublisher(device_url, "cam-oversize")
            await publisher.connect()
            publisher.publish(name, b"a sample of a normal size")
            await publisher.flush()
            await poll(lambda: bool(seen.items), 5.0, what="a normal sample")
            await publisher.close()
        assert seen.payloads() == [b"a sample of a normal size"]

    run(scenario())
    assert "oversize packet" in mosquitto.log_path.read_text(errors="replace")


def test_accounts_added_while_it_runs_and_kept_across_a_restart(broker: EmbeddedBroker) -> None:
    cam = camera("cam-restart")

    async def scenario() -> None:
        url = broker.add_device(cam)  # the broker runs: it reads the account at once
        async with MqttSession(url, client_id="cam-restart", clean_session=True) as s:
            assert s.connected
        await asyncio.to_thread(broker.kill)
        await asyncio.to_thread(broker.start)
        async with MqttSession(url, client_id="cam-restart", clean_session=True) as s:
            assert s.connected
        async with MqttSession(broker.url, client_id="cp-after", clean_session=True) as s:
            assert s.connected

    run(scenario())


# --- MQTT over TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@needs_mosquitto
def test_mqtts_carries_the_runtime_s_sessions_telemetry_and_the_load_generator(
        ca: TestCA, tmp_path: Path) -> None:
    server = ca.issue("server", server=True)
    cam = camera("cam-tls")
    with EmbeddedBroker(tmp_path / "mqtt", prefer="mosquitto",
                        tls=BrokerTls(ca.cafile, server.cert, server.key)) as broker:
        assert broker.url.startswith("mqtts://") and f"cafile={ca.cafile}" in broker.url
        device_url = broker.add_device(cam)
        sim_url = broker.add_simulator("sim-tls", [cam])
        rogue = TestCA(tmp_path / "rogue", "another CA")

        async def scenario() -> None:
            events, samples = Inbox(), Inbox()
            runtime = MqttSession(broker.url, client_id="cp-tls", clean_session=True)
            runtime.on_message(events)
            sub = TelemetrySubscriber(broker.url, "cp-tls-telemetry", samples)
            sub.add_filters([telemetry(cam)])
            async with runtime:
                await sub.start()
                await sub.wait_connected(10)
                await runtime.subscribe(topic("dijon", "camera", cam.id, "event"), qos=1)
                async with MqttSession(device_url, client_id=cam.id) as device:
                    await device.publish(topic("dijon", "camera", cam.id, "event"),
                                         b"over tls", qos=1)
                pub = TelemetryPublisher(sim_url, "sim-tls")
                await pub.connect()
                pub.publish(telemetry(cam).encode(), b"a sample over tls")
                await pub.flush()
                await poll(lambda: bool(events.items) and bool(samples.items), 5.0,
                           what="an event and a sample over TLS")
                await pub.close()
                await sub.stop()
            assert events.payloads() == [b"over tls"]
            assert samples.payloads() == [b"a sample over tls"]
            # A broker whose certificate another CA signed is not trusted; nor is plain MQTT.
            error = await refused(device_url.replace(str(ca.cafile), str(rogue.cafile)))
            assert "certificate" in error.lower() or "ssl" in error.lower(), error
            plain = TelemetryPublisher(device_url.replace("mqtts://", "mqtt://").split("?")[0],
                                       cam.id)
            with pytest.raises(DeviceUnavailableError):
                await plain.connect(5.0)

        run(scenario())
        loadgen = LoadGenerator([cam], sim_url, "sim-tls")
        loadgen.connect()  # a TLS handshake, then the CONNACK
        loadgen.close()


@needs_mosquitto
def test_mqtts_with_a_client_certificate(ca: TestCA, tmp_path: Path) -> None:
    server = ca.issue("server-2", server=True)
    client = ca.issue("runtime", server=False)
    tls = BrokerTls(ca.cafile, server.cert, server.key, client.cert, client.key)
    with EmbeddedBroker(tmp_path / "mqtt", prefer="mosquitto", tls=tls) as broker:
        url = parse_url(broker.url)
        assert (url.certfile, url.keyfile) == (str(client.cert), str(client.key))

        async def scenario() -> None:
            async with MqttSession(broker.url, client_id="cp-cert", clean_session=True) as s:
                assert s.connected
            # Without its certificate the same account is refused.
            without = f"mqtts://{RUNTIME_USER}:{quote(url.password or '')}@127.0.0.1:" \
                      f"{broker.port}?cafile={ca.cafile}"
            probe = TelemetryPublisher(without, "cp-cert")
            with pytest.raises(DeviceUnavailableError, match=r"(?i)certificate"):
                await probe.connect(5.0)
            async with MqttSession(broker.url, client_id="cp-cert", clean_session=True) as s:
                assert s.connected

        run(scenario())


def test_a_close_after_the_tls_handshake_names_the_missing_client_certificate(
        ca: TestCA) -> None:
    # What a broker that requires a client certificate may look like under TLS 1.3: the
    # handshake completes, then the connection is reset before any alert is read.
    server = ca.issue("server-reset", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)

    async def reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def scenario() -> str:
        listener = await asyncio.start_server(reset, "127.0.0.1", 0, ssl=context)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            probe = TelemetryPublisher(f"mqtts://u:p@127.0.0.1:{port}?cafile={ca.cafile}", "x")
            with pytest.raises(DeviceUnavailableError) as err:
                await probe.connect(5.0)
            return str(err.value)

    message = run(scenario())
    assert "client certificate" in message and "certfile=" in message, message
    assert ":p@" not in message, message  # the password stays hidden


# --- deploy/mosquitto, as shipped ---------------------------------------------------------


class _Login(NamedTuple):
    username: str
    password: str


def _deploy_config(directory: Path, ca: TestCA, runtime_port: int, device_port: int) -> Path:
    """deploy/mosquitto/mosquitto.conf with this machine's paths and ports, else as shipped."""
    server = ca.issue("deploy-server", server=True)
    swaps = {
        "listener 1883 127.0.0.1": f"listener {runtime_port} 127.0.0.1",
        "listener 8883": f"listener {device_port} 127.0.0.1",
        "/etc/mosquitto/commandpost/": f"{directory}/",
        "/etc/mosquitto/certs/server.crt": str(server.cert),
        "/etc/mosquitto/certs/server.key": str(server.key),
        "/etc/mosquitto/certs/ca.crt": str(ca.cafile),
        "/var/lib/mosquitto/": f"{directory}/",
    }
    text = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    for old, new in swaps.items():
        assert old in text, f"deploy/mosquitto/mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    text += f"\nlog_dest file {directory}/mosquitto.log\nuser {pwd.getpwuid(os.geteuid())[0]}\n"
    for name in ("runtime.acl", "devices.acl"):
        (directory / name).write_text((DEPLOY / name).read_text(encoding="utf-8"))
    conf = directory / "mosquitto.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


@needs_mosquitto
def test_the_deploy_configuration_does_what_its_readme_says(ca: TestCA, tmp_path: Path) -> None:
    assert MOSQUITTO is not None
    runtime_port, device_port = free_port(), free_port()
    conf = _deploy_config(tmp_path, ca, runtime_port, device_port)
    accounts = BrokerAccounts()
    devices = [bus("bus-deploy-0001"), bus("bus-deploy-0002")]
    mine, other = (accounts.add_device(d) for d in devices)
    tool = find_mosquitto_passwd(MOSQUITTO)
    write_mosquitto_passwords(tmp_path / "runtime.passwd", [accounts.runtime], tool)
    # An account named "+" would match every id through the patterns: mosquitto denies it
    # (BrokerAccounts refuses such a name: written here by hand).
    plus = _Login("+", "plus-password-0123456789")
    write_mosquitto_passwords(tmp_path / "devices.passwd",
                              [mine, other, plus], tool)  # type: ignore[list-item]
    tls = f"?cafile={ca.cafile}"

    def url(account: Any, port: int) -> str:
        scheme = "mqtts" if port == device_port else "mqtt"
        return (f"{scheme}://{quote(account.username, safe='')}:{account.password}"
                f"@127.0.0.1:{port}{tls if port == device_port else ''}")

    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        async def scenario() -> None:
            seen = Inbox()
            runtime = MqttSession(url(accounts.runtime, runtime_port), client_id="cp-host-0")
            runtime.on_message(seen)
            await runtime.start()
            await runtime.wait_connected(10)
            await runtime.subscribe("city/#", qos=1)
            attempts = runtime.reconnects  # while the broker was starting
            await refused(f"mqtt://127.0.0.1:{runtime_port}")
            await refused(f"mqtts://127.0.0.1:{device_port}{tls}")
            await refused(url(mine, runtime_port), "cp-host-0")
            await refused(url(accounts.runtime, device_port), "cp-host-0")
            victim = telemetry(devices[1])
            async with MqttSession(url(plus, device_port), client_id="p") as s:
                await s.publish(victim, b"forged by +", qos=1)
            async with MqttSession(url(mine, device_port), client_id="cp-host-0") as s:
                await s.publish(victim, b"forged", qos=1)
                await s.publish(telemetry(devices[0]), b"genuine", qos=1)
                await poll(lambda: b"genuine" in seen.payloads(), 5.0, what="a genuine sample")
            big = MqttSession(url(other, device_port), client_id="x", clean_session=True)
            async with big:
                with pytest.raises(DeviceUnavailableError):
                    await big.publish(victim, b"x" * 70_000, qos=1, queue=False)
            assert runtime.connected and runtime.reconnects == attempts
            await runtime.stop()
            assert seen.payloads() == [b"genuine"]

        run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
    log = (tmp_path / "mosquitto.log").read_text(errors="replace")
    assert "dangerous username" in log and "oversize packet" in log
