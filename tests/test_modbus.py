"""Modbus: sessions against the simulators, fault injection, moved registers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from pymodbus.client import AsyncModbusTcpClient

from devices.modbus import ModbusServer, ModbusSession, ModbusSessions, parse_endpoint
from devices.profile import builtin_profile, load_profile
from devices.sim.access import TRAVEL_S, AccessSimulator
from devices.sim.lighting import LAMP_FAILED, LightingSimulator
from devices.sim.traffic import FACTORY_TABLE, TrafficModel, TrafficSimulator
from runtime.clock import ManualClock
from runtime.embedded import free_port
from runtime.errors import ConfigError, DeviceUnavailableError, ProtocolError, RejectedError
from runtime.inventory import Equipment

T = TypeVar("T")
TIMEOUT_S = 0.3


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


def equipment(n: int, kind: str, profile: str, port: int, **attrs: Any) -> list[Equipment]:
    return [
        Equipment(
            id=f"{kind[:2]}-{i}",
            kind=kind,
            municipality="dijon",
            lat=47.32,
            lon=5.04,
            endpoint=f"modbus://127.0.0.1:{port}/{i}",
            profile=profile,
            attrs=attrs,
        )
        for i in range(1, n + 1)
    ]


#: Plans the controllers of :func:`with_traffic` hold besides their factory plan 1 (a
#: controller refuses to select a plan its table does not hold).
STOCKED = (4, 5, 12)


async def with_traffic(
    body: Callable[[TrafficSimulator, ModbusSession, int], Awaitable[None]], n: int = 2
) -> None:
    port = free_port()
    sim = TrafficSimulator(equipment(n, "crossroad", "traffic_controller", port), autotick=False)
    for eid in sim.ids:
        for slot, number in enumerate(STOCKED, start=1):
            sim.model(eid).slots[slot] = {**FACTORY_TABLE, "number": number}
    await sim.start()
    session = ModbusSession("127.0.0.1", port, timeout_s=TIMEOUT_S)
    try:
        await body(sim, session, port)
    finally:
        await session.close()
        await sim.stop()


def test_parse_endpoint() -> None:
    assert parse_endpoint("modbus://127.0.0.1:15020/7") == ("127.0.0.1", 15020, 7)
    assert parse_endpoint("modbus://plc-3.local:502/0") == ("plc-3.local", 502, 0)
    for bad in ("modbus://h/1", "opcua://h:1/1", "modbus://h:0/1", "modbus://h:502/256", ""):
        with pytest.raises(ConfigError):
            parse_endpoint(bad)


def test_pymodbus_client_reads_what_the_profile_says() -> None:
    profile = builtin_profile("traffic_controller")

    async def body(sim: TrafficSimulator, _s: ModbusSession, port: int) -> None:
        sim.model("cr-2").plan = 9
        await sim.tick(0.1)
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1)
        assert await client.connect()
        try:
            first, count = profile.register_span({})
            for unit, plan in ((1, 1), (2, 9)):
                regs: list[int] = []
                for at in range(first, first + count, 125):  # 125 registers per request
                    rr = await client.read_holding_registers(
                        at, count=min(125, first + count - at), device_id=unit)
                    assert not rr.isError()
                    regs.extend(rr.registers)
                values = profile.decode_registers(first, regs, {})
                assert values["plan"] == plan and values["mode"] == "auto"
                assert values["phase"] == 1 and values["prio_status"] == "idle"
                assert values["prio_active"] == 0
                assert values["seq"] == sim.seq(f"cr-{unit}") >= 1
        finally:
            client.close()

    run(with_traffic(body))


def test_write_plan_changes_the_simulator_and_range_is_enforced() -> None:
    profile = builtin_profile("traffic_controller")

    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        address, regs = profile.encode_field("plan", 12)
        await session.write(2, address, regs)
        assert sim.model("cr-2").plan == 12 and sim.model("cr-1").plan == 1
        first, count = profile.register_span({})
        assert (
            profile.decode_registers(first, await session.read(2, first, count), {})["plan"] == 12
        )
        # The device itself refuses what the profile would have refused.
        with pytest.raises(RejectedError) as err:
            await session.write(2, address, [40])
        assert err.value.code == "modbus_exception_3"
        assert sim.model("cr-2").plan == 12
        assert sim.counters.writes_seen == 2 and sim.counters.writes_refused == 1
        # Read-only registers cannot be written.
        with pytest.raises(RejectedError) as err:
            await session.write(1, profile.field("phase").address or 0, [3])
        assert err.value.code == "modbus_exception_2"

    run(with_traffic(body))


def test_offline_unit_answers_exception_11_and_silent_one_times_out() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        sim.offline("cr-1")
        with pytest.raises(RejectedError) as err:
            await session.read(1, 0, 8)
        assert err.value.code == "modbus_exception_11"
        assert len(await session.read(2, 0, 8)) == 8  # the gateway's other units still answer
        sim.offline("cr-1", silent=True)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailableError):
            await session.read(1, 0, 8)
        assert time.monotonic() - t0 < TIMEOUT_S * 3
        sim.offline("cr-1", False)
        assert len(await session.read(1, 0, 8)) == 8

    run(with_traffic(body))


def test_injected_exception() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        sim.exception("cr-2", 6)
        for call in (session.read(2, 0, 1), session.write(2, 1, [3])):
            with pytest.raises(RejectedError) as err:
                await call
            assert err.value.code == "modbus_exception_6"
        sim.exception("cr-2", None)
        assert await session.read(2, 1, 1) == [1]
        assert sim.counters.faults_injected == 1

    run(with_traffic(body))


def test_slow_answer_is_a_timeout_then_recovers() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        sim.slow("cr-1", TIMEOUT_S * 2)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailableError, match="no answer"):
            await session.read(1, 0, 8)
        elapsed = time.monotonic() - t0
        assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S * 3
        sim.slow("cr-1", 0)
        # The late answer to the timed-out request must not be taken for this one.
        assert (await session.read(1, 1, 2)) == [1, 0]

    run(with_traffic(body))


def test_dropped_connections_reconnect_on_next_call() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        assert len(await session.read(1, 0, 8)) == 8
        assert session.connects == 1
        assert sim.drop_connections() == 1
        assert len(await session.read(1, 0, 8)) == 8
        assert session.connects == 2

    run(with_traffic(body))


def test_malformed_frame_is_a_protocol_error_and_session_recovers() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        sim.malformed("cr-1")
        with pytest.raises(ProtocolError):
            await session.read(1, 0, 8)
        with pytest.raises(ProtocolError):
            await session.write(1, 1, [4])
        sim.malformed("cr-1", False)
        assert len(await session.read(1, 0, 8)) == 8
        assert len(await session.read(2, 0, 8)) == 8
        server, _unit = sim.location("cr-1")
        assert server.counters.malformed_sent == 2

    run(with_traffic(body))


def test_connection_refused_is_unavailable() -> None:
    async def body() -> None:
        session = ModbusSession("127.0.0.1", free_port(), timeout_s=TIMEOUT_S)
        with pytest.raises(DeviceUnavailableError):
            await session.read(1, 0, 1)
        await session.close()

    run(body())


def test_sessions_share_one_connection_per_endpoint() -> None:
    async def body() -> None:
        port = free_port()
        server = ModbusServer(port, [1, 2, 3], size=16)
        await server.start()
        sessions = ModbusSessions(timeout_s=TIMEOUT_S)
        try:
            a = sessions.acquire("127.0.0.1", port)
            b = sessions.acquire("127.0.0.1", port)
            assert a is b and len(sessions) == 1
            server.set(3, 2, [5, 6])
            assert await a.read(3, 2, 2) == [5, 6]
            await a.write(1, 0, [9])
            assert server.get(1, 0, 1) == [9]
            await sessions.release(a)
            assert a.connected
            await sessions.release(b)
            assert not a.connected and len(sessions) == 0
            # A long read is split into several requests.
            big = ModbusServer(free_port(), [1], size=400)
            big.set(1, 0, list(range(400)))
            await big.start()
            s = ModbusSession("127.0.0.1", big.port, timeout_s=TIMEOUT_S)
            assert await s.read(1, 0, 400) == list(range(400))
            await s.close()
            await big.stop()
        finally:
            await sessions.close()
            await server.stop()

    run(body())


def _shifted_profile(tmp_path: Path, name: str, by: int) -> Path:
    """A copy of a builtin profile with every address (and block base) moved by ``by``."""
    source = Path(__file__).resolve().parents[1] / "devices" / "profiles" / f"{name}.toml"
    lines = []
    in_block_field = False
    for line in source.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_block_field = stripped == "[[block.field]]"
        key = stripped.split("=")[0].strip()
        if (key == "address" and not in_block_field) or key == "base":
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}{key} = {int(stripped.split('=')[1]) + by}"
        lines.append(line)
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_moved_registers_still_agree(tmp_path: Path) -> None:
    moved = load_profile(_shifted_profile(tmp_path, "lighting_cabinet", 7))
    original = builtin_profile("lighting_cabinet")
    assert moved.field("seq").address == (original.field("seq").address or 0) + 7
    assert moved.block("lamp").base == (original.block("lamp").base or 0) + 7
    attrs = {"points": 3}

    async def body() -> None:
        port = free_port()
        eqs = equipment(1, "lighting_circuit", "lighting_cabinet", port, points=3)
        sim = LightingSimulator(eqs, moved, autotick=False, failure_rate_per_h=0.0)
        await sim.start()
        session = ModbusSession("127.0.0.1", port, timeout_s=TIMEOUT_S)
        try:
            await session.write(1, *moved.encode_block_field("lamp", 2, "dim", 30))
            await session.write(1, *moved.encode_block_field("lamp", 0, "on", False))
            await sim.tick(1.0)
            first, count = moved.register_span(attrs)
            assert first == 7
            values = moved.decode_registers(first, await session.read(1, first, count), attrs)
            assert values["mains_ok"] is True
            assert [lamp["dim"] for lamp in values["lamp"]] == [100, 100, 30]
            assert [lamp["on"] for lamp in values["lamp"]] == [False, True, True]
            assert [lamp["power_w"] for lamp in values["lamp"]] == [0.0, 100.0, 30.0]
            assert values["seq"] == sim.seq("li-1")
            # The unmoved profile reads the same registers differently: the move is real.
            wrong = original.decode_registers(0, await session.read(1, 0, first + count), attrs)
            assert wrong["lamp"] != values["lamp"]
        finally:
            await session.close()
            await sim.stop()

    run(body())


def test_traffic_cycle_and_modes() -> None:
    profile = builtin_profile("traffic_controller")

    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        async def read() -> dict[str, Any]:
            first, count = profile.register_span({})
            return profile.decode_registers(first, await session.read(1, first, count), {})

        seen: list[int] = []
        for _ in range(800):  # 80 s in 0.1 s steps: more than one full cycle (73 s)
            await sim.tick(0.1)
            phase = sim.model("cr-1").values()["phase"]
            if not seen or seen[-1] != phase:
                seen.append(phase)
        assert seen[:10] == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]
        # From off, auto comes through flashing then all-red, as real controllers start;
        # manual (hold a stage) cannot start a controller.
        await session.write(1, *profile.encode_field("mode", "off"))
        with pytest.raises(RejectedError) as err:
            await session.write(1, *profile.encode_field("mode", "manual"))
        assert err.value.code == "modbus_exception_3"
        await session.write(1, *profile.encode_field("mode", "auto"))
        modes = []
        for _ in range(120):
            values = await read()
            if not modes or modes[-1] != values["mode"]:
                modes.append(values["mode"])
            assert values["phase"] == 0 or values["mode"] == "auto"
            await sim.tick(0.1)
        assert modes == ["start_flashing", "start_all_red", "auto"]
        assert (await read())["phase"] == 1
        await session.write(1, *profile.encode_field("mode", "flashing"))
        await session.write(1, *profile.encode_field("mode", "auto"))
        assert (await read())["mode"] == "auto"

    run(with_traffic(body, n=1))


# -- signal priority (NTCIP 1211 style) over the real simulator ------------------------

TRAFFIC: Final = builtin_profile("traffic_controller")


def prio(command: str = "request", request_id: int = 1, **fields: Any) -> tuple[int, list[int]]:
    """The registers of one priority request, checkout or cancel, written whole."""
    values = {"prio_id": request_id, "prio_command": command,
              "prio_approach": 1 if command == "request" else 0, "prio_type": "extension",
              "prio_eta_s": 10, "prio_deadline_s": 60, "prio_max_extension_s": 10}
    values.update({f"prio_{k}": v for k, v in fields.items()})
    return TRAFFIC.encode_block("prio_request", 0, values)


async def read_controller(session: ModbusSession, unit: int = 1) -> dict[str, Any]:
    first, count = TRAFFIC.register_span({})
    return TRAFFIC.decode_registers(first, await session.read(unit, first, count), {})


async def status(session: ModbusSession) -> tuple[int, str, str, int]:
    values = await read_controller(session)
    return (values["prio_status_id"], values["prio_status"], values["prio_reason"],
            values["prio_active"])


async def until(sim: TrafficSimulator, test: Callable[[TrafficModel], bool],
                limit_s: float = 200.0, step: float = 0.1) -> None:
    """Tick the simulator (its clock is the test's) until ``test`` holds."""
    model = sim.model("cr-1")
    for _ in range(round(limit_s / step)):
        if test(model):
            return
        await sim.tick(step)
    raise AssertionError(f"not reached within {limit_s} s of the controller's time")


class Stages:
    """Each stage the controller showed, with how long it lasted (s of its own clock)."""

    def __init__(self, model: TrafficModel) -> None:
        self.model = model
        self.done: list[tuple[int, str, float]] = []
        self._at = (model.phase, model.stage, model.now)

    def see(self) -> None:
        phase, stage, since = self._at
        now = (self.model.phase, self.model.stage)
        if now != (phase, stage):
            self.done.append((phase, stage, round(self.model.now - since, 6)))
            self._at = (*now, self.model.now)

    async def tick(self, sim: TrafficSimulator, seconds: float, step: float = 0.1) -> None:
        for _ in range(round(seconds / step)):
            await sim.tick(step)
            self.see()


def test_priority_request_is_granted_then_served() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        await sim.tick(2.0)  # phase 1 green for 2 s of its nominal 10
        before = time.time()
        # Approach 5 is phase 1's: the bus comes in 14 s, past the nominal green.
        await session.write(1, *prio(request_id=70_001, approach=5, eta_s=14))
        after = time.time()
        assert await status(session) == (70_001, "granted", "none", 1)
        stages = Stages(model)
        await stages.tick(sim, 30.0)
        # Held green until the bus has crossed (2 + 14 + 3 s), within 10 s of extension.
        assert stages.done[0][:2] == (1, "green")
        assert stages.done[0][2] == pytest.approx(19.0 - 2.0, abs=0.11)
        assert await status(session) == (70_001, "served", "none", 0)
        counts = sim.device_counters()["cr-1"].priority
        assert counts is not None
        assert (counts.received, counts.granted, counts.served, counts.duplicates) == (1, 1, 1, 0)
        log = sim.priority_log("cr-1")
        assert [(r["request_id"], r["command"], r["approach"], r["duplicate"]) for r in log] == [
            (70_001, "request", 5, False)]
        assert before <= log[0]["ts"] <= after
        assert sim.priority_log("cr-1", since=log[0]["ts"]) == []
        # The request block reads back what was written last.
        assert (await read_controller(session))["prio_request"][0]["prio_id"] == 70_001

    run(with_traffic(body, n=1))


def test_priority_extension_stops_at_its_limit() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        await sim.tick(1.0)
        # The bus is 40 s away: the runtime allows 30 s, the controller grants 15.
        await session.write(1, *prio(request_id=2, eta_s=40, max_extension_s=30))
        assert await status(session) == (2, "granted", "max_extension", 1)
        stages = Stages(model)
        await stages.tick(sim, 30.0)
        assert stages.done[0][:2] == (1, "green")
        assert stages.done[0][2] == pytest.approx(10.0 + 15.0 - 1.0, abs=0.11)
        assert await status(session) == (2, "served", "max_extension", 0)

    run(with_traffic(body, n=1))


def test_early_green_keeps_minimum_green_and_clearance() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        await until(sim, lambda m: m.phase == 3 and m.stage == "green")
        await sim.tick(1.0)
        # Approach 1 (phase 1) asks for an early green while phase 3 has had 1 s of green.
        await session.write(1, *prio(request_id=3, approach=1, type="early_green", eta_s=12))
        assert await status(session) == (3, "granted", "min_green", 1)
        stages = Stages(model)
        await stages.tick(sim, 30.0)
        # Phase 3 ends at its minimum (5 s), amber and all-red in full, then phase 1.
        assert stages.done[:4] == [(3, "green", pytest.approx(4.0, abs=0.11)),
                                   (3, "amber", pytest.approx(3.0, abs=0.11)),
                                   (3, "all_red", pytest.approx(2.0, abs=0.11)),
                                   (1, "green", pytest.approx(10.0, abs=0.11))]
        assert await status(session) == (3, "served", "none", 0)

    run(with_traffic(body, n=1))


def test_early_green_keeps_the_pedestrian_minimum() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        await until(sim, lambda m: m.phase == 5 and m.stage == "green")
        await sim.tick(0.5)
        await session.write(1, *prio(request_id=4, approach=2, type="early_green", eta_s=8))
        assert await status(session) == (4, "granted", "pedestrian_min", 1)
        stages = Stages(model)
        await stages.tick(sim, 25.0)
        # The pedestrian phase keeps its 6 s, then phase 2 comes before phase 1.
        assert stages.done[:4] == [(5, "green", pytest.approx(5.5, abs=0.11)),
                                   (5, "amber", pytest.approx(3.0, abs=0.11)),
                                   (5, "all_red", pytest.approx(2.0, abs=0.11)),
                                   (2, "green", pytest.approx(10.0, abs=0.11))]

    run(with_traffic(body, n=1))


def test_priority_request_expires_at_its_deadline_without_any_write() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        # Approach 4 (phase 4) by extension: it waits for phase 4's green, 5 s at most.
        await session.write(1, *prio(request_id=5, approach=4, eta_s=3, deadline_s=5))
        assert await status(session) == (5, "granted", "none", 1)
        writes = sim.counters.writes_seen
        await sim.tick(4.9)
        assert model.requests and (await status(session))[1] == "granted"
        await sim.tick(0.2)
        assert await status(session) == (5, "expired", "deadline", 0)
        assert sim.counters.writes_seen == writes
        counts = sim.device_counters()["cr-1"].priority
        assert counts is not None and (counts.expired, counts.served) == (1, 0)
        # A deadline is capped by the controller: 600 s asked, 120 s kept.
        await session.write(1, *prio(request_id=6, approach=4, eta_s=3, deadline_s=600))
        held = model.holds(6)
        assert held is not None and held.drop_at == pytest.approx(model.now + 120.0)

    run(with_traffic(body, n=1))


def test_checkout_clears_and_the_extension_ends_at_once() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        await sim.tick(1.0)
        await session.write(1, *prio(request_id=7, approach=1, eta_s=15))
        stages = Stages(model)
        await stages.tick(sim, 11.0)  # 12 s of green: 2 s of extension so far
        assert model.stage == "green"
        await session.write(1, *prio("checkout", 7))
        assert await status(session) == (7, "cleared", "none", 0)
        await stages.tick(sim, 0.2)
        assert stages.done[0][:2] == (1, "green") and stages.done[0][2] <= 11.1 + 1e-6
        # A cancel before the nominal green has run keeps it: never less than planned.
        await until(sim, lambda m: m.phase == 2 and m.stage == "green")
        await sim.tick(1.0)
        await session.write(1, *prio(request_id=8, approach=2, eta_s=20))
        await sim.tick(1.0)
        await session.write(1, *prio("cancel", 8))
        stages = Stages(model)
        await stages.tick(sim, 10.0)
        assert stages.done[0] == (2, "green", pytest.approx(10.0 - 2.0, abs=0.11))
        counts = sim.device_counters()["cr-1"].priority
        assert counts is not None
        assert (counts.checkouts, counts.cancels, counts.cleared) == (1, 1, 2)
        assert [r["command"] for r in sim.priority_log("cr-1")] == [
            "request", "checkout", "request", "cancel"]

    run(with_traffic(body, n=1))


def test_unknown_ids_bad_requests_and_malformed_writes_are_refused() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        await session.write(1, *prio("cancel", 99))
        assert await status(session) == (99, "refused", "unknown_id", 0)
        await session.write(1, *prio("checkout", 98))
        assert await status(session) == (98, "refused", "unknown_id", 0)
        await session.write(1, *prio(request_id=0))
        assert await status(session) == (0, "refused", "bad_request", 0)
        await session.write(1, *prio(request_id=9, approach=0))
        assert await status(session) == (9, "refused", "bad_request", 0)
        await session.write(1, *prio(request_id=10, eta_s=30, deadline_s=20))
        assert await status(session) == (10, "refused", "bad_request", 0)
        # Approach 5 is phase 1, approach 8 phase 4: every approach has a vehicle phase
        # in the factory plan; none is refused for want of one.
        await session.write(1, *prio(request_id=11, approach=8))
        assert (await status(session))[:2] == (11, "granted")
        # Malformed: part of the block, a raw value no choice or range allows.
        address, regs = prio(request_id=12)
        for bad in ((address + 2, regs[2:4]), (address, [*regs[:3], 9, *regs[4:]]),
                    (address, [*regs[:2], 7, *regs[3:]])):
            with pytest.raises(RejectedError) as err:
                await session.write(1, *bad)
            assert err.value.code == "modbus_exception_3"
        assert (await status(session))[:2] == (11, "granted")
        counts = sim.device_counters()["cr-1"].priority
        assert counts is not None
        assert counts.refused == {"unknown_id": 2, "bad_request": 3}
        assert sim.model("cr-1").refusals == [
            "a priority request is written whole, not prio_approach, prio_command"]

    run(with_traffic(body, n=1))


def test_priority_is_refused_outside_auto_and_dropped_when_leaving_it() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        await session.write(1, *prio(request_id=20, approach=2))
        await session.write(1, *prio(request_id=21, approach=3))
        assert await status(session) == (21, "queued", "none", 2)
        await session.write(1, *TRAFFIC.encode_field("mode", "flashing"))
        values = await read_controller(session)
        assert (values["prio_status"], values["prio_reason"], values["prio_active"]) == (
            "cleared", "mode", 0)
        await session.write(1, *prio(request_id=22, approach=2))
        assert await status(session) == (22, "refused", "mode", 0)
        assert (await read_controller(session))["phase"] == 0
        counts = sim.device_counters()["cr-1"].priority
        assert counts is not None and counts.dropped == 2 and counts.refused == {"mode": 1}
        # A fault forcing flashing drops what is held too.
        await session.write(1, *TRAFFIC.encode_field("mode", "auto"))
        await sim.tick(3.0)
        await session.write(1, *prio(request_id=23, approach=2))
        await sim.fault("cr-1", "lamp", True)
        assert await status(session) == (23, "cleared", "mode", 0)

    run(with_traffic(body, n=1))


def test_a_resent_request_is_an_update_counted_as_a_duplicate() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        model = sim.model("cr-1")
        await session.write(1, *prio(request_id=30, approach=3, eta_s=30, deadline_s=40))
        await sim.tick(1.0)
        await session.write(1, *prio(request_id=30, approach=3, eta_s=20, deadline_s=60))
        assert await status(session) == (30, "granted", "duplicate", 1)
        held = model.holds(30)
        assert held is not None
        assert (held.due, held.drop_at) == (pytest.approx(model.now + 20),
                                            pytest.approx(model.now + 60))
        # Another approach under the same id is refused; the request held is kept.
        await session.write(1, *prio(request_id=30, approach=4))
        assert await status(session) == (30, "refused", "bad_request", 1)
        await session.write(1, *prio(request_id=31, approach=2))
        assert await status(session) == (31, "queued", "none", 2)
        await session.write(1, *prio("checkout", 30))
        assert await status(session) == (30, "cleared", "none", 1)
        assert model.requests[0].id == 31
        # A request finished with is served once: sent again, it is refused.
        await session.write(1, *prio(request_id=30, approach=3))
        assert await status(session) == (30, "refused", "duplicate", 1)
        counts = sim.device_counters()["cr-1"].priority
        assert counts is not None
        assert (counts.received, counts.duplicates, counts.granted) == (5, 3, 2)
        assert [(r["request_id"], r["duplicate"]) for r in sim.priority_log("cr-1")
                if r["command"] == "request"] == [
            (30, False), (30, True), (30, True), (31, False), (30, True)]

    run(with_traffic(body, n=1))


def test_a_priority_request_by_name_goes_in_one_write() -> None:
    from devices.manager import HostDevices

    async def body(sim: TrafficSimulator, _session: ModbusSession, port: int) -> None:
        eq = equipment(1, "crossroad", "traffic_controller", port)[0]
        devices = HostDevices([eq], lambda env: None, {"host_id": "t", "replacing": True})
        await devices.start()
        try:
            device = devices.port(eq.id)
            assert device is not None and device.policy("prio_id") == "never"
            assert device.policy("prio_request.1.prio_command") == "never"
            assert device.policy("plan") == "reapply"
            writes = sim.counters.writes_seen
            await device.write({"prio_id": 40, "prio_command": "request", "prio_approach": 2,
                                "prio_type": "early_green", "prio_eta_s": 9,
                                "prio_deadline_s": 30, "prio_max_extension_s": 5},
                               command_id="p-40")
            assert sim.counters.writes_seen == writes + 1
            assert sim.model("cr-1").prio_status == "granted"
            await device.write({f"prio_request.1.{k}": v for k, v in (
                ("prio_id", 40), ("prio_command", "cancel"), ("prio_approach", 0),
                ("prio_type", "extension"), ("prio_eta_s", 0), ("prio_deadline_s", 0),
                ("prio_max_extension_s", 0))}, command_id="p-40-cancel")
            assert sim.counters.writes_seen == writes + 2
            assert sim.model("cr-1").prio_status == "cleared"
        finally:
            await devices.stop()

    run(with_traffic(body, n=1))


def test_each_answered_read_is_a_numbered_sample_and_hold_repeats_it() -> None:
    profile = builtin_profile("traffic_controller")
    first, count = profile.register_span({})
    seq_at = profile.field("seq").address or 0

    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        seqs = []
        for _ in range(3):
            values = profile.decode_registers(first, await session.read(1, first, count), {})
            seqs.append(values["seq"])
        assert seqs == [1, 2, 3]
        # A read that does not cover the seq register is not a sample.
        if seq_at > first:
            await session.read(1, first, 1)
        c = sim.device_counters()["cr-1"]
        assert (c.emitted, c.first_seq, c.last_seq) == (3, 1, 3)
        # Every field but seq, and every field of each plan table slot, per sample.
        blocks = sum(len(b.fields) * b.count for b in profile.blocks)
        assert c.points == 3 * (len(profile.fields) - 1 + blocks)
        sim.hold(True)
        again = profile.decode_registers(first, await session.read(1, first, count), {})
        assert again["seq"] == 3 and sim.device_counters()["cr-1"].emitted == 3
        sim.hold(False)
        after = profile.decode_registers(first, await session.read(1, first, count), {})
        assert after["seq"] == 4

    run(with_traffic(body, n=1))


def test_writes_are_counted_as_actuations_or_repeats() -> None:
    profile = builtin_profile("traffic_controller")

    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        await session.write(1, *profile.encode_field("plan", 4))
        await session.write(1, *profile.encode_field("plan", 4))
        await session.write(1, *profile.encode_field("plan", 5))
        c = sim.device_counters()["cr-1"]
        assert (c.writes, c.actuations, c.repeats) == (3, 2, 1)
        await sim.fault("cr-1", "controller", True)
        assert sim.model("cr-1").fault_bits == 1
        with pytest.raises(RejectedError):
            await sim.fault("cr-1", "fire", True)

    run(with_traffic(body, n=1))


def test_access_bollard_moves_and_request_resets() -> None:
    profile = builtin_profile("access_terminal")

    async def body() -> None:
        port = free_port()
        clock = ManualClock()
        sim = AccessSimulator(
            equipment(1, "access_terminal", "access_terminal", port), clock=clock, tick_hz=10
        )
        await sim.start()
        session = ModbusSession("127.0.0.1", port, timeout_s=TIMEOUT_S)
        first, count = profile.register_span({})

        async def read() -> dict[str, Any]:
            return profile.decode_registers(first, await session.read(1, first, count), {})

        try:
            assert (await read())["bollard"] == "down"
            await session.write(1, *profile.encode_field("request", "raise"))
            values = await read()
            assert values["bollard"] == "moving" and values["request"] == "raise"
            with pytest.raises(RejectedError) as err:
                await session.write(1, *profile.encode_field("request", "lower"))
            assert err.value.code == "modbus_exception_6"
            await clock.advance(TRAVEL_S / 2)
            assert (await read())["bollard"] == "moving"
            await clock.advance(TRAVEL_S / 2 + 0.2)
            values = await read()
            assert values["bollard"] == "up" and values["request"] == "none"
            sim.set_fault_bits("ac-1", 1)
            with pytest.raises(RejectedError) as err:
                await session.write(1, *profile.encode_field("request", "lower"))
            assert err.value.code == "modbus_exception_4"
        finally:
            await session.close()
            await sim.stop()

    run(body())


def test_lighting_energy_dimming_and_failures() -> None:
    profile = builtin_profile("lighting_cabinet")
    attrs = {"points": 4}

    async def body() -> None:
        port = free_port()
        eqs = equipment(2, "lighting_circuit", "lighting_cabinet", port, points=4)
        sim = LightingSimulator(eqs, autotick=False, nominal_w=50.0, failure_rate_per_h=0.0)
        await sim.start()
        session = ModbusSession("127.0.0.1", port, timeout_s=TIMEOUT_S)
        first, count = profile.register_span(attrs)

        async def read(unit: int) -> dict[str, Any]:
            return profile.decode_registers(first, await session.read(unit, first, count), attrs)

        try:
            await session.write(1, *profile.encode_block_field("lamp", 1, "dim", 40))
            sim.fail_lamp("li-1", 3)
            await sim.tick(3600.0)
            lamps = (await read(1))["lamp"]
            assert [lamp["power_w"] for lamp in lamps] == [50.0, 20.0, 50.0, 0.0]
            assert [lamp["energy_wh"] for lamp in lamps] == [50, 20, 50, 0]
            assert lamps[3]["fault_bits"] & LAMP_FAILED
            assert (await read(2))["lamp"][1]["dim"] == 100
            with pytest.raises(RejectedError) as err:
                await session.write(1, (profile.block("lamp").base or 0) + 1, [101])
            assert err.value.code == "modbus_exception_3"
            with pytest.raises(RejectedError) as err:
                await session.write(1, profile.block("lamp").base or 0, [2])  # a bool is 0 or 1
            assert err.value.code == "modbus_exception_3"
        finally:
            await session.close()
            await sim.stop()

    run(body())
    # A failure rate makes lamps fail, reproducibly for a seed.
    failures: list[Sequence[int]] = []
    for _ in range(2):
        eqs = equipment(1, "lighting_circuit", "lighting_cabinet", 1502, points=30)
        sim = LightingSimulator(eqs, autotick=False, failure_rate_per_h=0.05, seed=3)
        for _ in range(24):
            asyncio.run(sim.tick(3600.0))
        model = sim.model("li-1")
        failures.append([i for i, lamp in enumerate(model.lamps) if lamp.fault_bits])
    assert failures[0] and failures[0] == failures[1]


def test_simulator_restart_keeps_state_and_session_reconnects() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        await session.write(1, 1, [5])
        await sim.stop()
        with pytest.raises(DeviceUnavailableError):
            await session.read(1, 1, 1)
        await sim.start()
        assert await session.read(1, 1, 1) == [5]

    run(with_traffic(body, n=1))


def test_port_in_use_is_a_config_error() -> None:
    async def body() -> None:
        port = free_port()
        first = ModbusServer(port, [1])
        await first.start()
        second = ModbusServer(port, [1])
        try:
            with pytest.raises(ConfigError, match="cannot listen"):
                await second.start()
            assert not second.running
        finally:
            await first.stop()

    run(body())


def test_session_runs_on_uvloop_as_hosts_do() -> None:
    import uvloop

    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        await session.write(1, 1, [5])
        assert (await session.read(1, 1, 1)) == [5]
        assert session.connects == 1

    async def bounded() -> None:
        await asyncio.wait_for(with_traffic(body), 20)

    uvloop.run(bounded())


def test_urgent_call_goes_before_queued_polls() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        sim.slow("cr-1", 0.05)  # the first poll holds the session while the others queue
        order: list[str] = []

        async def poll(name: str) -> None:
            await session.read(1, 0, 1)
            order.append(name)

        async def command() -> None:
            await session.write(2, 1, [4], urgent=True)
            order.append("command")

        first = asyncio.ensure_future(poll("poll-0"))
        await asyncio.sleep(0.01)  # poll-0 is on the wire
        queued = [asyncio.ensure_future(poll(f"poll-{i}")) for i in range(1, 4)]
        await asyncio.sleep(0)
        urgent = asyncio.ensure_future(command())
        await asyncio.gather(first, *queued, urgent)
        assert order == ["poll-0", "command", "poll-1", "poll-2", "poll-3"]

    run(with_traffic(body))


def test_cancelled_caller_passes_its_turn_on() -> None:
    async def body(sim: TrafficSimulator, session: ModbusSession, _port: int) -> None:
        sim.slow("cr-1", 0.05)
        first = asyncio.ensure_future(session.read(1, 0, 1))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(session.read(2, 0, 1))
        await asyncio.sleep(0)
        waiting.cancel()
        await first
        # The cancelled waiter neither kept the turn nor left the session locked.
        assert len(await asyncio.wait_for(session.read(2, 0, 2), 2)) == 2

    run(with_traffic(body))


def test_a_cabinet_takes_an_armed_step_at_its_time_and_a_lamp_write_cancels_one() -> None:
    """The simulated cabinet's timed step, armed over Modbus: taken at its instant between
    two ticks (the energy split there), one armed for a time past taken as it arrives, one
    pending cancelled by a write to the lamps; each lamp it sets counts as a write."""
    profile = builtin_profile("lighting_cabinet")

    async def arm(session: ModbusSession, at: float, on: bool, dim: int) -> None:
        for name, value in (("step_on", on), ("step_dim", dim), ("step_at", int(at))):
            await session.write(1, *profile.encode_field(name, value))

    async def body() -> None:
        port = free_port()
        eqs = equipment(1, "lighting_circuit", "lighting_cabinet", port, points=2)
        clock = ManualClock(start=0.0, wall_offset=1_800_000_000.0)
        sim = LightingSimulator(eqs, clock=clock, autotick=False, failure_rate_per_h=0.0)
        await sim.start()
        session = ModbusSession("127.0.0.1", port, timeout_s=TIMEOUT_S)
        try:
            t0 = clock.time()
            await arm(session, t0 + 1800.0, False, 100)
            await clock.advance(3600.0)
            await sim.tick(3600.0)
            values = sim.held_values("li-1")
            assert [lamp["on"] for lamp in values["lamp"]] == [False, False]
            assert values["step_taken_at"] == int(t0 + 1800.0) and values["step_at"] == 0
            assert values["sim"]["step_ts"] == [t0 + 1800.0]
            # Two lamps at 100 W for the half hour before the step, nothing after.
            assert values["sim"]["burnt_wh"] == pytest.approx(100.0)
            counters = sim.device_counters()["li-1"]
            # Two lamps set (the registers armed are a setting, not a write to a lamp).
            assert (counters.writes, counters.repeats) == (2, 0)
            # Armed for a time already past: taken as the write arrives.
            await arm(session, t0, True, 40)
            assert [(lamp["on"], lamp["dim"]) for lamp in sim.held_values("li-1")["lamp"]] == [
                (True, 40)] * 2
            assert sim.held_values("li-1")["sim"]["step_ts"][-1] == clock.time()
            # A write to a lamp cancels the step pending: nothing changes at its time.
            await arm(session, clock.time() + 600.0, False, 100)
            await session.write(1, *profile.encode_block_field("lamp", 0, "dim", 30))
            assert sim.held_values("li-1")["step_at"] == 0
            await clock.advance(1200.0)
            await sim.tick(1200.0)
            assert [(lamp["on"], lamp["dim"]) for lamp in sim.held_values("li-1")["lamp"]] == [
                (True, 30), (True, 40)]
        finally:
            await session.close()
            await sim.stop()

    asyncio.run(body())
