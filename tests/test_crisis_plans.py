"""Crisis plans as data: the shipped file, each refusal with its file and line, the check
against an inventory, and what a plan resolves to."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.plan import Candidate, builtin_plans, load_plans, parse_plans
from runtime.demo_inventory import build_demo
from runtime.errors import PlanError
from runtime.inventory import Equipment, Inventory, Municipality

SRC = "plans.toml"

GOOD = """\
[plan.flood]
description = "Flood"

[[plan.flood.step]]
kind = "access_terminal"
tags = ["flood_prone"]
set = { bollard = "up" }
masks = ["reconcile_required"]

[[plan.flood.step]]
kind = "camera"
preset = "flood"

[plan.snow]

[[plan.snow.step]]
kind = "vehicle"
role = "gritter"
set = { message = "grit {municipality}" }

[[plan.snow.step]]
kind = "lighting_circuit"
ids = ["lc-dijon-0001"]
set = { on = true, dim = 100 }
"""


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.split("\n"), start=1) if needle in line)


def _issues(text: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_plans(text, SRC)
    return info.value.issues


def test_a_good_file_reads_into_plans_and_steps() -> None:
    book = parse_plans(GOOD, SRC)
    flood = book.plan("flood")
    assert flood.description == "Flood" and flood.line == 1
    bollards, cameras = flood.steps
    assert (bollards.kind, bollards.tags, dict(bollards.setpoints), bollards.masks) == (
        "access_terminal", frozenset({"flood_prone"}), {"bollard": "up"},
        ("reconcile_required",))
    assert bollards.line == _line(GOOD, "[[plan.flood.step]]")
    assert cameras.preset == "flood"
    lights = book.plan("snow").steps[1]
    assert dict(lights.setpoints) == {"on": True, "dim": 100.0}  # as the field holds it


def test_the_shipped_plans_read_and_fit_the_demo_metropolis() -> None:
    book = builtin_plans()
    assert set(book.plans) == {"snow", "flood"}
    inv = build_demo(1.0)
    book.check(inv)
    everywhere = [m.slug for m in inv.municipalities]
    cands = book.candidates(inv.equipment)
    snow = book.plan("snow").resolve(cands, everywhere)
    kinds = {inv.by_id(e).kind for e in snow}
    assert kinds == {"vehicle", "lighting_circuit", "crossroad"}
    assert all(inv.by_id(e).attrs["role"] == "gritter" for e in snow
               if inv.by_id(e).kind == "vehicle")
    flood = book.plan("flood").resolve(cands, everywhere)
    bollards = {e: a for e, a in flood.items() if inv.by_id(e).kind == "access_terminal"}
    assert bollards and all(dict(a.setpoints) == {"bollard": "up"} for a in bollards.values())
    assert all(a.masks == ("reconcile_required",) for a in bollards.values())
    cams = [a for e, a in flood.items() if inv.by_id(e).kind == "camera"]
    assert cams and all(dict(a.setpoints) == {"preset": 12} for a in cams)
    only_dijon = book.plan("snow").resolve(cands, ["dijon"])
    assert only_dijon and all(inv.by_id(e).municipality == "dijon" for e in only_dijon)


def test_a_string_setpoint_names_the_entitys_municipality() -> None:
    book = parse_plans(GOOD, SRC)
    gritter = Candidate("veh-talant-0001", "vehicle", "talant", role="gritter", radio=True)
    assert book.plan("snow").resolve([gritter], ["talant"])["veh-talant-0001"].setpoints == {
        "message": "grit talant"}
    # A crew message reaches only a vehicle with a radio: the others are not selected.
    silent = Candidate("veh-talant-0002", "vehicle", "talant", role="gritter")
    assert book.plan("snow").resolve([silent], ["talant"]) == {}
    assert book.plan("snow").resolve([gritter], ["dijon"]) == {}
    row = Candidate.from_row(gritter.to_row())
    assert row == gritter


@pytest.mark.parametrize(
    ("old", "new", "needle", "field", "message"),
    [
        ('kind = "access_terminal"', 'kind = "bollard"', 'kind = "bollard"',
         "plan.flood.step[0].kind", "unknown kind 'bollard' (expected one of crossroad"),
        ('set = { bollard = "up" }', 'set = { bollard = "raised" }', "bollard = \"raised\"",
         "plan.flood.step[0].set.bollard", "bollard must be one of up, down"),
        ('set = { bollard = "up" }', 'set = { height = 3 }', "height = 3",
         "plan.flood.step[0].set.height", "no writable field 'height'"),
        ("set = { on = true, dim = 100 }", "set = { on = true, dim = 150 }", "dim = 150",
         "plan.snow.step[1].set.dim", "dim=150 is outside 0..100"),
        ('tags = ["flood_prone"]', 'tags = ["flood_prune"]', "flood_prune",
         "plan.flood.step[0].tags", "unknown tag 'flood_prune' (did you mean 'flood_prone'?"),
        ('masks = ["reconcile_required"]', 'masks = ["bollard_up"]', "bollard_up",
         "plan.flood.step[0].masks", "unknown alarm condition 'bollard_up'"),
        ('preset = "flood"', 'preset = "Flood Left"', "Flood Left",
         "plan.flood.step[1].preset", "expected a name"),
        ('role = "gritter"', 'role = 3', "role = 3",
         "plan.snow.step[0].role", "expected a name"),
        ('set = { message = "grit {municipality}" }', 'set = { message = "grit {street}" }',
         "{street}", "plan.snow.step[0].set.message", "only {municipality} may be filled in"),
        ('ids = ["lc-dijon-0001"]', 'ids = ["LC dijon"]', "LC dijon",
         "plan.snow.step[1].ids", "'LC dijon' is not an equipment id"),
        ('description = "Flood"', 'descripton = "Flood"', "descripton",
         "plan.flood.descripton", "unknown key 'descripton' (did you mean 'description'?"),
        ("[plan.snow]", "[plan.normal]", "[plan.normal]",
         "plan.normal", "'normal' is the mode without a plan"),
        # A crossroad's plan number must name a signal plan (actors/signal_plans.toml).
        ('kind = "vehicle"\nrole = "gritter"\nset = { message = "grit {municipality}" }',
         'kind = "crossroad"\nset = { plan = 8 }', "plan = 8",
         "plan.snow.step[0].set.plan", "no signal plan 8"),
    ],
)
def test_each_error_names_file_line_and_field(old: str, new: str, needle: str, field: str,
                                               message: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new).replace("[[plan.snow.step]]", "[[plan.normal.step]]"
                                          if new == "[plan.normal]" else "[[plan.snow.step]]")
    issues = _issues(text)
    assert len(issues) == 1, issues
    assert issues[0].startswith(f"{SRC}:{_line(text, needle)}: {field}: "), issues
    assert message in issues[0], issues


def test_steps_that_cannot_act_are_refused() -> None:
    text = GOOD.replace('preset = "flood"', 'recording = true')
    assert any(f"{SRC}:{_line(text, 'recording = true')}: plan.flood.step[1].recording: "
               "unknown key" in i for i in _issues(text))
    no_set = GOOD.replace('preset = "flood"', 'tags = ["bridge"]')
    (issue,) = _issues(no_set)
    step_line = _line(no_set, 'kind = "camera"') - 1
    assert issue.startswith(f"{SRC}:{step_line}: plan.flood.step[1]: the step sets nothing")
    (issue,) = _issues(GOOD.replace('role = "gritter"', 'role = "gritter"\ntags = []')
                       .replace('kind = "vehicle"', 'kind = "crossroad"')
                       .replace('set = { message = "grit {municipality}" }', "set = {plan = 7}"))
    assert "only a vehicle has a role (this step is of crossroad)" in issue
    (issue,) = _issues("[plan.snow]\n")
    assert issue == f"{SRC}:1: plan.snow.step: a plan needs at least one [[plan.snow.step]]"
    (issue,) = _issues("[plan\n")
    assert issue.startswith(f"{SRC}:1: syntax: ")


def _inventory(*extra: Equipment) -> Inventory:
    def eq(eid: str, kind: str, **attrs: object) -> Equipment:
        return Equipment(id=eid, kind=kind, municipality="dijon", lat=47.32, lon=5.04,
                         endpoint="mqtt", profile=kind, attrs=attrs)

    return Inventory("t", (Municipality("dijon", "Dijon", 47.32, 5.04, 1),
                           Municipality("saint-apollinaire", "Saint-Apollinaire", 47.33, 5.08,
                                        1)), (
        eq("at-dijon-0001", "access_terminal", tags=["flood_prone"]),
        eq("cam-dijon-0001", "camera", presets={"flood": 3}),
        eq("veh-dijon-0001", "vehicle", role="gritter"),
        eq("lc-dijon-0001", "lighting_circuit"),
        *extra))


def test_a_plan_naming_equipment_roles_or_presets_the_inventory_lacks_is_refused() -> None:
    book = parse_plans(GOOD, SRC)
    book.check(_inventory())
    for old, new, needle, message in [
        ('ids = ["lc-dijon-0001"]', 'ids = ["lc-dijon-0009"]', "lc-dijon-0009",
         "plan.snow.step[1].ids: unknown equipment 'lc-dijon-0009' (did you mean "
         "'lc-dijon-0001'?)"),
        ('ids = ["lc-dijon-0001"]', 'ids = ["at-dijon-0001"]', "at-dijon-0001",
         "plan.snow.step[1].ids: 'at-dijon-0001' is a access_terminal, not a lighting_circuit"),
        ('role = "gritter"', 'role = "sweeper"', "sweeper",
         "plan.snow.step[0].role: no vehicle of the inventory has role 'sweeper'"),
        ('preset = "flood"', 'preset = "snow"', 'preset = "snow"',
         "plan.flood.step[1].preset: no camera of the inventory has a preset 'snow'"),
    ]:
        text = GOOD.replace(old, new)
        step_line = max(n for n, line in enumerate(text.split("\n"), start=1)
                        if "[[plan." in line and n < _line(text, needle))
        with pytest.raises(PlanError) as info:
            parse_plans(text, SRC).check(_inventory())
        assert info.value.issues == [f"{SRC}:{step_line}: {message}"]
    # An inventory without vehicles (or cameras) leaves those steps nothing to do.
    cars = _inventory()
    no_fleet = Inventory(cars.name, cars.municipalities,
                         tuple(eq for eq in cars.equipment if eq.kind not in ("vehicle", "camera")))
    parse_plans(GOOD.replace('role = "gritter"', 'role = "sweeper"')
                .replace('preset = "flood"', 'preset = "snow"'), SRC).check(no_fleet)
    # A message that a municipality's name makes too long for the crew display.
    long = GOOD.replace("grit {municipality}", "x" * 185 + " {municipality}")
    parse_plans(long, SRC).check(_inventory())
    far = Equipment(id="veh-saint-apollinaire-0001", kind="vehicle",
                    municipality="saint-apollinaire", lat=47.33, lon=5.08, endpoint="mqtt",
                    profile="vehicle", attrs={"role": "gritter", "radio": True})
    with pytest.raises(PlanError) as info:
        parse_plans(long, SRC).check(_inventory(far))
    step_line = _line(long, 'kind = "vehicle"') - 1
    assert info.value.issues == [
        f"{SRC}:{step_line}: plan.snow.step[0].set.message: for veh-saint-apollinaire-0001: "
        "message is 203 characters long, more than 200"]


def test_load_plans_names_an_unreadable_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD, encoding="utf-8")
    assert set(load_plans(good).plans) == {"flood", "snow"}
    with pytest.raises(PlanError) as info:
        load_plans(tmp_path / "missing.toml")
    assert info.value.issues[0].startswith(f"{tmp_path / 'missing.toml'}:0: file: cannot read")


def test_plan_check_on_the_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", "plan", "check", *args],
                              capture_output=True, text=True, timeout=120)

    inv = tmp_path / "city.toml"
    inv.write_text(
        '[metropolis]\nname = "x"\n[[municipality]]\nslug = "dijon"\nname = "Dijon"\n'
        'lat = 47.32\nlon = 5.04\npopulation = 1\n'
        '[[equipment]]\nid = "lc-dijon-0001"\nkind = "lighting_circuit"\nmunicipality = "dijon"\n'
        'lat = 47.32\nlon = 5.04\nendpoint = "e"\nprofile = "p"\n'
        '[[equipment]]\nid = "veh-dijon-0001"\nkind = "vehicle"\nmunicipality = "dijon"\n'
        'lat = 47.32\nlon = 5.04\nendpoint = "e"\nprofile = "p"\n'
        '[equipment.attrs]\nrole = "gritter"\n', encoding="utf-8")
    good = tmp_path / "good.toml"
    good.write_text(GOOD.replace('preset = "flood"', 'set = { recording = true }'),
                    encoding="utf-8")
    ok = cp(str(good), "--inventory", str(inv))
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("lc-dijon-0001", "lc-dijon-0002").replace("dim = 100", "dim = 150"),
                   encoding="utf-8")
    out = cp(str(bad), "--inventory", str(inv))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        f"{bad}:{_line(GOOD, 'dim = 100')}: plan.snow.step[1].set.dim: "
        "dim=150 is outside 0..100"]
    unknown = cp(str(bad.with_name("bad.toml").with_suffix(".x")))
    assert unknown.returncode == 1 and unknown.stderr.endswith(
        "cannot read: No such file or directory\n")
    # Against the demo metropolis when no inventory is given: the equipment is unknown there.
    named = tmp_path / "named.toml"
    named.write_text(GOOD.replace("lc-dijon-0001", "lc-dijon-9999"), encoding="utf-8")
    out = cp(str(named))
    assert out.returncode == 1
    assert "plan.snow.step[1].ids: unknown equipment 'lc-dijon-9999'" in out.stderr
