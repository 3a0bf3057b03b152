"""The startup bench's checkpoint seeding: shapes and sizes as a running entity has them."""

from __future__ import annotations

import random

from actors.registry import BEHAVIOURS
from devices.profile import builtin_profile
from runtime.bench.startup import (
    SEED_VERSION,
    seed_checkpoint,
    seeded_desired,
    twin_values,
)
from runtime.entity import APPLIED_WINDOW, Checkpoint
from runtime.envelope import pack, unpack
from runtime.inventory import Equipment
from runtime.twin import Twin

NOW = 1_800_000_000.0


def _eq(eid: str, kind: str, profile: str, endpoint: str, **attrs: object) -> Equipment:
    return Equipment(id=eid, kind=kind, municipality="dijon", lat=47.32, lon=5.04,
                     endpoint=endpoint, profile=profile, attrs=attrs)


LIGHTING = _eq("lc-dijon-0001", "lighting_circuit", "lighting_cabinet",
               "modbus://127.0.0.1:5020/1", points=30)
BUILDING = _eq("bld-dijon-0001", "building", "bms", "opcua://127.0.0.1:4840/bld/bld-dijon-0001")
BUS = _eq("bus-dijon-0001", "vehicle", "bus", "mqtt://city/dijon/vehicle/bus-dijon-0001",
          line="L3")


def test_a_lighting_circuit_reports_every_lamp_as_one_block_entry() -> None:
    cp = seed_checkpoint(LIGHTING, {}, now=NOW, rng=random.Random(1))
    reported = cp.twin["reported"]
    assert set(reported) == {"mains_ok", "door_open", "earth_fault", "seq", "broadcast_on",
                             "broadcast_dim", "step_at", "step_on", "step_dim",
                             "step_taken_at", "lamp"}
    lamps = reported["lamp"]["value"]
    assert len(lamps) == 30
    assert all(set(lamp) == {"on", "dim", "power_w", "energy_wh", "fault_bits"} for lamp in lamps)
    # Ten cabinet fields (the two broadcast registers and the timed step's four among
    # them) and five per lamp.
    assert twin_values(reported) == 10 + 30 * 5
    for entry in reported.values():
        assert set(entry) == {"value", "quality", "source_ts", "received_ts", "seq"}
        assert entry["quality"] == "good"
        # Read within the last poll interval (the cabinet's profile: 5 s).
        assert NOW - 5.0 <= entry["source_ts"] <= entry["received_ts"] <= NOW + 1.0


def test_a_building_reports_each_node_apart_as_opc_ua_does() -> None:
    cp = seed_checkpoint(BUILDING, {}, now=NOW, rng=random.Random(2))
    reported = cp.twin["reported"]
    # online, seq, energy_wh, mode; 4 fire zones, 4 intrusion zones, 6 doors of two nodes.
    assert len(reported) == 4 + 4 + 4 + 6 * 2
    assert "door.6.locked" in reported and "fire_zone.1.alarm" in reported
    assert isinstance(reported["mode"]["value"], int)  # OPC UA carries the index
    assert twin_values(reported) == 24


def test_a_bus_reports_its_payload_keys() -> None:
    cp = seed_checkpoint(BUS, {}, now=NOW, rng=random.Random(3))
    reported = cp.twin["reported"]
    assert set(reported) == {f.name for f in builtin_profile("bus").fields}
    assert -3600 <= reported["delay_s"]["value"] <= 86400


def test_the_checkpoint_holds_the_state_of_a_running_entity() -> None:
    cp = seed_checkpoint(LIGHTING, {}, now=NOW, rng=random.Random(4))
    assert cp.version == SEED_VERSION
    assert len(cp.applied) == APPLIED_WINDOW
    assert set(cp.state) == {"samples", "lost", "seq", "online"}
    assert cp.state["samples"] == 720  # an hour at the cabinet's 5 s poll
    # It survives the trip through msgpack and loads into a twin.
    back = Checkpoint.from_dict(unpack(pack(cp.to_dict())))
    twin = Twin.from_dict(dict(back.twin))
    assert len(twin.reported) == 11
    assert 2_000 < len(pack(cp.to_dict())) < 8_000


def test_desired_comes_from_what_the_device_holds() -> None:
    held = {"mains_ok": True, "lamp": [{"on": True, "dim": 40, "power_w": 4.0}] * 30}
    desired = seeded_desired(BEHAVIOURS["lighting_circuit"].FIELDS,
                             builtin_profile("lighting_cabinet"), held)
    assert desired == {"on": True, "dim": 40.0}
    cp = seed_checkpoint(LIGHTING, held, now=NOW, rng=random.Random(5))
    assert cp.twin["desired"] == desired
    assert all(lamp["dim"] == 40 for lamp in cp.twin["reported"]["lamp"]["value"])


def test_desired_skips_what_the_profile_does_not_carry_or_the_kind_refuses() -> None:
    # A field the device's profile does not carry would only raise alarms once seeded.
    fields = {**BEHAVIOURS["vehicle"].FIELDS, **BEHAVIOURS["camera"].FIELDS}
    assert seeded_desired(fields, builtin_profile("bus"), {"preset": 3}) == {}
    assert seeded_desired(fields, builtin_profile("bus"), {"message": "hello"}) == {
        "message": "hello"}
    crossroad = BEHAVIOURS["crossroad"].FIELDS
    profile = builtin_profile("traffic_controller")
    assert seeded_desired(crossroad, profile, {"plan": 99, "mode": "auto"}) == {"mode": "auto"}
