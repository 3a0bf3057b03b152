"""OPC UA transport and BMS simulator against one aggregating server.

The simulator runs in a thread with its own event loop (a module fixture: one
asyncua server costs about a second to start); each test drives its clients
with ``asyncio.run`` and reaches the simulator through :meth:`SimThread.call`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from asyncua.client.client import Client

from devices.opcua import (
    OpcUaSession,
    SecurityConfig,
    parse_endpoint,
    profile_nodes,
    quality_of,
)
from devices.profile import Profile, load_profile
from devices.sim.bms import BmsSimulator
from runtime.errors import ConfigError, DeviceUnavailableError, RejectedError
from runtime.inventory import Equipment

T = TypeVar("T")
PROFILE_PATH = "devices/profiles/bms.toml"
BUILDINGS = ("bld-t1", "bld-t2", "bld-t3", "bld-t4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimThread:
    """A BmsSimulator living in its own thread and event loop."""

    def __init__(self, sim: BmsSimulator) -> None:
        self.sim = sim
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.sim.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile(PROFILE_PATH)


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sim(profile: Profile, port: int) -> Iterator[SimThread]:
    equipment = [
        Equipment(id=b, kind="building", municipality="testville", lat=45.0, lon=5.0,
                  endpoint=f"opcua://127.0.0.1:{port}/bld/{b}", profile="bms")
        for b in BUILDINGS
    ]
    st = SimThread(BmsSimulator(equipment, profile, event_rate=0.0))
    try:
        st.call(lambda: st.sim.start(autorun=False))
        yield st
    finally:
        st.close()


def endpoint(port: int, building: str) -> str:
    return f"opcua://127.0.0.1:{port}/bld/{building}"


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def test_profile_nodes_cover_fields_and_blocks(profile: Profile) -> None:
    refs = {r.key: r.node_id for r in profile_nodes(profile, "bld-x", {})}
    assert refs["mode"] == "ns=2;s=bld-x.mode"
    assert refs["fire_zone.4.alarm"] == "ns=2;s=bld-x.fire.zone4"
    assert refs["door.6.locked"] == "ns=2;s=bld-x.door6.locked"
    assert len(refs) == 4 + 4 + 4 + 12
    assert profile.poll_interval_s == 2.0 and profile.timeout_s == 1.0


def test_endpoint_and_security_validation(tmp_path: Any) -> None:
    assert parse_endpoint("opcua://127.0.0.1:4841/bld/bld-a-0001") == ("127.0.0.1", 4841,
                                                                       "bld-a-0001")
    for bad in ("opc.tcp://h:1/bld/x", "opcua://h/bld/x", "opcua://h:1/x", "opcua://h:1/bld/",
                "opcua://h:99999/bld/x", "opcua://h:1/bld/x/y"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad)
    with pytest.raises(ConfigError):
        SecurityConfig(mode="Encrypt")
    with pytest.raises(ConfigError):
        SecurityConfig(mode="SignAndEncrypt")  # no certificate
    with pytest.raises(ConfigError):
        SecurityConfig(mode="Sign", certificate=str(tmp_path / "missing.pem"),
                       private_key=str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError):
        OpcUaSession("opcua://127.0.0.1:1/bld/x", timeout_s=0)


def test_connect_refused_is_unavailable() -> None:
    async def main() -> float:
        session = OpcUaSession(endpoint(free_port(), "bld-x"), timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailableError):
            await session.connect()
        assert not session.connected
        return time.monotonic() - t0
    assert run(main()) < 2.0


def test_asyncua_client_browses_and_reads_profile_nodes(sim: SimThread, port: int,
                                                        profile: Profile) -> None:
    async def main() -> None:
        async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=2) as client:
            assert (await client.get_namespace_array())[2] == "urn:commandpost:bms"
            children = await client.nodes.objects.get_children()
            names = {(await c.read_browse_name()).Name for c in children}
            assert set(BUILDINGS) <= names
            building = await client.nodes.objects.get_child("2:bld-t1")
            assert len(await building.get_children()) == 24
            refs = profile_nodes(profile, "bld-t1", {})
            values = await client.read_values([client.get_node(r.node_id) for r in refs])
            by_key = dict(zip((r.key for r in refs), values, strict=True))
            assert by_key["online"] is True
            assert by_key["door.1.locked"] is False
            assert by_key["mode"] == 0
    run(main())


def test_session_reads_and_shares_one_connection(sim: SimThread, port: int) -> None:
    sim.call(lambda: sim.sim.tick(1.0))

    async def main() -> None:
        a = OpcUaSession(endpoint(port, "bld-t1"), timeout_s=1.0)
        b = OpcUaSession(endpoint(port, "bld-t2"), timeout_s=1.0)
        await a.connect()
        await b.connect()
        try:
            assert a._conn is b._conn and a._conn is not None and a._conn.refs == 2
            ids = [sim.sim.node_id("bld-t1", k) for k in ("online", "seq", "energy_wh")]
            got = await a.read(ids)
            assert got[ids[0]][:2] == (True, "good")
            assert got[ids[1]][0] == sim.sim.value("bld-t1", "seq") >= 1
            assert got[ids[2]][0] > 0.0
            assert abs(got[ids[1]][2] - time.time()) < 60
        finally:
            await a.close()
            await b.close()
        assert a._conn is None
    run(main())


def test_subscription_delivers_seq_changes(sim: SimThread, port: int) -> None:
    async def main() -> None:
        session = OpcUaSession(endpoint(port, "bld-t1"), timeout_s=1.0)
        await session.connect()
        seen: list[tuple[str, Any, str, float]] = []
        seq_id = sim.sim.node_id("bld-t1", "seq")
        try:
            handle = await session.subscribe([seq_id], lambda *a: seen.append(a), 0.05)
            await until(lambda: seen, what="initial value")
            first = seen[-1][1]
            await asyncio.to_thread(sim.call, lambda: sim.sim.tick(1.0))
            await until(lambda: seen[-1][1] == first + 1, what="seq change")
            assert seen[-1][0] == seq_id and seen[-1][2] == "good"
            await handle.unsubscribe()
            assert not handle.active
        finally:
            await session.close()
    run(main())


def test_events_reach_their_building_only(sim: SimThread, port: int) -> None:
    async def main() -> None:
        s1 = OpcUaSession(endpoint(port, "bld-t1"), timeout_s=1.0)
        s2 = OpcUaSession(endpoint(port, "bld-t2"), timeout_s=1.0)
        await s1.connect()
        await s2.connect()
        got1: list[tuple[str, str, dict[str, Any]]] = []
        got2: list[tuple[str, str, dict[str, Any]]] = []
        try:
            await s1.subscribe_events(lambda *a: got1.append(a), 0.05)
            await s2.subscribe_events(lambda *a: got2.append(a), 0.05)
            await asyncio.to_thread(sim.call, lambda: sim.sim.raise_event("bld-t1", "fire",
                                                                          zone=3))
            await asyncio.to_thread(sim.call, lambda: sim.sim.raise_event("bld-t2", "badge",
                                                                          door=2))
            await until(lambda: got1 and got2, what="both events")
            assert got1[0][:2] == ("bld-t1", "fire") and got1[0][2]["zone"] == 3
            assert got2[0][:2] == ("bld-t2", "badge") and got2[0][2]["door"] == 2
            await asyncio.sleep(0.2)
            assert len(got1) == 1 and len(got2) == 1
            fire = await s1.read([sim.sim.node_id("bld-t1", "fire_zone.3.alarm")])
            assert next(iter(fire.values()))[0] is True
        finally:
            await s1.close()
            await s2.close()
    run(main())
    assert sim.sim.counters.events["fire"] >= 1


def test_write_mode_lockdown_is_applied(sim: SimThread, port: int) -> None:
    async def main() -> None:
        session = OpcUaSession(endpoint(port, "bld-t3"), timeout_s=1.0)
        await session.connect()
        try:
            await session.write(sim.sim.node_id("bld-t3", "mode"), 2, "i32")
            await until(lambda: any(c.building_id == "bld-t3" for c in sim.sim.commands),
                        what="command recorded")
            doors = [sim.sim.node_id("bld-t3", f"door.{n}.locked") for n in range(1, 7)]
            got = await session.read(doors)
            assert [(val, qual) for val, qual, _ in got.values()] == [(True, "good")] * 6
            await session.write(sim.sim.node_id("bld-t3", "door.2.locked"), False, "bool")
            await until(lambda: sim.sim.value("bld-t3", "door.2.locked") is False,
                        what="door unlocked")
        finally:
            await session.close()
    run(main())
    cmd = next(c for c in sim.sim.commands if c.building_id == "bld-t3")
    assert (cmd.key, cmd.value, cmd.applied) == ("mode", 2, True)
    assert sim.sim.value("bld-t3", "mode") == 2


def test_refused_writes_carry_the_status_name(sim: SimThread, port: int) -> None:
    async def main() -> None:
        session = OpcUaSession(endpoint(port, "bld-t3"), timeout_s=1.0)
        await session.connect()
        try:
            cases = [
                ("ns=2;s=bld-t3.no_such_node", 1, "i32", "BadNodeIdUnknown"),
                (sim.sim.node_id("bld-t3", "door.1.locked"), 1, "i32", "BadTypeMismatch"),
                (sim.sim.node_id("bld-t3", "seq"), 5, "u32", "BadUserAccessDenied"),
                (sim.sim.node_id("bld-t3", "mode"), "x", "i32", "bad_value"),
            ]
            for node_id, value, type_, code in cases:
                with pytest.raises(RejectedError) as info:
                    await session.write(node_id, value, type_)
                assert info.value.code == code, node_id
            with pytest.raises(RejectedError) as info:
                await session.read(["ns=2;s=bld-t3.no_such_node"])
            assert info.value.code == "BadNodeIdUnknown"
        finally:
            await session.close()
    run(main())


def test_offline_building_turns_bad(sim: SimThread, port: int) -> None:
    async def main() -> None:
        session = OpcUaSession(endpoint(port, "bld-t4"), timeout_s=1.0)
        await session.connect()
        seq_id = sim.sim.node_id("bld-t4", "seq")
        seen: list[tuple[str, Any, str, float]] = []
        try:
            await session.subscribe([seq_id], lambda *a: seen.append(a), 0.05)
            await until(lambda: seen, what="initial value")
            await asyncio.to_thread(sim.call, lambda: sim.sim.set_offline("bld-t4", True))
            await until(lambda: seen[-1][2] == "bad", what="bad quality delivered")
            assert seen[-1][1] is None
            assert (await session.read([seq_id]))[seq_id][:2] == (None, "bad")
            await asyncio.to_thread(sim.call, lambda: sim.sim.set_offline("bld-t4", False))
            await until(lambda: seen[-1][2] == "good", what="good quality again")
            assert (await session.read([seq_id]))[seq_id][1] == "good"
        finally:
            await session.close()
    run(main())
    assert quality_of(None) == "good"


def test_server_restart_then_session_recovers(sim: SimThread, port: int) -> None:
    server = sim.sim.server_of("bld-t2")

    async def main() -> None:
        session = OpcUaSession(endpoint(port, "bld-t2"), timeout_s=1.0, reconnect_max_s=1.0)
        await session.connect()
        seq_id = sim.sim.node_id("bld-t2", "seq")
        seen: list[tuple[str, Any, str, float]] = []
        try:
            await session.subscribe([seq_id], lambda *a: seen.append(a), 0.05)
            await until(lambda: seen, what="initial value")
            await asyncio.to_thread(sim.call, server.stop)
            t0 = time.monotonic()
            with pytest.raises(DeviceUnavailableError):
                await session.read([seq_id])
            assert time.monotonic() - t0 < session.timeout_s + 0.5
            await asyncio.to_thread(sim.call, server.start)
            await asyncio.to_thread(sim.call, lambda: sim.sim.tick(1.0))

            async def readable() -> bool:
                try:
                    await session.read([seq_id])
                except DeviceUnavailableError:
                    return False
                except RejectedError as exc:
                    # A server still starting may deny a session its first reads.
                    if "BadUserAccessDenied" not in str(exc):
                        raise
                    return False
                return True

            deadline = time.monotonic() + 15
            while not await readable():
                assert time.monotonic() < deadline, "session did not reconnect"
                await asyncio.sleep(0.1)
            target = sim.sim.value("bld-t2", "seq")
            await asyncio.to_thread(sim.call, lambda: sim.sim.tick(1.0))
            await until(lambda: seen[-1][1] == target + 1, timeout=10,
                        what="subscription resumed")
        finally:
            await session.close()
    run(main())


#: Request encodings (OPC UA Part 6 binary) the relay can cut a connection on.
TRANSFER_SUBSCRIPTIONS = 841
CREATE_SUBSCRIPTION = 787


class CuttingRelay:
    """A TCP relay to an OPC UA server that cuts connections on demand.

    :meth:`cut_all` drops every open connection; once :attr:`cut_on` holds
    request type ids, the next connection whose client sends one of them is
    dropped before the request reaches the server (once).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.cut_on: set[int] = set()
        self.cuts = 0
        self.connections = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.cut_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._open |= {c_writer, s_writer}

        async def upstream() -> None:
            while True:
                header = await c_reader.readexactly(8)
                body = await c_reader.readexactly(int.from_bytes(header[4:8], "little") - 8)
                # MSG chunk, security None: channel, token, sequence and request
                # ids, then the request's type as a four-byte NodeId.
                if header[:3] == b"MSG" and body[16] == 0x01 and self.cut_on:
                    kind = int.from_bytes(body[18:20], "little")
                    if kind in self.cut_on:
                        self.cut_on.clear()
                        self.cuts += 1
                        c_writer.transport.abort()
                        s_writer.transport.abort()
                        return
                s_writer.write(header + body)
                await s_writer.drain()

        async def downstream() -> None:
            while data := await s_reader.read(65536):
                c_writer.write(data)
                await c_writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (c_writer, s_writer):
                self._open.discard(writer)
                writer.transport.abort()


def test_subscriptions_resume_when_their_restoration_is_cut(sim: SimThread, port: int) -> None:
    """A reconnection cut while asyncua restores the subscriptions still ends with them live."""

    async def main() -> None:
        relay = CuttingRelay(port)
        await relay.start()
        session = OpcUaSession(endpoint(relay.port, "bld-t3"), timeout_s=1.0,
                               reconnect_max_s=1.0)
        seq_id = sim.sim.node_id("bld-t3", "seq")
        seen: list[tuple[str, Any, str, float]] = []
        events: list[tuple[str, str, dict[str, Any]]] = []
        try:
            await session.connect()
            await session.subscribe([seq_id], lambda *a: seen.append(a), 0.05)
            await session.subscribe_events(lambda *a: events.append(a), 0.05)
            await until(lambda: seen, what="initial value")
            relay.cut_on = {TRANSFER_SUBSCRIPTIONS, CREATE_SUBSCRIPTION}
            relay.cut_all()
            await until(lambda: relay.cuts == 1, timeout=10, what="the restoration cut")
            await until(lambda: relay.connections >= 3, timeout=10, what="a second reconnection")
            target = sim.sim.value("bld-t3", "seq")
            await asyncio.to_thread(sim.call, lambda: sim.sim.tick(1.0))
            await until(lambda: seen[-1][1] == target + 1, timeout=15,
                        what="data changes resumed")
            await asyncio.to_thread(sim.call, lambda: sim.sim.raise_event("bld-t3", "badge",
                                                                          door=5))
            await until(lambda: events, timeout=15, what="events resumed")
            assert events[0][:2] == ("bld-t3", "badge") and events[0][2]["door"] == 5
        finally:
            await session.close()
            await relay.stop()
    run(main())


def test_simulator_groups_buildings_by_port(profile: Profile) -> None:
    def eq(i: int, port: int, name: str | None = None) -> Equipment:
        ident = f"bld-g-{i:04d}"
        return Equipment(id=ident, kind="building", municipality="testville", lat=45.0, lon=5.0,
                         endpoint=f"opcua://127.0.0.1:{port}/bld/{name or ident}", profile="bms")

    sim = BmsSimulator([eq(i, 4840 + i // 60) for i in range(180)], profile)
    assert sorted(s.port for s in sim.servers) == [4840, 4841, 4842]
    with pytest.raises(ConfigError):
        BmsSimulator([eq(1, 4840, name="other")], profile)
    with pytest.raises(ConfigError):
        BmsSimulator([], profile, event_rates={"earthquake": 1.0})
