"""The fire plan file (file:line errors, inventory check) and its intervention in dispatch."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.control.dispatch import DispatchCoordinator
from actors.fire_plan import (
    builtin_fire_plan,
    builtin_fire_text,
    load_fire_plan,
    parse_fire_plan,
)
from runtime.demo_inventory import build_demo
from runtime.envelope import Envelope, MessageKind
from runtime.errors import PlanError
from runtime.inventory import Equipment, Inventory
from tests.helpers import FakeContext

GOOD = """\
[fire]
description = "test"
confirm_s = 20.0

[[fire.step]]
do = "unlock_doors"
doors = "evacuation"

[[fire.step]]
do = "camera_preset"
preset = "fire"
"""


def test_the_shipped_plan_suits_the_demo() -> None:
    plan = builtin_fire_plan()
    assert [s.do for s in plan.steps] == ["unlock_doors", "camera_preset", "intervention"]
    assert plan.confirm_s == 0.0
    plan.check(build_demo(0.1))


def test_a_plan_parses_with_its_confirmation_step() -> None:
    plan = parse_fire_plan(GOOD, "f.toml")
    assert plan.confirm_s == 20.0
    assert plan.step("camera_preset") is not None and plan.step("intervention") is None
    assert plan.step("unlock_doors").line == 5  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace('doors = "evacuation"', 'doors = "evacuaton"'),
     "f.toml:7: fire.step[0].doors: unknown door tag 'evacuaton' (did you mean 'evacuation'?"),
    (GOOD.replace('do = "camera_preset"', 'do = "camera"'),
     "f.toml:10: fire.step[1].do: unknown step \"camera\""),
    (GOOD.replace('preset = "fire"', 'preset = "Fire!"'),
     "f.toml:11: fire.step[1].preset: expected a name"),
    (GOOD.replace('preset = "fire"', 'preset = "fire"\nrole = "police"'),
     "f.toml:12: fire.step[1].role: unknown key 'role'"),
    (GOOD.replace("confirm_s = 20.0", "confirm_s = -1"),
     "f.toml:3: fire.confirm_s: expected seconds in 0..600"),
    (GOOD + '\n[[fire.step]]\ndo = "unlock_doors"\ndoors = "service"\n',
     "f.toml:14: fire.step[2].do: the plan already has a 'unlock_doors' step"),
    ("[fire\n", "f.toml:1: syntax:"),
])
def test_a_bad_plan_names_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_fire_plan(text, "f.toml")
    assert any(issue.startswith(expected) for issue in err.value.issues), err.value.issues


def test_a_preset_or_door_tag_the_inventory_lacks_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "fire.toml"
    path.write_text(GOOD.replace('preset = "fire"', 'preset = "smoke"')
                    + '\n[[fire.step]]\ndo = "intervention"\nrole = "firemen"\n')
    plan = load_fire_plan(path)
    inv = build_demo(0.1)
    with pytest.raises(PlanError) as err:
        plan.check(inv)
    assert err.value.issues == [
        f"{path}:9: fire.step[1].preset: no camera watching a building has a preset 'smoke'",
        f"{path}:13: fire.step[2].role: no vehicle of the inventory has role 'firemen'"]
    doorless = Inventory(name=inv.name, municipalities=inv.municipalities, source=inv.source,
                         placement=inv.placement, equipment=tuple(
                             dataclasses.replace(eq, attrs={}) if eq.kind == "building" else eq
                             for eq in inv.equipment))
    with pytest.raises(PlanError) as err:
        parse_fire_plan(GOOD, "f.toml").check(doorless)
    assert err.value.issues == ["f.toml:5: fire.step[0].doors: no building of the inventory "
                                "has doors tagged 'evacuation'"]


def test_the_inventory_refuses_an_unknown_door_tag() -> None:
    from runtime.errors import InventoryError
    from runtime.inventory import dump_inventory, parse_inventory

    text = dump_inventory(build_demo(0.05)).replace("evacuation = [", "evacuaton = [", 1)
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inv.toml")
    assert "unknown door tag 'evacuaton'" in str(err.value)


# -- checked when the service starts -----------------------------------------------------

def test_a_broken_fire_plan_stops_the_service_before_it_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.fire_plan
    from runtime.service import Service

    inv = build_demo(0.01)
    broken = builtin_fire_text().replace('doors = "evacuation"',
                                                           'doors = "evacuaton"')
    monkeypatch.setattr(actors.fire_plan, "builtin_fire_text", lambda: broken)
    builtin_fire_plan.cache_clear()
    try:
        with pytest.raises(PlanError) as err:
            Service(inv)
    finally:
        builtin_fire_plan.cache_clear()
    line = next(i for i, text in enumerate(broken.split("\n"), 1) if "evacuaton" in text)
    assert err.value.issues == [
        f"actors/plans/fire.toml:{line}: fire.step[0].doors: unknown door tag 'evacuaton' "
        "(did you mean 'evacuation'? expected among evacuation, main_entrance, service)"]
    # Only an inventory with buildings runs the plan: without, the service starts.
    no_buildings = Inventory(inv.name, inv.municipalities,
                             tuple(eq for eq in inv.equipment if eq.kind != "building"))
    monkeypatch.setattr(actors.fire_plan, "builtin_fire_text", lambda: broken)
    try:
        assert Service(no_buildings).inventory is no_buildings
    finally:
        builtin_fire_plan.cache_clear()


def test_run_refuses_an_inventory_the_fire_plan_does_not_suit(tmp_path: Path) -> None:
    from runtime.inventory import dump_inventory

    text = dump_inventory(build_demo(0.01)).replace("evacuation = [", "main_entrance = [")
    path = tmp_path / "city.toml"
    path.write_text(text, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "run", "--inventory", str(path),
                          "--credentials-file", str(tmp_path / "creds.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    # At the line of the step, [[fire.step]], just above its do = "unlock_doors".
    line = next(i for i, text in enumerate(builtin_fire_text().split("\n"), 1)
                if text == 'do = "unlock_doors"') - 1
    assert out.stderr.splitlines() == [
        f"actors/plans/fire.toml:{line}: fire.step[0].doors: no building of the inventory has "
        "doors tagged 'evacuation'"]
    assert not (tmp_path / "creds.json").exists()  # refused before anything was written


# -- the plan's intervention -------------------------------------------------------------

def _vehicle_state(vid: str, role: str, lat: float) -> Envelope:
    return Envelope(target="dispatch", type="vehicle_state", sender=vid, kind=MessageKind.EVENT,
                    payload={"municipality": "dijon", "role": role, "radio": True, "lat": lat,
                             "lon": 5.04, "status": "available", "online": True})


def test_a_fire_dispatch_opens_one_intervention_for_the_plans_role() -> None:
    async def main() -> None:
        eq = Equipment(id="dispatch", kind="coordinator", municipality="metropolis", lat=47.32,
                       lon=5.04, endpoint="control:dispatch", profile="coordinator")
        ctx = FakeContext(eq, None)
        coord = DispatchCoordinator(ctx)
        await coord.on_start(None)
        await coord.handle(_vehicle_state("veh-1", "maintenance", 47.3201))  # nearer
        await coord.handle(_vehicle_state("veh-2", "fire_safety", 47.33))
        ev: dict[str, Any] = {"event": "fire_dispatch", "entity": "bld-dijon-0001",
                              "building": "bld-dijon-0001", "plan": "fire-bld-dijon-0001-1",
                              "role": "fire_safety", "lat": 47.32, "lon": 5.04,
                              "municipality": "dijon"}
        batch = Envelope(target="dispatch", type="events", kind=MessageKind.EVENT,
                         payload={"events": [ev]})
        await coord.handle(batch)
        await coord.handle(batch)  # handed over again: nothing new
        rec = coord.interventions["int-fire-bld-dijon-0001-1"]
        assert len(coord.interventions) == 1
        assert rec["state"] == "assigned" and rec["vehicle"] == "veh-2"
        assert rec["category"] == "building_fire"
        steps = [(f["building"], f["step"], f["state"]) for f in ctx.named("fire_plan_step")]
        assert steps == [("bld-dijon-0001", "intervention", "new"),
                         ("bld-dijon-0001", "intervention", "assigned")]
    asyncio.run(main())


def test_plan_check_validates_a_fire_plan_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    def check(path: Path | str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", "plan", "check", str(path)],
                              capture_output=True, text=True, timeout=120, check=False)

    ok = check("actors/plans/fire.toml")
    assert ok.returncode == 0 and "fire plan (3 steps" in ok.stdout, ok.stderr
    bad = tmp_path / "fire.toml"
    bad.write_text(GOOD.replace('preset = "fire"', 'preset = "smoke"'))
    out = check(bad)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"{bad}:9: fire.step[1].preset: no camera watching a "
                                  "building has a preset 'smoke'")
