"""The simulators' control channel over real HTTP, against real Modbus simulators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from devices.modbus import ModbusSession
from devices.profile import builtin_profile
from devices.sim.control import ControlServer, RemoteTarget, SimControl
from devices.sim.lighting import LightingSimulator
from devices.sim.traffic import TrafficSimulator
from runtime.embedded import free_port
from runtime.errors import RejectedError
from runtime.inventory import Equipment


def _eq(i: int, kind: str, profile: str, port: int, **attrs: object) -> Equipment:
    return Equipment(id=f"{kind[:2]}-{i}", kind=kind, municipality="dijon", lat=47.32,
                     lon=5.04, endpoint=f"modbus://127.0.0.1:{port}/{i}", profile=profile,
                     attrs=dict(attrs))


def run(body: Callable[[SimControl, LightingSimulator, TrafficSimulator, int],
                       Awaitable[None]]) -> None:
    async def scenario() -> None:
        lport, tport = free_port(), free_port()
        lighting = LightingSimulator([_eq(1, "lighting_circuit", "lighting_cabinet", lport,
                                          points=3)], autotick=False)
        traffic = TrafficSimulator([_eq(1, "crossroad", "traffic_controller", tport)],
                                   autotick=False)
        await lighting.start()
        await traffic.start()
        inner = ControlServer([traffic])
        await inner.start()
        # The lighting simulator here, the traffic one behind a second channel.
        outer = ControlServer([lighting, RemoteTarget(inner.url, "modbus")])
        await outer.start()
        try:
            await asyncio.wait_for(body(SimControl(outer.url, timeout=5), lighting, traffic,
                                        lport), 60)
        finally:
            await outer.stop()
            await inner.stop()
            await traffic.stop()
            await lighting.stop()

    asyncio.run(scenario())


def test_counters_hold_and_values_through_the_channel() -> None:
    profile = builtin_profile("lighting_cabinet")
    first, count = profile.register_span({"points": 3})

    async def body(ctl: SimControl, lighting: LightingSimulator, traffic: TrafficSimulator,
                   port: int) -> None:
        session = ModbusSession("127.0.0.1", port, timeout_s=1.0)
        try:
            await session.read(1, first, count)
            await session.read(1, first, count)
            c = await asyncio.to_thread(ctl.counters)
            assert set(c["devices"]) == {"li-1", "cr-1"}
            assert c["devices"]["li-1"]["emitted"] == 2
            assert c["devices"]["li-1"]["protocol"] == "modbus"
            await asyncio.to_thread(ctl.hold, True)
            await session.read(1, first, count)
            assert (await asyncio.to_thread(ctl.counters, ["li-1"]))["devices"]["li-1"][
                "emitted"] == 2
            await asyncio.to_thread(ctl.hold, False)
            await session.write(1, *profile.encode_block_field("lamp", 0, "dim", 40))
            values = await asyncio.to_thread(ctl.values, "li-1")
            assert [lamp["dim"] for lamp in values["lamp"]] == [40, 100, 100]
            after = (await asyncio.to_thread(ctl.counters, ["li-1"]))["devices"]["li-1"]
            assert (after["writes"], after["actuations"], after["repeats"]) == (1, 1, 0)
        finally:
            await session.close()

    run(body)


def test_faults_offline_and_storms_reach_the_right_simulator() -> None:
    async def body(ctl: SimControl, lighting: LightingSimulator, traffic: TrafficSimulator,
                   port: int) -> None:
        await asyncio.to_thread(ctl.fault, "li-1", "mains")
        assert lighting.model("li-1").mains_ok is False
        await asyncio.to_thread(ctl.fault, "cr-1", "controller")  # through the remote
        assert traffic.model("cr-1").fault_bits == 1
        await asyncio.to_thread(ctl.offline, ["cr-1"])
        server, unit = traffic.location("cr-1")
        assert server._units[unit].offline
        await asyncio.to_thread(ctl.offline, ["cr-1"], False)
        assert not server._units[unit].offline
        await asyncio.to_thread(ctl.storm, ["li-1", "cr-1"], 0.3)
        lserver, lunit = lighting.location("li-1")
        assert lserver._units[lunit].offline and server._units[unit].offline
        for _ in range(100):
            if not lserver._units[lunit].offline and not server._units[unit].offline:
                break
            await asyncio.sleep(0.05)
        assert not lserver._units[lunit].offline and not server._units[unit].offline

    run(body)


def test_bad_requests_are_refused_with_a_reason() -> None:
    async def body(ctl: SimControl, lighting: LightingSimulator, traffic: TrafficSimulator,
                   port: int) -> None:
        with pytest.raises(KeyError):
            await asyncio.to_thread(ctl.fault, "nope-1", "mains")
        with pytest.raises(RejectedError, match="no fault 'fire'"):
            await asyncio.to_thread(ctl.fault, "li-1", "fire")
        with pytest.raises(RejectedError, match="rate"):
            await asyncio.to_thread(ctl.loss, 1.5)
        with pytest.raises(RejectedError, match="seconds"):
            await asyncio.to_thread(ctl.storm, ["li-1"], 0)
        with pytest.raises(KeyError):
            await asyncio.to_thread(ctl.values, "nope-1")

    run(body)


def test_priority_receipts_and_counters_through_the_channel() -> None:
    profile = builtin_profile("traffic_controller")

    def request(command: str, request_id: int, approach: int) -> tuple[int, list[int]]:
        return profile.encode_block("prio_request", 0, {
            "prio_id": request_id, "prio_command": command, "prio_approach": approach,
            "prio_type": "early_green", "prio_eta_s": 8, "prio_deadline_s": 30,
            "prio_max_extension_s": 5})

    async def body(ctl: SimControl, lighting: LightingSimulator, traffic: TrafficSimulator,
                   port: int) -> None:
        server, unit = traffic.location("cr-1")
        session = ModbusSession("127.0.0.1", server.port, timeout_s=1.0)
        try:
            start = time.time()
            await session.write(unit, *request("request", 501, 3))
            await session.write(unit, *request("request", 501, 3))  # sent again: an update
            await session.write(unit, *request("cancel", 501, 0))
            await session.write(unit, *request("cancel", 502, 0))
            # A write of the plan is no priority write: not in the log.
            await session.write(unit, *profile.encode_field("plan", 1))
            end = time.time()
        finally:
            await session.close()
        # Through the outer channel, from the traffic simulator behind the remote one.
        records = await asyncio.to_thread(ctl.priority_log, "cr-1")
        assert [(r["device"], r["request_id"], r["command"], r["approach"], r["duplicate"])
                for r in records] == [("cr-1", 501, "request", 3, False),
                                      ("cr-1", 501, "request", 3, True),
                                      ("cr-1", 501, "cancel", 0, False),
                                      ("cr-1", 502, "cancel", 0, False)]
        stamps = [r["ts"] for r in records]
        assert start <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= end
        assert await asyncio.to_thread(ctl.priority_log) == records  # every controller's
        later = await asyncio.to_thread(ctl.priority_log, None, stamps[1])
        assert [r["command"] for r in later] == ["cancel", "cancel"]
        counters = (await asyncio.to_thread(ctl.counters, ["cr-1"]))["devices"]["cr-1"]
        assert counters["priority"] == {
            "received": 2, "duplicates": 1, "checkouts": 0, "cancels": 2, "granted": 1,
            "refused": {"unknown_id": 1}, "served": 0, "expired": 0, "cleared": 1,
            "dropped": 0}
        assert counters["writes"] == 5
        # Devices of other kinds have no priority counters and log nothing.
        lighting_counters = (await asyncio.to_thread(ctl.counters, ["li-1"]))["devices"]["li-1"]
        assert "priority" not in lighting_counters
        assert await asyncio.to_thread(ctl.priority_log, "li-1") == []
        with pytest.raises(KeyError):
            await asyncio.to_thread(ctl.priority_log, "nope-1")
        with pytest.raises(RejectedError, match="since"):
            await asyncio.to_thread(ctl.priority_log, None, float("nan"))

    run(body)
