"""The simulators' control channel over real HTTP, against real Modbus simulators."""

from __future__ import annotations

import asyncio
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
