"""Vehicles on a manual clock with a recording port: crew messages only by radio, stale
positions flagged and kept from dispatch (on an accelerated clock too), the vehicle's view
and the municipality its position lies in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import pytest

from actors.vehicle import Vehicle, has_radio, max_age_s
from runtime.envelope import Envelope, pack
from runtime.errors import InvalidCommandError, MalformedMessageError, RejectedError
from runtime.geo import demo_geography
from runtime.inventory import Equipment
from runtime.service import _equipment_record
from tests.helpers import FakeContext, FakePort, command, manual_clock, telemetry

T = TypeVar("T")
T0 = 1_780_000_000.0
OPERATOR = "user:ana:operator"
DIJON = (47.3220, 5.0415)
CHENOVE = (47.2915, 5.0085)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(bounded())


def service_vehicle(radio: bool | None, role: str = "gritter") -> Equipment:
    attrs: dict[str, Any] = {"role": role}
    if radio is not None:
        attrs["radio"] = radio
    return Equipment(id="veh-dijon-0001", kind="vehicle", municipality="dijon", lat=DIJON[0],
                     lon=DIJON[1], endpoint="mqtt", profile="service_vehicle", attrs=attrs)


def bus() -> Equipment:
    return Equipment(id="bus-dijon-0001", kind="vehicle", municipality="dijon", lat=DIJON[0],
                     lon=DIJON[1], endpoint="mqtt", profile="bus", attrs={"line": "L3"})


class Rig:
    def __init__(self, record: Equipment, speed: float = 1.0) -> None:
        self.clock = manual_clock(T0)
        self.clock.speed = speed  # an accelerated city clock
        self.port = FakePort({"message": "reapply"}, policy_default=None, readable=False)
        self.ctx = FakeContext(record, self.port, self.clock)
        self.entity = Vehicle(self.ctx)
        self.ctx.entity = self.entity
        self.seq = 0

    async def sample(self, lat: float, lon: float, *, age: float = 0.0,
                     **extra: Any) -> None:
        """A sample stamped ``age`` seconds (city time) ago."""
        self.seq += 1
        values = {"lat": lat, "lon": lon, "speed": 3.0, "heading": 90.0,
                  "status": "available", "job": "", "job_state": "idle", **extra}
        await self.entity.handle(telemetry(self.ctx.id, values, self.clock.time() - age,
                                           self.seq))

    def reports(self) -> list[Mapping[str, Any]]:
        return [e.payload for e in self.ctx.sent if e.type == "vehicle_state"]


def test_which_vehicles_have_a_radio() -> None:
    assert has_radio({"role": "police", "radio": True})
    assert not has_radio({"role": "police", "radio": False})
    assert not has_radio({"role": "police"})
    assert has_radio({"line": "L3"})  # a bus: the driver's console
    assert not has_radio({"line": "L3", "radio": False})


def test_a_crew_message_to_a_vehicle_without_radio_is_refused_at_the_edge() -> None:
    with pytest.raises(InvalidCommandError) as info:
        Vehicle.validate_command_for(service_vehicle(False), "set", {"message": "go"}, now=T0)
    assert (info.value.field, info.value.code) == ("params.message", "no_radio")
    assert "no radio" in str(info.value)
    with pytest.raises(InvalidCommandError):
        Vehicle.validate_command_for(service_vehicle(None), "set", {"message": "go"}, now=T0)
    assert Vehicle.validate_command_for(service_vehicle(True), "set", {"message": "go"},
                                        now=T0) == {"message": "go"}
    assert Vehicle.validate_command_for(bus(), "set", {"message": "go"}, now=T0) == {
        "message": "go"}
    # What every command is held to comes first.
    with pytest.raises(InvalidCommandError) as info:
        Vehicle.validate_command_for(service_vehicle(False), "set", {"colour": 1}, now=T0)
    assert info.value.field == "params.colour"


def test_the_entity_refuses_it_too_and_writes_nothing() -> None:
    async def body() -> None:
        silent = Rig(service_vehicle(False))
        await silent.entity.on_start(None)
        with pytest.raises(RejectedError) as info:
            await silent.entity.handle(command(silent.ctx.id, "c-1", "set", {"message": "go"},
                                               OPERATOR))
        assert info.value.code == "no_radio"
        assert silent.port.writes == [] and "message" not in silent.entity.twin.desired
        radio = Rig(service_vehicle(True))
        await radio.entity.on_start(None)
        await radio.entity.handle(command(radio.ctx.id, "c-2", "set", {"message": "go"},
                                          OPERATOR))
        assert radio.port.writes == [{"message": "go"}]

    run(body())


def test_profiles_say_how_old_a_position_may_be() -> None:
    assert max_age_s("bus") == 3.0
    assert max_age_s("service_vehicle") == 15.0
    assert max_age_s("camera") == 0.0
    assert max_age_s("no_such_profile") == 0.0


def test_an_old_sample_is_flagged_stale_and_its_position_not_used() -> None:
    async def body() -> None:
        rig = Rig(service_vehicle(True))
        await rig.entity.on_start(None)
        await rig.sample(*DIJON)
        assert rig.entity.state["position"]["stale"] is False
        assert rig.reports()[-1]["stale"] is False
        # A sample 20 s old (profile: 15 s): its status counts, its position does not.
        await rig.sample(*CHENOVE, age=20.0, status="busy")
        position = rig.entity.state["position"]
        assert (position["lat"], position["lon"], position["stale"]) == (*DIJON, True)
        assert rig.entity.twin.reported["lat"].value == DIJON[0]
        assert rig.entity.twin.reported["status"].value == "busy"
        assert rig.entity.state["stale_samples"] == 1
        last = rig.reports()[-1]
        assert (last["lat"], last["stale"], last["status"]) == (DIJON[0], True, "busy")
        assert [e["max_age_s"] for e in rig.ctx.named("position_stale")] == [15.0]
        # A fresh sample makes the position usable again.
        await rig.sample(*CHENOVE)
        assert rig.entity.state["position"] == {"lat": CHENOVE[0], "lon": CHENOVE[1],
                                                "ts": T0, "stale": False}

    run(body())


def test_a_position_no_sample_replaces_turns_stale_by_itself() -> None:
    async def body() -> None:
        rig = Rig(service_vehicle(True))
        await rig.entity.on_start(None)
        await rig.sample(*DIJON)
        await rig.ctx.advance_to(T0 + 14.9)
        assert rig.entity.state["position"]["stale"] is False
        await rig.ctx.advance_to(T0 + 16)
        assert rig.entity.state["position"]["stale"] is True
        assert rig.reports()[-1]["stale"] is True
        assert rig.entity.checkpoint().state["view"]["position"]["stale"] is True

    run(body())


def test_on_an_accelerated_clock_the_age_is_judged_in_the_machines_seconds() -> None:
    async def body() -> None:
        # A bus publishes every machine second: 60 city seconds apart at speed 60.
        rig = Rig(bus(), speed=60.0)
        await rig.entity.on_start(None)
        await rig.sample(*DIJON, age=120.0, line="L3", delay_s=30.0)  # 2 machine seconds
        assert rig.entity.state["position"]["stale"] is False
        await rig.sample(*CHENOVE, age=240.0, line="L3", delay_s=30.0)  # 4 machine s > 3
        assert rig.entity.state["position"]["lat"] == DIJON[0]
        assert rig.entity.state["stale_samples"] == 1
        # Without a newer sample, the last one goes stale 3 machine s (180 city s) after it.
        assert rig.entity.state["position"]["stale"] is True
        await rig.sample(*DIJON, line="L3", delay_s=30.0)
        await rig.ctx.advance_to(T0 + 179)
        assert rig.entity.state["position"]["stale"] is False
        await rig.ctx.advance_to(T0 + 181)
        assert rig.entity.state["position"]["stale"] is True

    run(body())


def test_a_bus_shows_line_direction_next_stop_and_lateness() -> None:
    async def body() -> None:
        rig = Rig(bus())
        await rig.entity.on_start(None)
        await rig.sample(*DIJON, line="L3", direction="inbound", next_stop="L3-07",
                         delay_s=95.0)
        reported = {k: v.value for k, v in rig.entity.twin.reported.items()}
        assert (reported["line"], reported["direction"], reported["next_stop"],
                reported["delay_s"]) == ("L3", "inbound", "L3-07", 95.0)
        view = rig.entity.checkpoint().state["view"]
        assert (view["service"], view["radio"]) == ("bus", True)
        assert rig.reports() == []  # a bus is not part of the dispatch fleet

    run(body())


def _record(eq: Equipment, position: Mapping[str, Any] | None) -> dict[str, Any]:
    state: dict[str, Any] = {"view": {"position": dict(position)}} if position else {}
    blob = pack({"state": state, "twin": {"reported": {}, "desired": {}}})
    return _equipment_record(eq, {"online": True}, blob, False, demo_geography)


def test_the_view_places_the_vehicle_in_a_municipality_beside_its_home() -> None:
    eq = service_vehicle(True)
    away = _record(eq, {"lat": CHENOVE[0], "lon": CHENOVE[1], "ts": T0, "stale": False})
    assert (away["home_municipality"], away["municipality_in"]) == ("dijon", "chenove")
    assert away["municipality"] == "dijon"  # scoping keeps the home municipality
    home = _record(eq, {"lat": DIJON[0], "lon": DIJON[1], "ts": T0, "stale": False})
    assert home["municipality_in"] == "dijon"
    stale = _record(eq, {"lat": CHENOVE[0], "lon": CHENOVE[1], "ts": T0, "stale": True})
    assert stale["municipality_in"] is None and stale["position"]["stale"] is True
    outside = _record(eq, {"lat": 47.5, "lon": 5.04, "ts": T0, "stale": False})
    assert outside["municipality_in"] is None
    assert _record(eq, None)["municipality_in"] is None


def test_the_view_comes_from_the_entity_checkpoint() -> None:
    async def body() -> None:
        rig = Rig(service_vehicle(True, role="fire_safety"))
        await rig.entity.on_start(None)
        await rig.sample(*CHENOVE)
        blob = pack(rig.entity.checkpoint().to_dict())
        record = _equipment_record(rig.ctx.equipment, {"online": True}, blob, False,
                                   demo_geography)
        assert (record["service"], record["radio"], record["municipality_in"]) == (
            "fire_safety", True, "chenove")

    run(body())


def test_a_malformed_sample_is_refused_without_touching_the_position() -> None:
    async def body() -> None:
        rig = Rig(service_vehicle(True))
        await rig.entity.on_start(None)
        await rig.sample(*DIJON)
        with pytest.raises(MalformedMessageError):
            await rig.entity.handle(Envelope(target=rig.ctx.id, type="telemetry",
                                             payload={"ts": "soon", "values": "x"}))
        assert rig.entity.state["position"]["lat"] == DIJON[0]

    run(body())


def test_the_simulated_unit_of_a_vehicle_without_radio_refuses_a_message_too() -> None:
    from devices.sim.mqtt_devices import MqttDeviceSimulator

    silent = service_vehicle(False)
    radio = Equipment(id="veh-dijon-0002", kind="vehicle", municipality="dijon",
                      lat=DIJON[0], lon=DIJON[1], endpoint="mqtt", profile="service_vehicle",
                      attrs={"role": "fire_safety", "radio": True})
    sim = MqttDeviceSimulator([silent, radio], url="mqtt://127.0.0.1:1")
    cmd = {"command_id": "c-1", "action": "set", "params": {"message": "go"}}
    error = sim._apply(sim._device(silent.id), cmd)
    assert error is not None and "no radio" in error
    assert sim.radio_refused == 1 and sim.values(silent.id)["message"] == ""
    assert sim._apply(sim._device(radio.id), cmd) is None
    assert sim.values(radio.id)["message"] == "go" and sim.radio_refused == 1
    assert sim.sample(radio.id)["role"] == "fire_safety"
