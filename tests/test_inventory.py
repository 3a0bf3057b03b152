"""Inventory model, TOML validation with line numbers, and the demo metropolis."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.demo_inventory import (
    BUS_LINES,
    MAX_SCALE,
    SERVICE_ROLES,
    DemoPorts,
    build_demo,
    demo_counts,
    generate_demo,
    municipalities,
)
from runtime.errors import ConfigError, InventoryError
from runtime.inventory import (
    DOMAIN_OF_KIND,
    ID_PATTERN,
    KINDS,
    Equipment,
    Inventory,
    Municipality,
    PlacementPolicy,
    distance_km,
    dump_inventory,
    load_inventory,
    parse_inventory,
    slugify,
)
from tests.helpers import line_of

BASE = """\
[metropolis]
name = "Test Métropole"

[placement]
default = "sharded"
[placement.kinds]
camera = "dedicated"
[placement.shards]
lighting = 3

[[municipality]]
slug = "dijon"
name = "Dijon"
lat = 47.3220
lon = 5.0415
population = 159000

[[municipality]]
slug = "fontaine-les-dijon"
name = "Fontaine-lès-Dijon"
lat = 47.3430
lon = 5.0210
population = 9000

[[equipment]]
id = "xr-dijon-0001"
kind = "crossroad"
municipality = "dijon"
lat = 47.3201
lon = 5.0399
endpoint = "modbus://127.0.0.1:15020/1"
profile = "traffic_controller"

[[equipment]]
id = "lc-fontaine-les-dijon-0001"
kind = "lighting_circuit"
municipality = "fontaine-les-dijon"
lat = 47.3440
lon = 5.0220
endpoint = "modbus://127.0.0.1:15100/1"
profile = "lighting_cabinet"
placement = "dedicated"
[equipment.attrs]
points = 30
label = "Rue des Échoppes"
"""

SRC = "inv.toml"


def issues_of(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, SRC)
    assert info.value.issues, "InventoryError without issues"
    assert str(info.value) == "\n".join(info.value.issues)
    return info.value.issues


def sub(old: str, new: str, count: int = 1) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, count)

    return apply


def after(anchor: str, extra: str) -> Callable[[str], str]:
    return sub(anchor, anchor + extra)


# --------------------------------------------------------------------------- model


def test_slugify() -> None:
    assert slugify("Fontaine-lès-Dijon") == "fontaine-les-dijon"
    assert slugify("Chevigny-Saint-Sauveur") == "chevigny-saint-sauveur"
    assert slugify("Chenôve") == "chenove"
    assert slugify("  Marsannay  la Côte!! ") == "marsannay-la-cote"
    assert slugify("Fénay") == "fenay"


def make_equipment(**overrides: Any) -> Equipment:
    fields: dict[str, Any] = {
        "id": "xr-dijon-0001",
        "kind": "crossroad",
        "municipality": "dijon",
        "lat": 47.32,
        "lon": 5.04,
        "endpoint": "modbus://127.0.0.1:15020/1",
        "profile": "traffic_controller",
    }
    fields.update(overrides)
    return Equipment(**fields)


DIJON = Municipality("dijon", "Dijon", 47.322, 5.0415, 159000)


def test_equipment_value_object() -> None:
    eq = make_equipment(attrs={"points": 30, "tags": ["a", "b"], "nested": {"k": 1}})
    assert eq.domain == "traffic"
    assert eq.attrs["tags"] == ("a", "b")
    with pytest.raises(TypeError):
        eq.attrs["points"] = 31  # type: ignore[index]
    with pytest.raises(TypeError):
        eq.attrs["nested"]["k"] = 2
    # Where it was read from is provenance, not identity.
    assert make_equipment(line=12) == make_equipment(line=40)
    assert hash(make_equipment(line=12)) == hash(make_equipment(line=40))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"id": "XR 1"}, "does not match"),
        ({"kind": "lamp"}, "unknown kind"),
        ({"municipality": "Dijon"}, "not a slug"),
        ({"lat": 91.0}, "lat"),
        ({"lon": True}, "lon must be a number"),
        ({"endpoint": ""}, "endpoint"),
        ({"profile": "  "}, "profile"),
        ({"placement": "solo"}, "placement"),
    ],
)
def test_equipment_rejects(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        make_equipment(**overrides)


def test_municipality_rejects() -> None:
    with pytest.raises(ConfigError, match="population"):
        Municipality("dijon", "Dijon", 47.3, 5.0, -1)
    with pytest.raises(ConfigError, match="slug"):
        Municipality("Dijon", "Dijon", 47.3, 5.0, 1)
    assert isinstance(Municipality("dijon", "Dijon", 47, 5, 1).lat, float)


def test_placement_policy_precedence() -> None:
    policy = PlacementPolicy(default="sharded", kinds={"camera": "dedicated"}, shards={"video": 2})
    plain_xr = make_equipment()
    plain_cam = make_equipment(id="cam-1", kind="camera", endpoint="mqtt", profile="camera")
    pinned_cam = make_equipment(
        id="cam-2", kind="camera", endpoint="mqtt", profile="camera", placement="sharded"
    )
    pinned_xr = make_equipment(id="xr-2", placement="dedicated")
    assert policy.mode_for(plain_xr) == "sharded"  # default
    assert policy.mode_for(plain_cam) == "dedicated"  # per kind beats default
    assert policy.mode_for(pinned_cam) == "sharded"  # per entity beats per kind
    assert policy.mode_for(pinned_xr) == "dedicated"  # per entity beats default
    assert PlacementPolicy(default="dedicated").mode_for(plain_xr) == "dedicated"
    assert policy.shards_for("video") == 2
    assert policy.shards_for("traffic") == 1
    with pytest.raises(ConfigError, match="unknown domain"):
        policy.shards_for("lightning")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default": "solo"},
        {"kinds": {"lamp": "sharded"}},
        {"kinds": {"camera": "solo"}},
        {"shards": {"lighting": 0}},
        {"shards": {"lighting": 65}},
        {"shards": {"lightning": 2}},
        {"shards": {"lighting": True}},
    ],
)
def test_placement_policy_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PlacementPolicy(**kwargs)


def test_placement_policy_colocate() -> None:
    policy = PlacementPolicy(shards={"traffic": 2}, colocate={"fleet": "traffic"})
    assert policy.host_domain("fleet") == "traffic"
    assert policy.host_domain("traffic") == "traffic"
    assert policy.host_domain("video") == "video"
    assert policy.colocate == {"fleet": "traffic"}
    with pytest.raises(TypeError):
        policy.colocate["video"] = "traffic"  # type: ignore[index]
    with pytest.raises(ConfigError, match="unknown domain"):
        policy.host_domain("control")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"colocate": {"lightning": "traffic"}}, "unknown domain 'lightning'"),
        ({"colocate": {"fleet": "trafic"}}, "did you mean 'traffic'?"),
        ({"colocate": {"fleet": "fleet"}}, "cannot join its own hosts"),
        ({"colocate": {"fleet": "traffic", "traffic": "video"}}, "no chains"),
        ({"colocate": {"fleet": "traffic", "traffic": "fleet"}}, "no chains"),
        ({"colocate": {"control": "traffic"}}, "control domain's coordinators"),
        ({"colocate": {"fleet": "control"}}, "equipment cannot join it"),
        ({"colocate": {"fleet": 3}}, "expected a domain name, got integer"),
        ({"colocate": {"fleet": "traffic"}, "shards": {"fleet": 2}},
         "no shard count of its own"),
    ],
)
def test_placement_policy_rejects_colocate(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        PlacementPolicy(**kwargs)


def test_colocate_parses_and_round_trips() -> None:
    text = after("lighting = 3\n", '[placement.colocate]\nfleet = "traffic"\n'
                                   'access = "lighting"\n')(BASE)
    inv = parse_inventory(text, SRC)
    assert inv.placement.colocate == {"fleet": "traffic", "access": "lighting"}
    assert inv.placement.host_domain("access") == "lighting"
    dumped = dump_inventory(inv)
    assert '[placement.colocate]\nfleet = "traffic"\naccess = "lighting"\n' in dumped
    again = parse_inventory(dumped, "again.toml")
    assert again == inv
    assert again.placement.colocate == inv.placement.colocate
    assert "[placement.colocate]" not in dump_inventory(parse_inventory(BASE, SRC))


def _colocating(table: str) -> Callable[[str], str]:
    return after("lighting = 3\n", "[placement.colocate]\n" + table)


COLOCATE_CASES = [
    ("unknown joining domain", 'lightning = "traffic"\n', "placement.colocate.lightning",
     "lightning =", "unknown domain 'lightning'"),
    ("unknown target domain", 'fleet = "trafic"\n', "placement.colocate.fleet",
     "fleet =", "unknown domain 'trafic' (did you mean 'traffic'?"),
    ("joining itself", 'fleet = "fleet"\n', "placement.colocate.fleet", "fleet =",
     "'fleet' cannot join its own hosts"),
    ("a chain", 'fleet = "traffic"\ntraffic = "video"\n', "placement.colocate.fleet",
     "fleet =", "'traffic' joins the hosts of 'video' itself"),
    ("the control domain joining", 'control = "traffic"\n', "placement.colocate.control",
     "control =", "the control domain's coordinators keep a host of their own"),
    ("joining the control domain", 'fleet = "control"\n', "placement.colocate.fleet",
     "fleet =", "the control domain's host is the coordinators'"),
    ("target not a string", "fleet = 2\n", "placement.colocate.fleet", "fleet =",
     "expected a domain name, got integer 2"),
    ("a joined domain with shards", 'lighting = "traffic"\n', "placement.shards.lighting",
     "lighting = 3", "'lighting' joins the hosts of 'traffic' (placement.colocate.lighting)"),
]


@pytest.mark.parametrize(("table", "field", "needle", "fragment"),
                         [case[1:] for case in COLOCATE_CASES],
                         ids=[case[0] for case in COLOCATE_CASES])
def test_colocate_errors_name_file_line_and_field(table: str, field: str, needle: str,
                                                  fragment: str) -> None:
    text = _colocating(table)(BASE)
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:{line_of(text, needle)}: {field}: "), issue
    assert fragment in issue, issue


def test_colocate_cycle_reports_both_domains() -> None:
    text = _colocating('fleet = "traffic"\ntraffic = "fleet"\n')(BASE)
    issues = issues_of(text)
    assert [i.split(": ")[0:2] for i in issues] == [
        [f"{SRC}:{line_of(text, 'fleet = ')}", "placement.colocate.fleet"],
        [f"{SRC}:{line_of(text, 'traffic = ')}", "placement.colocate.traffic"],
    ]
    assert all("no chains" in i for i in issues)
    (issue,) = issues_of(after('default = "sharded"\n', "colocate = 3\n")(BASE))
    assert "placement.colocate: expected a table of domains by domain, got integer" in issue


def test_inventory_cross_checks_in_code() -> None:
    xr = make_equipment()
    inv = Inventory("M", (DIJON,), (xr,), PlacementPolicy())
    assert inv.by_id("xr-dijon-0001") is xr
    assert inv.municipality("dijon") is DIJON
    with pytest.raises(KeyError):
        inv.by_id("nope")
    with pytest.raises(KeyError):
        inv.municipality("nope")
    assert inv.count_by_kind() == {k: (1 if k == "crossroad" else 0) for k in KINDS}
    assert list(inv.count_by_kind()) == list(KINDS)
    with pytest.raises(ConfigError, match="duplicate equipment id"):
        Inventory("M", (DIJON,), (xr, xr), PlacementPolicy())
    with pytest.raises(ConfigError, match="duplicate municipality"):
        Inventory("M", (DIJON, DIJON), (), PlacementPolicy())
    with pytest.raises(ConfigError, match="not declared"):
        Inventory("M", (DIJON,), (make_equipment(municipality="talant"),), PlacementPolicy())
    with pytest.raises(ConfigError, match="km from the centroid"):
        Inventory("M", (DIJON,), (make_equipment(lat=48.0),), PlacementPolicy())
    with pytest.raises(ConfigError, match="at least one municipality"):
        Inventory("M", (), (), PlacementPolicy())


def test_distance_km() -> None:
    # One degree of latitude is ~111.2 km on the mean-radius sphere.
    assert distance_km(47.0, 5.0, 48.0, 5.0) == pytest.approx(111.19, abs=0.05)
    assert distance_km(47.3, 5.0, 47.3, 5.0) == 0.0


# --------------------------------------------------------------------------- parsing


def test_valid_inventory_parses() -> None:
    inv = parse_inventory(BASE, SRC)
    assert inv.name == "Test Métropole"
    assert inv.source == SRC
    assert [m.slug for m in inv.municipalities] == ["dijon", "fontaine-les-dijon"]
    assert inv.municipality("fontaine-les-dijon").name == "Fontaine-lès-Dijon"
    xr = inv.by_id("xr-dijon-0001")
    assert (xr.kind, xr.municipality, xr.lat, xr.lon) == ("crossroad", "dijon", 47.3201, 5.0399)
    assert xr.placement is None and dict(xr.attrs) == {}
    assert xr.line == line_of(BASE, "[[equipment]]", 1)
    lc = inv.by_id("lc-fontaine-les-dijon-0001")
    assert lc.line == line_of(BASE, "[[equipment]]", 2)
    assert dict(lc.attrs) == {"points": 30, "label": "Rue des Échoppes"}
    assert lc.domain == "lighting"
    assert inv.placement.mode_for(lc) == "dedicated"
    assert inv.placement.mode_for(xr) == "sharded"
    assert inv.placement.shards_for("lighting") == 3
    assert inv.placement.kinds == {"camera": "dedicated"}
    assert inv.count_by_kind()["lighting_circuit"] == 1


def test_minimal_inventory_defaults() -> None:
    text = BASE[: BASE.index("[placement]")] + BASE[BASE.index("[[municipality]]") :]
    inv = parse_inventory(text, SRC)
    assert inv.placement == PlacementPolicy()
    no_equipment = text[: text.index("[[equipment]]")]
    assert parse_inventory(no_equipment, SRC).equipment == ()


def test_round_trip_through_dump() -> None:
    inv = parse_inventory(BASE, SRC)
    again = parse_inventory(dump_inventory(inv), "again.toml")
    assert again == inv
    assert dump_inventory(again) == dump_inventory(inv)


def test_dump_escapes_strings() -> None:
    awkward = 'quote " backslash \\ tab \t nl \n del \x7f nul \x00 é ✓'
    eq = make_equipment(attrs={"note": awkward, "odd key": [1, 2.5, True], "t": {"a": "b"}})
    inv = Inventory(awkward, (DIJON,), (eq,), PlacementPolicy())
    text = dump_inventory(inv)
    assert "é ✓" in text  # UTF-8 kept, not \u-escaped
    again = parse_inventory(text, SRC)
    assert again == inv
    assert again.by_id(eq.id).attrs["note"] == awkward


def test_load_inventory_from_file(tmp_path: Path) -> None:
    path = tmp_path / "metro.toml"
    path.write_text(BASE, encoding="utf-8")
    assert load_inventory(path).source == str(path)
    assert load_inventory(str(path)) == parse_inventory(BASE, SRC)
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())  # a byte-order mark is tolerated
    assert load_inventory(path).name == "Test Métropole"


def test_unreadable_file_is_one_issue(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(InventoryError) as info:
        load_inventory(missing)
    assert len(info.value.issues) == 1
    assert info.value.issues[0].startswith(f"{missing}:0: file: cannot read")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode("latin-1"))
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    (issue,) = info.value.issues
    assert issue.startswith(f"{path}:{line_of(BASE, 'Métropole')}: file: not valid UTF-8")


def test_syntax_error_is_one_issue_with_line() -> None:
    text = sub('kind = "crossroad"', "kind = crossroad")(BASE)
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:{line_of(text, 'kind = crossroad')}: syntax: ")
    assert "(at line" not in issue
    (issue,) = issues_of(BASE + "[[equipment]\n")
    assert issue.startswith(f"{SRC}:{len(BASE.splitlines()) + 1}: syntax: ")


# Each case: edit of BASE, expected field, (needle, occurrence) of the expected line,
# and a fragment of the message. Every edit must yield exactly one issue.
HEADER_EQ0 = ("[[equipment]]", 1)
ERROR_CASES: list[tuple[str, Callable[[str], str], str, tuple[str, int], str]] = [
    (
        "missing field",
        sub('kind = "crossroad"\n', ""),
        "equipment[0].kind",
        HEADER_EQ0,
        "required field missing",
    ),
    (
        "missing municipality field",
        sub("population = 9000\n", ""),
        "municipality[1].population",
        ("[[municipality]]", 2),
        "required field missing",
    ),
    (
        "string for a number",
        sub("lat = 47.3201", 'lat = "47.3201"'),
        "equipment[0].lat",
        ('lat = "47.3201"', 1),
        "expected a number, got string",
    ),
    (
        "bool is not a number",
        sub("lon = 5.0399", "lon = true"),
        "equipment[0].lon",
        ("lon = true", 1),
        "expected a number, got boolean true",
    ),
    (
        "float population",
        sub("population = 9000", "population = 9000.5"),
        "municipality[1].population",
        ("population = 9000.5", 1),
        "expected an integer, got float",
    ),
    (
        "bool population",
        sub("population = 9000", "population = false"),
        "municipality[1].population",
        ("population = false", 1),
        "expected an integer, got boolean",
    ),
    (
        "string for a string field",
        sub('profile = "traffic_controller"', "profile = 3"),
        "equipment[0].profile",
        ("profile = 3", 1),
        "expected a string, got integer 3",
    ),
    (
        "id pattern",
        sub('id = "xr-dijon-0001"', 'id = "XR/dijon/1"'),
        "equipment[0].id",
        ("XR/dijon/1", 1),
        "does not match",
    ),
    (
        "id too long",
        sub('id = "xr-dijon-0001"', f'id = "{"x" * 65}"'),
        "equipment[0].id",
        ("x" * 65, 1),
        "does not match",
    ),
    (
        "duplicate id",
        sub('id = "lc-fontaine-les-dijon-0001"', 'id = "xr-dijon-0001"'),
        "equipment[1].id",
        ('id = "xr-dijon-0001"', 2),
        f"duplicate id 'xr-dijon-0001' (first at line {line_of(BASE, '[[equipment]]')}",
    ),
    (
        "unknown kind",
        sub('kind = "crossroad"', 'kind = "lamp"'),
        "equipment[0].kind",
        ('kind = "lamp"', 1),
        "unknown kind 'lamp' (expected one of crossroad, lighting_circuit,",
    ),
    (
        "undeclared municipality",
        sub('municipality = "dijon"', 'municipality = "atlantis"'),
        "equipment[0].municipality",
        ("atlantis", 1),
        "'atlantis' is not declared",
    ),
    (
        "duplicate municipality slug",
        lambda t: (
            t + '\n[[municipality]]\nslug = "dijon"\nname = "Dijon bis"\n'
            "lat = 47.3\nlon = 5.0\npopulation = 1\n"
        ),
        "municipality[2].slug",
        ('slug = "dijon"', 2),
        f"duplicate slug 'dijon' (first at line {line_of(BASE, '[[municipality]]')}",
    ),
    (
        "municipality slug not a slug",
        lambda t: (
            t + '\n[[municipality]]\nslug = "Ahuy Centre"\nname = "Ahuy"\n'
            "lat = 47.37\nlon = 5.02\npopulation = 1300\n"
        ),
        "municipality[2].slug",
        ("Ahuy Centre", 1),
        "not a lowercase ASCII slug (like 'ahuy-centre')",
    ),
    (
        "latitude out of range",
        sub("lat = 47.3201", "lat = 91.5"),
        "equipment[0].lat",
        ("lat = 91.5", 1),
        "outside [-90, 90]",
    ),
    (
        "longitude out of range",
        sub("lon = 5.0415", "lon = -181"),
        "municipality[0].lon",
        ("lon = -181", 1),
        "outside [-180, 180]",
    ),
    (
        "too far from the municipality",
        sub("lat = 47.3201", "lat = 47.9"),
        "equipment[0]",
        ("lat = 47.9", 1),
        "km from the centroid of 'dijon' (limit 50 km)",
    ),
    (
        "unknown equipment placement",
        sub('placement = "dedicated"', 'placement = "solo"'),
        "equipment[1].placement",
        ('placement = "solo"', 1),
        "unknown placement 'solo' (expected one of sharded, dedicated)",
    ),
    (
        "unknown default placement",
        sub('default = "sharded"', 'default = "everywhere"'),
        "placement.default",
        ("everywhere", 1),
        "unknown placement 'everywhere'",
    ),
    (
        "unknown placement for a kind",
        sub('camera = "dedicated"', 'camera = "alone"'),
        "placement.kinds.camera",
        ('camera = "alone"', 1),
        "unknown placement 'alone'",
    ),
    (
        "unknown kind in placement.kinds",
        sub('camera = "dedicated"', 'lamp = "dedicated"'),
        "placement.kinds.lamp",
        ('lamp = "dedicated"', 1),
        "unknown kind 'lamp'",
    ),
    (
        "zero shards",
        sub("lighting = 3", "lighting = 0"),
        "placement.shards.lighting",
        ("lighting = 0", 1),
        "shard count 0 outside [1, 64]",
    ),
    (
        "too many shards",
        sub("lighting = 3", "lighting = 65"),
        "placement.shards.lighting",
        ("lighting = 65", 1),
        "shard count 65 outside [1, 64]",
    ),
    (
        "shards not an integer",
        sub("lighting = 3", 'lighting = "3"'),
        "placement.shards.lighting",
        ('lighting = "3"', 1),
        "expected an integer, got string",
    ),
    (
        "unknown shard domain",
        sub("lighting = 3", "lightning = 3"),
        "placement.shards.lightning",
        ("lightning = 3", 1),
        "unknown domain 'lightning' (expected one of traffic, lighting,",
    ),
    (
        "negative population",
        sub("population = 9000", "population = -5"),
        "municipality[1].population",
        ("population = -5", 1),
        "population -5 is negative",
    ),
    (
        "empty endpoint",
        sub('endpoint = "modbus://127.0.0.1:15020/1"', 'endpoint = ""'),
        "equipment[0].endpoint",
        ('endpoint = ""', 1),
        "must not be empty",
    ),
    (
        "blank profile",
        sub('profile = "lighting_cabinet"', 'profile = "   "'),
        "equipment[1].profile",
        ('profile = "   "', 1),
        "must not be empty",
    ),
    (
        "unknown top-level key",
        lambda t: "version = 2\n" + t,
        "version",
        ("version = 2", 1),
        "unknown key 'version'",
    ),
    (
        "unknown top-level table",
        lambda t: t + "\n[metropolis_extra]\nx = 1\n",
        "metropolis_extra",
        ("[metropolis_extra]", 1),
        "did you mean 'metropolis'?",
    ),
    (
        "unknown equipment key",
        after('profile = "traffic_controller"\n', "colour = 1\n"),
        "equipment[0].colour",
        ("colour = 1", 1),
        "unknown key 'colour'",
    ),
    (
        "typo in an equipment key",
        after('placement = "dedicated"\n', 'placment = "sharded"\n'),
        "equipment[1].placment",
        ("placment =", 1),
        "did you mean 'placement'?",
    ),
    (
        "unknown metropolis key",
        after('name = "Test Métropole"\n', 'country = "FR"\n'),
        "metropolis.country",
        ("country =", 1),
        "unknown key 'country'",
    ),
    (
        "unknown municipality key",
        after("population = 159000\n", "area = 40.4\n"),
        "municipality[0].area",
        ("area = 40.4", 1),
        "unknown key 'area'",
    ),
    (
        "unknown placement key",
        after('default = "sharded"\n', "spread = 2\n"),
        "placement.spread",
        ("spread = 2", 1),
        "unknown key 'spread'",
    ),
    (
        "attrs not a table",
        after('profile = "traffic_controller"\n', "attrs = 3\n"),
        "equipment[0].attrs",
        ("attrs = 3", 1),
        "expected a table, got integer",
    ),
    (
        "missing metropolis name",
        sub('name = "Test Métropole"\n', ""),
        "metropolis.name",
        ("[metropolis]", 1),
        "required field missing",
    ),
]


@pytest.mark.parametrize(
    ("edit", "field", "where", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_each_error_names_file_line_and_field(
    edit: Callable[[str], str], field: str, where: tuple[str, int], fragment: str
) -> None:
    text = edit(BASE)
    issues = issues_of(text)
    line = line_of(text, *where)
    assert len(issues) == 1, issues
    prefix = f"{SRC}:{line}: {field}: "
    assert issues[0].startswith(prefix), (issues[0], prefix)
    assert fragment in issues[0], (issues[0], fragment)


def test_no_municipality() -> None:
    text = BASE[: BASE.index("[[municipality]]")]
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:1: municipality: at least one [[municipality]]")
    (issue,) = issues_of("municipality = []\n" + text)
    assert "at least one [[municipality]]" in issue


def test_missing_metropolis_table() -> None:
    text = BASE[BASE.index("[placement]") :]
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:1: metropolis: required table [metropolis] missing")


def test_several_errors_are_all_reported_in_line_order() -> None:
    edits: list[Callable[[str], str]] = [
        sub('kind = "crossroad"', 'kind = "lamp"'),
        sub("population = 9000", "population = -1"),
        sub('id = "lc-fontaine-les-dijon-0001"', 'id = "Bad Id"'),
        sub("lighting = 3", "lighting = 99"),
        sub("lon = 5.0220", 'lon = "east"'),
        lambda t: "colour = 1\n" + t,
    ]
    text = BASE
    for edit in edits:
        text = edit(text)
    issues = issues_of(text)
    assert len(issues) == len(edits), issues
    lines = [int(issue.split(":")[1]) for issue in issues]
    assert lines == sorted(lines)
    expected = [
        (1, "colour"),
        (line_of(text, "lighting = 99"), "placement.shards.lighting"),
        (line_of(text, "population = -1"), "municipality[1].population"),
        (line_of(text, 'kind = "lamp"'), "equipment[0].kind"),
        (line_of(text, "Bad Id"), "equipment[1].id"),
        (line_of(text, 'lon = "east"'), "equipment[1].lon"),
    ]
    assert [(n, issue.split(": ")[1]) for n, issue in zip(lines, issues, strict=True)] == expected


def test_lines_survive_header_lookalikes() -> None:
    # Comments, multi-line strings and multi-line arrays that look like headers or keys
    # must not shift which [[equipment]] a line belongs to.
    text = after(
        'profile = "traffic_controller"\n',
        "# [[equipment]]\n"
        "[equipment.attrs]\n"
        "note = '''\n[[equipment]]\nkind = x\n'''\n"
        "quoted = \"it'''s [[equipment]]\"\n"
        'escaped = """a \\""" [[equipment]]\n"""\n'
        "grid = [\n  [1, 2],\n  [3]\n]\n"
        "rows = [\n  {kind = 1},\n]\n",
    )(BASE)
    text = sub('kind = "lighting_circuit"', 'kind = "lamp"')(text)
    inv_issue = issues_of(text)
    assert inv_issue == [
        f"{SRC}:{line_of(text, 'kind = ' + chr(34) + 'lamp')}: equipment[1].kind: unknown kind "
        f"'lamp' (expected one of {', '.join(KINDS)})"
    ]
    fixed = parse_inventory(sub('kind = "lamp"', 'kind = "lighting_circuit"')(text), SRC)
    exact = [n for n, line in enumerate(text.split("\n"), start=1) if line == "[[equipment]]"]
    assert len(exact) == 3  # two headers and one line inside the multi-line string
    assert [eq.line for eq in fixed.equipment] == [exact[0], exact[2]]
    assert fixed.equipment[0].attrs["grid"] == ((1, 2), (3,))


def test_crlf_line_endings() -> None:
    text = sub('kind = "crossroad"', 'kind = "lamp"')(BASE).replace("\n", "\r\n")
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:{line_of(text, 'lamp')}: equipment[0].kind: ")


# --------------------------------------------------------------------------- properties

MUNIS = {"dijon": (47.3220, 5.0415), "talant": (47.3370, 5.0050)}
MUNI_HEADER = "".join(
    f'[[municipality]]\nslug = "{slug}"\nname = "{slug.title()}"\n'
    f"lat = {lat}\nlon = {lon}\npopulation = 1000\n\n"
    for slug, (lat, lon) in MUNIS.items()
)

bare_keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
plain_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: s.strip() != "")
attr_values = st.one_of(
    st.integers(-(2**40), 2**40),
    st.booleans(),
    plain_text,
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 3)),
)


@st.composite
def equipment_records(draw: st.DrawFn) -> dict[str, Any]:
    slug = draw(st.sampled_from(sorted(MUNIS)))
    lat0, lon0 = MUNIS[slug]
    record: dict[str, Any] = {
        "id": draw(st.from_regex(ID_PATTERN, fullmatch=True)),
        "kind": draw(st.sampled_from(KINDS)),
        "municipality": slug,
        "lat": round(lat0 + draw(st.floats(-0.2, 0.2)), 6),
        "lon": round(lon0 + draw(st.floats(-0.2, 0.2)), 6),
        "endpoint": draw(plain_text),
        "profile": draw(plain_text),
    }
    if draw(st.booleans()):
        record["placement"] = draw(st.sampled_from(("sharded", "dedicated")))
    record["attrs"] = draw(st.dictionaries(bare_keys, attr_values, max_size=3))
    return record


records_lists = st.lists(equipment_records(), min_size=1, max_size=8, unique_by=lambda r: r["id"])


class Raw:
    """A value written verbatim into the TOML text."""

    def __init__(self, text: str) -> None:
        self.text = text


def toml(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def render(records: list[dict[str, Any]]) -> tuple[str, list[dict[str, int]]]:
    """TOML text and, per record, the line of its header (key ``""``) and of each key."""
    lines = ["[metropolis]", 'name = "P"', "", *MUNI_HEADER.splitlines()]
    where: list[dict[str, int]] = []
    for record in records:
        lines += ["", "[[equipment]]"]
        spots = {"": len(lines)}
        table: Mapping[str, Any] = {}
        for key, value in record.items():
            if key == "attrs" and not isinstance(value, Raw):
                table = value
                continue
            lines.append(f"{key} = {toml(value)}")
            spots[key] = len(lines)
        if table:
            lines.append("[equipment.attrs]")
            lines += [f"{k} = {toml(v)}" for k, v in table.items()]
        where.append(spots)
    return "\n".join(lines) + "\n", where


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records_lists)
def test_any_valid_equipment_list_parses(records: list[dict[str, Any]]) -> None:
    text, where = render(records)
    inv = parse_inventory(text, SRC)
    assert len(inv.equipment) == len(records)
    for record, spots, eq in zip(records, where, inv.equipment, strict=True):
        assert eq.id == record["id"] and eq.kind == record["kind"]
        assert (eq.lat, eq.lon) == (record["lat"], record["lon"])
        assert (eq.endpoint, eq.profile) == (record["endpoint"], record["profile"])
        assert eq.placement == record.get("placement")
        assert dict(eq.attrs) == record["attrs"]
        assert eq.line == spots[""]
    assert parse_inventory(dump_inventory(inv), "dumped") == inv


# (field, bad value, field named in the issue, the issue's line: the key's or the header's)
CORRUPTIONS: list[tuple[str, Any, str, str]] = [
    ("id", "Not An Id", ".id", "id"),
    ("id", "a" * 65, ".id", "id"),
    ("kind", "lamp", ".kind", "kind"),
    ("kind", None, ".kind", ""),
    ("municipality", "atlantis", ".municipality", "municipality"),
    ("municipality", Raw("12"), ".municipality", "municipality"),
    ("lat", Raw("91.5"), ".lat", "lat"),
    ("lat", "north", ".lat", "lat"),
    ("lat", Raw("48.4"), "", "lat"),
    ("lon", Raw("true"), ".lon", "lon"),
    ("lon", Raw("-181.0"), ".lon", "lon"),
    ("lon", None, ".lon", ""),
    ("endpoint", "", ".endpoint", "endpoint"),
    ("profile", " ", ".profile", "profile"),
    ("profile", None, ".profile", ""),
    ("placement", "solo", ".placement", "placement"),
    ("placment", "sharded", ".placment", "placment"),
    ("attrs", Raw('"points"'), ".attrs", "attrs"),
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records_lists, st.data())
def test_one_corrupted_field_gives_exactly_one_issue(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(records) - 1), label="index")
    key, bad, field_suffix, line_key = data.draw(st.sampled_from(CORRUPTIONS), label="corruption")
    record = dict(records[index])
    if bad is None:
        del record[key]
    else:
        record[key] = bad
    records = [*records[:index], record, *records[index + 1 :]]
    text, where = render(records)
    issues = issues_of(text)
    assert len(issues) == 1, issues
    line = where[index][line_key]
    assert issues[0].startswith(f"{SRC}:{line}: equipment[{index}]{field_suffix}: "), issues


@settings(max_examples=40, deadline=None)
@given(records_lists.filter(lambda rs: len(rs) >= 2), st.data())
def test_duplicate_id_names_both_lines(records: list[dict[str, Any]], data: st.DataObject) -> None:
    first = data.draw(st.integers(0, len(records) - 2))
    second = data.draw(st.integers(first + 1, len(records) - 1))
    records = [dict(r) for r in records]
    records[second]["id"] = records[first]["id"]
    text, where = render(records)
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:{where[second]['id']}: equipment[{second}].id: duplicate id")
    assert f"(first at line {where[first]['']}, equipment[{first}])" in issue


# --------------------------------------------------------------------------- demo


def test_municipalities_from_packaged_csv() -> None:
    munis = municipalities()
    assert len(munis) == 23
    assert len({m.slug for m in munis}) == 23
    fontaine = next(m for m in munis if m.slug == "fontaine-les-dijon")
    assert fontaine.name == "Fontaine-lès-Dijon"
    assert munis[0].slug == "dijon" and munis[0].population == 159000
    assert all(re.fullmatch(r"[a-z0-9-]+", m.slug) for m in munis)


def demo_parsed(scale: float, seed: int = 0) -> Inventory:
    return parse_inventory(generate_demo(scale, seed), f"demo-{scale}.toml")


def test_demo_counts_at_full_scale() -> None:
    started = time.perf_counter()
    inv = demo_parsed(1.0)
    elapsed = time.perf_counter() - started
    # Measured ~0.3 s on the 2-core reference machine; the bound only catches a blow-up.
    assert elapsed < 3.0
    assert inv.count_by_kind() == {
        "crossroad": 113,
        "lighting_circuit": 1134,
        "building": 180,
        "camera": 269,
        "vehicle": 385,
        "access_terminal": 26,
    }
    assert inv.name == "Dijon Métropole"
    assert len(inv.municipalities) == 23

    points = [e.attrs["points"] for e in inv.equipment if e.kind == "lighting_circuit"]
    assert sum(points) == 34_000
    assert min(points) >= 25 and max(points) <= 35
    assert len(set(points)) > 5  # about 30, not all exactly 30

    vehicles = [e for e in inv.equipment if e.kind == "vehicle"]
    buses = [e for e in vehicles if e.profile == "bus"]
    service = [e for e in vehicles if e.profile == "service_vehicle"]
    assert (len(buses), len(service)) == (180, 205)
    assert all(e.id.startswith("bus-") and e.attrs["line"] in BUS_LINES for e in buses)
    lines = Counter(e.attrs["line"] for e in buses)
    assert len(lines) == len(BUS_LINES) == 12
    assert max(lines.values()) - min(lines.values()) <= 1
    assert all(e.id.startswith("veh-") and e.attrs["role"] in SERVICE_ROLES for e in service)
    assert {e.attrs["role"] for e in service} == set(SERVICE_ROLES)
    assert sum(e.attrs["radio"] is True for e in service) == 130
    assert all(isinstance(e.attrs["radio"], bool) for e in service)

    assert inv.placement.default == "sharded"
    assert {d: inv.placement.shards_for(d) for d in DOMAIN_OF_KIND.values()} == {
        "traffic": 1,
        "lighting": 3,
        "buildings": 1,
        "video": 1,
        "fleet": 1,
        "access": 1,
    }


def test_demo_ids_endpoints_profiles() -> None:
    inv = build_demo(1.0)
    prefix_of = {
        "crossroad": ("xr",),
        "lighting_circuit": ("lc",),
        "building": ("bld",),
        "camera": ("cam",),
        "vehicle": ("bus", "veh"),
        "access_terminal": ("at",),
    }
    numbers: dict[tuple[str, str], list[int]] = {}
    for eq in inv.equipment:
        prefix, rest = eq.id.split("-", 1)
        slug, number = rest.rsplit("-", 1)
        assert prefix in prefix_of[eq.kind]
        assert slug == eq.municipality and re.fullmatch(r"\d{4}", number)
        numbers.setdefault((prefix, slug), []).append(int(number))
    for series in numbers.values():
        assert series == list(range(1, len(series) + 1))

    def of(kind: str) -> list[Equipment]:
        return [e for e in inv.equipment if e.kind == kind]

    for i, eq in enumerate(of("crossroad")):
        assert eq.endpoint == f"modbus://127.0.0.1:{15020 + i // 200}/{i % 200 + 1}"
        assert eq.profile == "traffic_controller"
    for i, eq in enumerate(of("lighting_circuit")):
        assert eq.endpoint == f"modbus://127.0.0.1:{15100 + i // 200}/{i % 200 + 1}"
        assert eq.profile == "lighting_cabinet"
    assert of("lighting_circuit")[-1].endpoint == "modbus://127.0.0.1:15105/134"
    for i, eq in enumerate(of("access_terminal")):
        assert eq.endpoint == f"modbus://127.0.0.1:15200/{i + 1}"
        assert eq.profile == "access_terminal"
    for i, eq in enumerate(of("building")):
        assert eq.endpoint == f"opcua://127.0.0.1:{4840 + i // 60}/bld/{eq.id}"
        assert eq.profile == "bms"
    assert {e.endpoint for e in of("camera") + of("vehicle")} == {"mqtt"}
    assert {e.profile for e in of("camera")} == {"camera"}
    endpoints = [e.endpoint for e in inv.equipment if e.endpoint != "mqtt"]
    assert len(endpoints) == len(set(endpoints))


def test_demo_spread_by_population() -> None:
    inv = build_demo(1.0)
    munis = municipalities()
    total_pop = sum(m.population for m in munis)
    for kind, total in inv.count_by_kind().items():
        per_muni = Counter(e.municipality for e in inv.equipment if e.kind == kind)
        for m in munis:
            if kind == "vehicle":
                continue  # buses and service vehicles are apportioned separately
            assert abs(per_muni[m.slug] - total * m.population / total_pop) < 1, (kind, m.slug)
    for eq in inv.equipment:
        home = inv.municipality(eq.municipality)
        assert distance_km(home.lat, home.lon, eq.lat, eq.lon) <= 4.6
    dijon = [e for e in inv.equipment if e.municipality == "dijon"]
    spread = max(distance_km(47.322, 5.0415, e.lat, e.lon) for e in dijon)
    assert spread > 2.0  # Dijon's equipment is not piled on its centroid


def test_demo_at_tenth_scale() -> None:
    inv = demo_parsed(0.1)
    assert inv.count_by_kind() == {
        "crossroad": 11,
        "lighting_circuit": 113,
        "building": 18,
        "camera": 27,
        "vehicle": 39,  # 18 buses + 21 service vehicles (205 * 0.1 = 20.5, half up)
        "access_terminal": 3,
    }
    points = [e.attrs["points"] for e in inv.equipment if e.kind == "lighting_circuit"]
    assert sum(points) == 3400 and 25 <= min(points) and max(points) <= 35
    assert sum(1 for e in inv.equipment if e.attrs.get("radio") is True) == 13
    assert inv == build_demo(0.1)


@pytest.mark.parametrize("scale", [0.0005, 0.001, 0.0123, 0.5, 2.5])
def test_demo_other_scales(scale: float) -> None:
    counts = demo_counts(scale)
    inv = demo_parsed(scale)
    assert inv.count_by_kind() == counts.by_kind()
    assert all(n >= 1 for n in inv.count_by_kind().values())
    points = [e.attrs["points"] for e in inv.equipment if e.kind == "lighting_circuit"]
    assert sum(points) == counts.lamp_points
    assert all(25 <= p <= 35 for p in points)
    if 25 * counts.lighting_circuit <= round(34_000 * scale) <= 35 * counts.lighting_circuit:
        assert counts.lamp_points == round(34_000 * scale)


def test_demo_scale_bounds() -> None:
    empty = demo_parsed(0.0)
    assert empty.equipment == () and len(empty.municipalities) == 23
    for bad in (-0.1, MAX_SCALE + 0.5, math.nan, math.inf):
        with pytest.raises(ConfigError, match="scale"):
            generate_demo(bad)


def test_demo_is_deterministic() -> None:
    assert generate_demo(1.0, 0) == generate_demo(1.0, 0)
    assert generate_demo(0.1, 42) == generate_demo(0.1, 42)
    a, b = build_demo(0.1, 1), build_demo(0.1, 2)
    assert [e.id for e in a.equipment] == [e.id for e in b.equipment]
    assert [e.endpoint for e in a.equipment] == [e.endpoint for e in b.equipment]
    moved = sum(
        (x.lat, x.lon) != (y.lat, y.lon) for x, y in zip(a.equipment, b.equipment, strict=True)
    )
    assert moved == len(a.equipment)
    assert generate_demo(0.1, 1) != generate_demo(0.1, 2)


def test_demo_text_format() -> None:
    text = generate_demo(0.1)
    assert 'name = "Fontaine-lès-Dijon"' in text  # UTF-8 kept
    assert re.search(r"^lat = \d+\.\d{6}$", text, re.M)
    assert not re.search(r"^l(at|on) = (?!-?\d+\.\d{6}$)", text, re.M)
    assert "[placement.shards]\ntraffic = 1\nlighting = 3\n" in text


# -- what crisis plans select by: tags, the building a camera watches, camera presets

PLAN_ATTRS = BASE + """
[[equipment]]
id = "bld-dijon-0001"
kind = "building"
municipality = "dijon"
lat = 47.3210
lon = 5.0400
endpoint = "opcua://127.0.0.1:4840/bld/bld-dijon-0001"
profile = "bms"

[[equipment]]
id = "cam-dijon-0001"
kind = "camera"
municipality = "dijon"
lat = 47.3211
lon = 5.0401
endpoint = "mqtt"
profile = "camera"
[equipment.attrs]
tags = ["flood_prone", "bridge"]
watches = "bld-dijon-0001"
presets = { home = 1, flood = 12 }
"""


def test_tags_watches_and_presets_are_read() -> None:
    cam = parse_inventory(PLAN_ATTRS, SRC).by_id("cam-dijon-0001")
    assert cam.attrs["tags"] == ("flood_prone", "bridge")
    assert cam.attrs["watches"] == "bld-dijon-0001"
    assert dict(cam.attrs["presets"]) == {"home": 1, "flood": 12}


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ('tags = ["flood_prone", "bridge"]', 'tags = ["flood_prone", "brigde"]',
         "equipment[3].attrs.tags", "unknown tag 'brigde' (did you mean 'bridge'?"),
        ('tags = ["flood_prone", "bridge"]', 'tags = "flood_prone"',
         "equipment[3].attrs.tags", "expected an array of strings"),
        ('tags = ["flood_prone", "bridge"]', 'tags = ["bridge", "bridge"]',
         "equipment[3].attrs.tags", "a tag is listed twice"),
        ('watches = "bld-dijon-0001"', 'watches = "bld-dijon-0009"',
         "equipment[3].attrs.watches", "unknown building 'bld-dijon-0009'"),
        ('watches = "bld-dijon-0001"', 'watches = "xr-dijon-0001"',
         "equipment[3].attrs.watches", "'xr-dijon-0001' is a crossroad, not a building"),
        ("presets = { home = 1, flood = 12 }", "presets = { home = 1, flood = 256 }",
         "equipment[3].attrs.presets.flood", "expected a preset number in 0..255"),
        ("presets = { home = 1, flood = 12 }", 'presets = { Flood = 3 }',
         "equipment[3].attrs.presets.Flood", "does not match"),
        ("presets = { home = 1, flood = 12 }", "presets = 12",
         "equipment[3].attrs.presets", "expected a table of preset numbers by name"),
    ],
)
def test_plan_attrs_errors_name_file_line_and_field(old: str, new: str, field: str,
                                                     message: str) -> None:
    text = PLAN_ATTRS.replace(old, new)
    issues = issues_of(text)
    assert len(issues) == 1, issues
    key = new.split("=", 1)[0].strip()
    assert issues[0].startswith(f"{SRC}:{line_of(text, key + ' =')}: {field}: "), issues
    assert message in issues[0]


def test_only_cameras_watch_or_have_presets() -> None:
    text = BASE.replace('label = "Rue des Échoppes"',
                        'label = "Rue des Échoppes"\npresets = { home = 1 }')
    (issue,) = issues_of(text)
    assert issue.startswith(f"{SRC}:{line_of(text, 'presets =')}: equipment[1].attrs.presets: ")
    assert "only a camera has presets (this is a lighting_circuit)" in issue


def test_the_demo_tags_equipment_for_the_plans() -> None:
    inv = build_demo(1.0)
    tags = Counter((eq.kind, t) for eq in inv.equipment for t in eq.attrs.get("tags", ()))
    assert tags[("access_terminal", "flood_prone")] > 0
    assert tags[("lighting_circuit", "road_lighting")] > 0
    assert tags[("lighting_circuit", "priority_route")] > 0
    assert tags[("crossroad", "priority_route")] > 0
    buildings = {eq.id: eq.municipality for eq in inv.equipment if eq.kind == "building"}
    watching = [eq for eq in inv.equipment if eq.kind == "camera" and "watches" in eq.attrs]
    assert watching and all(buildings[c.attrs["watches"]] == c.municipality for c in watching)
    assert all(c.attrs["presets"]["flood"] == 12 for c in watching)
    # The positions drawn before tags existed: the tags have a random stream of their own.
    first = build_demo(0.3, seed=5).by_id("xr-dijon-0001")
    assert (first.lat, first.lon) == (47.306529, 5.018067)
    assert generate_demo(0.1, seed=3) == generate_demo(0.1, seed=3)


def test_free_demo_ports_stay_below_the_ephemeral_range() -> None:
    # A port of the ephemeral range, free when drawn, may be taken by an outgoing
    # connection before the simulator listens on it.
    first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        ports = DemoPorts.free()
        bases = (ports.traffic, ports.lighting, ports.access, ports.opcua)
        assert len(set(bases)) == 4
        assert all(10_000 <= b and b + 64 <= first for b in bases), bases
