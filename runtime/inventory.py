"""The inventory: which equipment the metropolis has, where it is, how to reach it.

An inventory is a TOML file (see ``commandpost inventory demo`` for a full one)::

    [metropolis]
    name = "Dijon Métropole"

    [placement]
    default = "sharded"
    [placement.shards]
    lighting = 3

    [[municipality]]
    slug = "dijon"
    name = "Dijon"
    lat = 47.3220
    lon = 5.0415
    population = 159000

    [[equipment]]
    id = "xr-dijon-0001"
    kind = "crossroad"
    municipality = "dijon"
    lat = 47.3201
    lon = 5.0399
    endpoint = "modbus://127.0.0.1:15020/1"
    profile = "traffic_controller"

``[placement]`` says how entities are placed onto host actors
(:mod:`runtime.placement`): ``default`` is ``"sharded"`` (an entity shares one
of its domain's hosts) or ``"dedicated"`` (a host of its own);
``[placement.kinds]`` overrides it per kind, and an equipment's own
``placement`` per entity; ``[placement.shards]`` gives a domain's number of
sharded hosts (1 unless set). ``[placement.colocate]`` puts the sharded
entities of a domain on the hosts of another, by the same stable hash over
that domain's shard count: with ``fleet = "traffic"`` the vehicles share the
crossroads' hosts, which stay ``traffic`` hosts in the supervision tree (a
vehicle placed ``dedicated`` still gets a ``fleet`` host of its own). A domain
joins one that keeps hosts of its own (no chains), never itself nor
``control``, and has no shard count of its own::

    [placement.colocate]
    fleet = "traffic"

Plans and the alarm topology read four ``attrs`` of their own, which the
check validates: ``tags`` (any equipment; names from :data:`TAGS`, such as
``flood_prone``), for a camera ``watches`` (the id of a building of the
inventory) and ``presets`` (PTZ preset numbers by name, ``{flood = 12}``), and
for a building ``doors`` (door numbers by tag of :data:`DOOR_TAGS`,
``{evacuation = [1, 2]}``)::

    [equipment.attrs]
    tags = ["priority_route"]
    watches = "bld-dijon-0001"
    presets = { home = 1, flood = 12 }

A crossroad lists its ``approaches`` (:class:`~runtime.transit.Approach`):
the arms vehicles drive in on, numbered 1 to 8, each with the direction of
travel on it (``heading``, degrees clockwise from north) and its stop line's
position, within :data:`~runtime.transit.MAX_STOP_LINE_M` of the crossroad::

    [equipment.attrs]
    approaches = [{number = 1, heading = 180.0, lat = 47.32032, lon = 5.0399},
                  {number = 3, heading = 0.0, lat = 47.31988, lon = 5.0399}]

Bus lines (:class:`~runtime.transit.BusLine`, whose module explains the
model) are ``[[bus_line]]`` tables. Each has a path of ``[lat, lon]`` points in
its outbound direction, its stops in that order, an optional timetable (then
every stop has its ``at_s``, seconds after the trip's departure) and the
crossroads it crosses, in order, each with the approaches it drives in on,
outbound and inbound::

    [[bus_line]]
    id = "L1"
    municipality = "dijon"
    free_flow_speed_mps = 8.0          # optional, 8 m/s unless set
    path = [
        [47.3150, 5.0399],
        [47.3250, 5.0399],
    ]
    [bus_line.timetable]
    headway_s = 600
    first = "05:30"
    last = "00:30"                     # optional: none runs around the clock
    [[bus_line.stop]]
    id = "L1-00"
    lat = 47.3150
    lon = 5.0399
    at_s = 0.0
    [[bus_line.stop]]
    id = "L1-01"
    lat = 47.3250
    lon = 5.0399
    at_s = 140.0
    [[bus_line.crossroad]]
    id = "xr-dijon-0001"
    outbound = 3
    inbound = 1

The check places stops and crossroads on the path in order, within
:data:`~runtime.transit.PATH_TOLERANCE_M`, and each approach's heading within
:data:`~runtime.transit.HEADING_TOLERANCE_DEG` of the line's direction at its
stop line. When an inventory declares bus lines, each bus (a vehicle with
``attrs.line``) names one of them. An inventory without lines leaves its buses'
lines free, and the simulator invents their routes.

>>> inv = load_inventory("metropolis.toml")          # doctest: +SKIP
>>> inv.by_id("xr-dijon-0001").domain                # doctest: +SKIP
'traffic'

:func:`parse_inventory` checks the whole file before it returns and reports
every problem at once: :class:`~runtime.errors.InventoryError` carries one line
per issue, ``"{file}:{line}: {field}: {message}"``, where ``field`` is a path
such as ``equipment[7].kind`` (array indices count from 0, in file order).

What only a kind's behaviour knows of its record is checked by the ``check``
it is given (``commandpost inventory check`` and ``run`` give each kind's,
:func:`actors.registry.check_record`): the schedule a lighting circuit or a
crossroad names (``attrs.schedule``) and the pedestrian zone of an access
terminal (``attrs.zone``) must be shipped schedules of that kind. The service
refuses to start with an inventory that fails it
(:meth:`Inventory.check_records`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from runtime.datafile import (
    NAME_PATTERN,
    Checker,
    KeyPath,
    field_name,
    parse_toml,
    read_text,
    shown,
    toml_key,
    toml_value,
    type_name,
)
from runtime.errors import ConfigError, InventoryError
from runtime.transit import (
    DEFAULT_FREE_FLOW_MPS,
    LINE_ID_PATTERN,
    MAX_APPROACHES,
    MAX_FREE_FLOW_MPS,
    MAX_STOP_LINE_M,
    STOP_ID_PATTERN,
    TIME_PATTERN,
    Approach,
    BusLine,
    Crossing,
    Stop,
    Timetable,
    approaches_of,
    line_geometry,
)

__all__ = [
    "CONTROL_DOMAIN",
    "COORDINATOR",
    "DOMAINS",
    "DOMAIN_OF_KIND",
    "DOOR_TAGS",
    "ID_PATTERN",
    "KINDS",
    "MAX_DISTANCE_KM",
    "MAX_PRESET",
    "MAX_SHARDS",
    "NAME_PATTERN",
    "PLACEMENTS",
    "SLUG_PATTERN",
    "TAGS",
    "Equipment",
    "Inventory",
    "Municipality",
    "PlacementPolicy",
    "RecordCheck",
    "distance_km",
    "dump_inventory",
    "load_inventory",
    "parse_inventory",
    "slugify",
    "tags_of",
]

KINDS: Final = (
    "crossroad",
    "lighting_circuit",
    "building",
    "camera",
    "vehicle",
    "access_terminal",
)
DOMAIN_OF_KIND: Final[Mapping[str, str]] = MappingProxyType(
    {
        "crossroad": "traffic",
        "lighting_circuit": "lighting",
        "building": "buildings",
        "camera": "video",
        "vehicle": "fleet",
        "access_terminal": "access",
    }
)
DOMAINS: Final = tuple(DOMAIN_OF_KIND[kind] for kind in KINDS)
#: The kind of the control room's coordinator entities (alarms, crisis, dispatch): they
#: run like equipment, in the ``control`` domain, but no inventory file declares them
#: (:func:`coordinator`); equipment listings leave them out.
COORDINATOR: Final = "coordinator"
CONTROL_DOMAIN: Final = "control"
#: Ids of the bus-priority pool's members, coordinators on hosts of their own: ``priority-1`` …
PRIORITY_PREFIX: Final = "priority-"
PLACEMENTS: Final = ("sharded", "dedicated")

#: Equipment ids appear in MQTT topics and Redis keys: no wildcards, no slashes.
ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: Municipality slugs appear in topics and API filters, as :func:`slugify` makes them.
SLUG_PATTERN: Final = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
#: The tags equipment may carry (``attrs.tags``): what crisis plans select equipment by.
TAGS: Final = (
    "flood_prone",       # floods first: bollards close the street, cameras watch it
    "priority_route",    # kept open in snow: gritted first, its crossroads on snow plans
    "road_lighting",     # lights a road (not a park or a square): full power in snow
    "pedestrian_zone",   # inside a pedestrian zone
    "school_zone",       # near a school
    "hospital_access",   # on the way to a hospital
    "tunnel",
    "bridge",
)
#: The tags a building's doors may carry (``attrs.doors``, door numbers by tag): what
#: its fire plan selects doors by (``actors/plans/fire.toml``).
DOOR_TAGS: Final = (
    "evacuation",        # unlocked by the fire plan: a way out
    "main_entrance",
    "service",
)
#: The highest PTZ preset number a camera takes (its ``preset`` field's range).
MAX_PRESET: Final = 255
#: Equipment farther than this from its municipality's centroid is a typo in a coordinate.
MAX_DISTANCE_KM: Final = 50.0
#: Host actors per domain; each is a Ray process (~70 MB), so the ceiling is a sanity bound.
MAX_SHARDS: Final = 64

_EARTH_RADIUS_KM: Final = 6371.0088


def slugify(name: str) -> str:
    """ASCII slug of a place name: ``"Fontaine-lès-Dijon"`` -> ``"fontaine-les-dijon"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two WGS84 points, in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlam = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def tags_of(eq: Equipment) -> frozenset[str]:
    """The tags of ``eq`` (``attrs.tags``; none when it has no such array of strings)."""
    tags = eq.attrs.get("tags")
    if not isinstance(tags, tuple | list):
        return frozenset()
    return frozenset(t for t in tags if isinstance(t, str))


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `lat = true` is a typo, not a coordinate.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_lat_lon(what: str, lat: object, lon: object) -> None:
    for axis, value, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if not _is_number(value):
            raise ConfigError(f"{what}: {axis} must be a number, got {value!r}")
        assert isinstance(value, int | float)
        if not -bound <= value <= bound:
            raise ConfigError(f"{what}: {axis} {value} outside [-{bound:g}, {bound:g}]")


def _freeze(value: Any) -> Any:
    """Deep read-only copy of a TOML value: tables become mapping proxies, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Municipality:
    """One of the metropolis's municipalities, named everywhere by its ASCII ``slug``."""

    slug: str
    name: str
    lat: float
    lon: float
    population: int

    def __post_init__(self) -> None:
        if not isinstance(self.slug, str) or not SLUG_PATTERN.match(self.slug):
            raise ConfigError(f"municipality slug {self.slug!r} is not an ASCII slug")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"municipality {self.slug!r}: name must be a non-empty string")
        _check_lat_lon(f"municipality {self.slug!r}", self.lat, self.lon)
        object.__setattr__(self, "lat", float(self.lat))
        object.__setattr__(self, "lon", float(self.lon))
        if not isinstance(self.population, int) or isinstance(self.population, bool):
            raise ConfigError(f"municipality {self.slug!r}: population must be an integer")
        if self.population < 0:
            raise ConfigError(f"municipality {self.slug!r}: population {self.population} < 0")


@dataclass(frozen=True, slots=True)
class Equipment:
    """One piece of field equipment, run as one entity actor.

    ``line`` is where its ``[[equipment]]`` header stands in the inventory file
    (0 when built in code); it is provenance, so equality ignores it. ``attrs``
    is free-form per kind (``points`` of a lighting circuit, ``line`` of a bus)
    and is frozen deeply: tables become read-only mappings, arrays tuples.
    """

    id: str
    kind: str
    municipality: str
    lat: float
    lon: float
    endpoint: str
    profile: str
    placement: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=_empty_mapping, hash=False)
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ID_PATTERN.match(self.id):
            raise ConfigError(f"equipment id {self.id!r} does not match {ID_PATTERN.pattern}")
        what = f"equipment {self.id!r}"
        if self.kind not in KINDS and self.kind != COORDINATOR:
            raise ConfigError(f"{what}: unknown kind {self.kind!r}")
        if not isinstance(self.municipality, str) or not SLUG_PATTERN.match(self.municipality):
            raise ConfigError(f"{what}: municipality {self.municipality!r} is not a slug")
        _check_lat_lon(what, self.lat, self.lon)
        object.__setattr__(self, "lat", float(self.lat))
        object.__setattr__(self, "lon", float(self.lon))
        for name in ("endpoint", "profile"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{what}: {name} must be a non-empty string")
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ConfigError(f"{what}: unknown placement {self.placement!r}")
        if not isinstance(self.attrs, Mapping):
            raise ConfigError(f"{what}: attrs must be a mapping")
        object.__setattr__(self, "attrs", _freeze(self.attrs))
        if not isinstance(self.line, int) or self.line < 0:
            raise ConfigError(f"{what}: line must be a non-negative integer")

    @property
    def domain(self) -> str:
        """The domain this kind belongs to (``traffic``, ``lighting``, …, ``control``)."""
        return DOMAIN_OF_KIND.get(self.kind, CONTROL_DOMAIN)


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """How entities are placed onto Ray host actors.

    ``sharded`` packs an entity with others of its domain into one of
    ``shards_for(domain)`` hosts; ``dedicated`` gives it a Ray actor of its own.
    An entity's own ``placement`` beats the per-kind choice, which beats ``default``.
    ``colocate`` maps a domain to the domain whose hosts its sharded entities
    join (:meth:`host_domain`): ``{"fleet": "traffic"}`` spreads the vehicles
    over the traffic hosts, by the traffic domain's shard count.
    """

    default: str = "sharded"
    kinds: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)
    shards: Mapping[str, int] = field(default_factory=_empty_mapping, hash=False)
    colocate: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)

    def __post_init__(self) -> None:
        if self.default not in PLACEMENTS:
            raise ConfigError(f"placement: unknown default {self.default!r}")
        for kind, mode in self.kinds.items():
            if kind not in KINDS:
                raise ConfigError(f"placement: unknown kind {kind!r}")
            if mode not in PLACEMENTS:
                raise ConfigError(f"placement: unknown placement {mode!r} for kind {kind!r}")
        for domain, count in self.shards.items():
            if domain not in DOMAINS:
                raise ConfigError(f"placement: unknown domain {domain!r}")
            if not isinstance(count, int) or isinstance(count, bool):
                raise ConfigError(f"placement: shards for {domain!r} must be an integer")
            if not 1 <= count <= MAX_SHARDS:
                raise ConfigError(f"placement: shards for {domain!r} outside [1, {MAX_SHARDS}]")
        for domain, target in self.colocate.items():
            problem = _colocate_problem(domain, target, self.colocate)
            if problem is not None:
                raise ConfigError(f"placement: colocate {domain!r}: {problem}")
            if domain in self.shards:
                raise ConfigError(f"placement: shards for {domain!r}: "
                                  f"{_SHARDS_OF_COLOCATED.format(domain=domain, target=target)}")
        object.__setattr__(self, "kinds", MappingProxyType(dict(self.kinds)))
        object.__setattr__(self, "shards", MappingProxyType(dict(self.shards)))
        object.__setattr__(self, "colocate", MappingProxyType(dict(self.colocate)))

    def mode_for(self, eq: Equipment) -> str:
        """``sharded`` or ``dedicated`` for this piece of equipment."""
        if eq.placement is not None:
            return eq.placement
        return self.kinds.get(eq.kind, self.default)

    def shards_for(self, domain: str) -> int:
        """How many host actors share the sharded entities of ``domain`` (1 unless set)."""
        if domain not in DOMAINS:
            raise ConfigError(f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})")
        return self.shards.get(domain, 1)

    def host_domain(self, domain: str) -> str:
        """The domain whose hosts take the sharded entities of ``domain``: the one it is
        colocated with, else itself."""
        if domain not in DOMAINS:
            raise ConfigError(f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})")
        return self.colocate.get(domain, domain)


#: Why a colocated domain has no shard count of its own.
_SHARDS_OF_COLOCATED: Final = ("{domain!r} joins the hosts of {target!r} "
                               "(placement.colocate.{domain}) and is spread over its shards: "
                               "it has no shard count of its own")


def _colocate_problem(domain: str, target: object,
                     colocate: Mapping[str, object]) -> str | None:
    """What is wrong with colocating ``domain`` on the hosts of ``target`` (None if
    nothing), given the whole ``colocate`` table."""
    if domain == CONTROL_DOMAIN:
        return ("the control domain's coordinators keep a host of their own; "
                "it cannot join another domain's hosts")
    if domain not in DOMAINS:
        return f"unknown domain {domain!r} (expected one of {', '.join(DOMAINS)})"
    if not isinstance(target, str):
        return f"expected a domain name, got {type_name(target)} {shown(target)}"
    if target == CONTROL_DOMAIN:
        return ("the control domain's host is the coordinators'; equipment cannot join it")
    if target not in DOMAINS:
        guess = difflib.get_close_matches(target, DOMAINS, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        return f"unknown domain {target!r} ({hint}expected one of {', '.join(DOMAINS)})"
    if target == domain:
        return f"{domain!r} cannot join its own hosts"
    if target in colocate:
        return (f"{target!r} joins the hosts of {colocate[target]!r} itself: name a "
                f"domain that keeps hosts of its own (no chains)")
    return None


@dataclass(frozen=True, slots=True)
class Inventory:
    """A validated metropolis: its municipalities, its equipment, their placement and
    its bus lines (``bus_lines``, by id).

    Construction checks what spans records (unique slugs and ids, declared
    municipalities, equipment within :data:`MAX_DISTANCE_KM` of its
    municipality, the crossroads and approaches that lines cross, the lines
    that buses drive); :func:`parse_inventory` checks the same with line
    numbers, and the lines' geometry too.
    """

    name: str
    municipalities: tuple[Municipality, ...]
    equipment: tuple[Equipment, ...]
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    bus_lines: Mapping[str, BusLine] = field(default_factory=_empty_mapping, hash=False)
    source: str = field(default="<memory>", compare=False)
    _by_id: Mapping[str, Equipment] = field(init=False, repr=False, compare=False, hash=False)
    _by_slug: Mapping[str, Municipality] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("inventory name must be a non-empty string")
        object.__setattr__(self, "municipalities", tuple(self.municipalities))
        object.__setattr__(self, "equipment", tuple(self.equipment))
        if not self.municipalities:
            raise ConfigError("an inventory needs at least one municipality")
        by_slug: dict[str, Municipality] = {}
        for muni in self.municipalities:
            if muni.slug in by_slug:
                raise ConfigError(f"duplicate municipality slug {muni.slug!r}")
            by_slug[muni.slug] = muni
        by_id: dict[str, Equipment] = {}
        for eq in self.equipment:
            if eq.id in by_id:
                raise ConfigError(f"duplicate equipment id {eq.id!r}")
            by_id[eq.id] = eq
            home = by_slug.get(eq.municipality)
            if home is None:
                raise ConfigError(
                    f"equipment {eq.id!r}: municipality {eq.municipality!r} is not declared"
                )
            km = distance_km(home.lat, home.lon, eq.lat, eq.lon)
            if km > MAX_DISTANCE_KM:
                raise ConfigError(
                    f"equipment {eq.id!r} is {km:.1f} km from the centroid of "
                    f"{eq.municipality!r} (limit {MAX_DISTANCE_KM:g} km)"
                )
        object.__setattr__(self, "_by_slug", MappingProxyType(by_slug))
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))
        self._check_lines(by_slug, by_id)

    def _check_lines(self, by_slug: Mapping[str, Municipality],
                     by_id: Mapping[str, Equipment]) -> None:
        if not isinstance(self.bus_lines, Mapping):
            raise ConfigError("bus_lines must be a mapping of lines by id")
        lines = dict(self.bus_lines)
        object.__setattr__(self, "bus_lines", MappingProxyType(lines))
        for key, line in lines.items():
            if not isinstance(line, BusLine) or line.id != key:
                raise ConfigError(f"bus line {key!r} is not a BusLine of that id")
            if line.municipality not in by_slug:
                raise ConfigError(f"bus line {key!r}: municipality {line.municipality!r} "
                                  "is not declared")
            for crossing in line.crossings:
                xr = by_id.get(crossing.crossroad_id)
                if xr is None or xr.kind != "crossroad":
                    raise ConfigError(f"bus line {key!r} crosses {crossing.crossroad_id!r}, "
                                      "which is not a crossroad of the inventory")
                numbers = {a.number for a in approaches_of(xr)}
                for number in (crossing.outbound_approach, crossing.inbound_approach):
                    if number not in numbers:
                        raise ConfigError(f"bus line {key!r}: crossroad {xr.id!r} has no "
                                          f"approach {number}")
        if lines:
            for eq in self.equipment:
                if eq.kind == "vehicle" and "line" in eq.attrs and eq.attrs["line"] not in lines:
                    raise ConfigError(f"equipment {eq.id!r} drives line {eq.attrs['line']!r}, "
                                      "which is not declared")

    def by_id(self, id: str) -> Equipment:
        """The equipment with this id; :class:`KeyError` if there is none."""
        return self._by_id[id]

    def municipality(self, slug: str) -> Municipality:
        """The municipality with this slug; :class:`KeyError` if there is none."""
        return self._by_slug[slug]

    def check_records(self, check: RecordCheck) -> None:
        """Raise :class:`InventoryError` with what ``check`` finds wrong in each equipment
        record, at the line of its ``[[equipment]]`` header."""
        issues = [(eq.line, f"{self.source}:{eq.line}: "
                            f"{field_name(('equipment', index, *sub))}: {message}")
                  for index, eq in enumerate(self.equipment) for sub, message in check(eq)]
        if issues:
            raise InventoryError([text for _, text in sorted(issues)])

    def restricted(self, kinds: Iterable[str]) -> Inventory:
        """This inventory with only the equipment of ``kinds`` (a lighter city for tests
        and benches). Its bus lines keep their paths and stops but not their crossings
        of the crossroads left out."""
        wanted = set(kinds)
        keep = tuple(eq for eq in self.equipment if eq.kind in wanted)
        crossroads = {eq.id for eq in keep if eq.kind == "crossroad"}
        lines = {
            key: dataclasses.replace(line, crossings=tuple(
                c for c in line.crossings if c.crossroad_id in crossroads))
            for key, line in self.bus_lines.items()
        }
        return dataclasses.replace(self, equipment=keep, bus_lines=lines)

    def count_by_kind(self) -> dict[str, int]:
        """Equipment count per kind, every kind present (0 if none), in :data:`KINDS` order."""
        counts = dict.fromkeys(KINDS, 0)
        for eq in self.equipment:
            counts[eq.kind] += 1
        return counts


# --------------------------------------------------------------------------- loading


#: What the behaviours find wrong in an equipment record (a schedule of another kind):
#: ``(path under the record, message)`` pairs (:meth:`runtime.entity.Entity.check_record`).
RecordCheck = Callable[[Equipment], Iterable[tuple[KeyPath, str]]]


def load_inventory(path: str | os.PathLike[str], *,
                   check: RecordCheck | None = None) -> Inventory:
    """Read and validate an inventory file; :class:`InventoryError` lists every issue."""
    return parse_inventory(read_text(path, InventoryError), os.fspath(path), check=check)


def parse_inventory(text: str, source: str, *, check: RecordCheck | None = None) -> Inventory:
    """Validate inventory TOML ``text`` (``source`` names it in issues) into an :class:`Inventory`.

    Every problem is collected before raising :class:`InventoryError`, whose
    ``issues`` are ``"{source}:{line}: {field}: {message}"`` lines sorted by line.
    ``check`` adds what the behaviours find wrong in each valid equipment record.
    """
    doc = parse_toml(text, source, InventoryError)
    return _Parser(text, source, doc, check).run()


def _choices(options: Iterable[str]) -> str:
    return ", ".join(options)


_TOP_KEYS: Final = ("metropolis", "placement", "municipality", "equipment", "bus_line")
_METROPOLIS_KEYS: Final = ("name",)
_PLACEMENT_KEYS: Final = ("default", "kinds", "shards", "colocate")
_MUNICIPALITY_KEYS: Final = ("slug", "name", "lat", "lon", "population")
_EQUIPMENT_KEYS: Final = (
    "id",
    "kind",
    "municipality",
    "lat",
    "lon",
    "endpoint",
    "profile",
    "placement",
    "attrs",
)
_APPROACH_KEYS: Final = ("number", "heading", "lat", "lon")
_BUS_LINE_KEYS: Final = ("id", "municipality", "free_flow_speed_mps", "path", "timetable",
                         "stop", "crossroad")
_TIMETABLE_KEYS: Final = ("headway_s", "first", "last")
_STOP_KEYS: Final = ("id", "lat", "lon", "at_s")
_LINE_CROSSROAD_KEYS: Final = ("id", "outbound", "inbound")


class _Parser(Checker):
    """One validation pass over a parsed inventory document, collecting issues."""

    WHOLE = "inventory"

    def __init__(self, text: str, source: str, doc: dict[str, Any],
                 check: RecordCheck | None = None) -> None:
        super().__init__(text, source, doc)
        self._check = check
        # Where each declared equipment id stands, valid record or not.
        self._equipment_paths: dict[str, KeyPath] = {}

    # -- typed fields; each returns None after reporting a problem (or when optional and absent)

    def _present(self, table: Mapping[str, Any], path: KeyPath, key: str, required: bool) -> bool:
        if key in table:
            return True
        if required:
            self._issue((*path, key), "required field missing", at=path)
        return False

    def _str(
        self, table: Mapping[str, Any], path: KeyPath, key: str, *, required: bool = True
    ) -> str | None:
        if not self._present(table, path, key, required):
            return None
        value = table[key]
        if not isinstance(value, str):
            self._issue((*path, key), f"expected a string, got {type_name(value)} {shown(value)}")
            return None
        if not value.strip():
            self._issue((*path, key), "must not be empty")
            return None
        return value

    def _number(self, table: Mapping[str, Any], path: KeyPath, key: str) -> float | None:
        if not self._present(table, path, key, True):
            return None
        value = table[key]
        if not _is_number(value):
            self._issue((*path, key), f"expected a number, got {type_name(value)} {shown(value)}")
            return None
        return float(value)

    def _int(self, table: Mapping[str, Any], path: KeyPath, key: str) -> int | None:
        if not self._present(table, path, key, True):
            return None
        value = table[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self._issue(
                (*path, key), f"expected an integer, got {type_name(value)} {shown(value)}"
            )
            return None
        return value

    def _coordinates(
        self, table: Mapping[str, Any], path: KeyPath
    ) -> tuple[float | None, float | None]:
        lat = self._number(table, path, "lat")
        if lat is not None and not -90.0 <= lat <= 90.0:
            self._issue((*path, "lat"), f"latitude {lat:g} outside [-90, 90]")
            lat = None
        lon = self._number(table, path, "lon")
        if lon is not None and not -180.0 <= lon <= 180.0:
            self._issue((*path, "lon"), f"longitude {lon:g} outside [-180, 180]")
            lon = None
        return lat, lon

    def _placement_value(self, value: object, path: KeyPath) -> str | None:
        if value in PLACEMENTS:
            assert isinstance(value, str)
            return value
        text = repr(value) if isinstance(value, str) else shown(value)
        self._issue(path, f"unknown placement {text} (expected one of {_choices(PLACEMENTS)})")
        return None

    # -- sections

    def run(self) -> Inventory:
        self._keys(self._doc, (), _TOP_KEYS)
        name = self._metropolis()
        placement = self._placement()
        municipalities, slugs = self._municipalities()
        equipment = self._equipment(municipalities, slugs)
        lines = self._bus_lines(slugs, equipment)
        if not self._issues and name is not None and placement is not None:
            try:
                return Inventory(
                    name=name,
                    municipalities=tuple(m for m in municipalities if m is not None),
                    equipment=tuple(equipment),
                    placement=placement,
                    bus_lines=lines,
                    source=self._source,
                )
            except ConfigError as exc:
                # Every cross-record rule is checked above with a line; this is the backstop.
                self._issue((), str(exc))
        if not self._issues:
            self._issue((), "inventory could not be built")
        raise InventoryError(self.issue_lines())

    def _metropolis(self) -> str | None:
        path: KeyPath = ("metropolis",)
        if "metropolis" not in self._doc:
            self._issue(path, "required table [metropolis] missing")
            return None
        table = self._table(self._doc["metropolis"], path, "a table")
        if table is None:
            return None
        self._keys(table, path, _METROPOLIS_KEYS)
        return self._str(table, path, "name")

    def _placement(self) -> PlacementPolicy | None:
        path: KeyPath = ("placement",)
        if "placement" not in self._doc:
            return PlacementPolicy()
        table = self._table(self._doc["placement"], path, "a table")
        if table is None:
            return None
        before = len(self._issues)
        self._keys(table, path, _PLACEMENT_KEYS)
        default = "sharded"
        if "default" in table:
            default = self._placement_value(table["default"], (*path, "default")) or default
        kinds: dict[str, str] = {}
        kinds_table = (
            self._table(table["kinds"], (*path, "kinds"), "a table") if "kinds" in table else {}
        )
        for kind, mode in (kinds_table or {}).items():
            kind_path = (*path, "kinds", kind)
            if kind not in KINDS:
                self._issue(kind_path, f"unknown kind {kind!r} (expected one of {_choices(KINDS)})")
            elif (checked := self._placement_value(mode, kind_path)) is not None:
                kinds[kind] = checked
        shards: dict[str, int] = {}
        shards_table = (
            self._table(table["shards"], (*path, "shards"), "a table") if "shards" in table else {}
        )
        for domain, count in (shards_table or {}).items():
            domain_path = (*path, "shards", domain)
            if domain not in DOMAINS:
                self._issue(
                    domain_path, f"unknown domain {domain!r} (expected one of {_choices(DOMAINS)})"
                )
            elif not isinstance(count, int) or isinstance(count, bool):
                self._issue(
                    domain_path, f"expected an integer, got {type_name(count)} {shown(count)}"
                )
            elif not 1 <= count <= MAX_SHARDS:
                self._issue(domain_path, f"shard count {count} outside [1, {MAX_SHARDS}]")
            else:
                shards[domain] = count
        colocate = self._colocate(table, path, shards_table or {})
        if len(self._issues) != before:
            return None
        return PlacementPolicy(default=default, kinds=kinds, shards=shards, colocate=colocate)

    def _colocate(self, table: Mapping[str, Any], path: KeyPath,
                  shards: Mapping[str, Any]) -> dict[str, str]:
        """``[placement.colocate]``: each domain to the domain whose hosts it joins."""
        if "colocate" not in table:
            return {}
        where = (*path, "colocate")
        colocate = self._table(table["colocate"], where, "a table of domains by domain")
        out: dict[str, str] = {}
        for domain, target in (colocate or {}).items():
            problem = _colocate_problem(domain, target, colocate or {})
            if problem is not None:
                self._issue((*where, domain), problem)
                continue
            out[domain] = target
            if domain in shards:
                self._issue((*path, "shards", domain),
                            _SHARDS_OF_COLOCATED.format(domain=domain, target=target))
        return out

    def _array_of_tables(self, key: str) -> list[tuple[KeyPath, Mapping[str, Any]]]:
        value = self._doc.get(key, [])
        if not isinstance(value, list):
            self._issue((key,), f"expected an array of tables ([[{key}]]), got {type_name(value)}")
            return []
        out: list[tuple[KeyPath, Mapping[str, Any]]] = []
        for index, item in enumerate(value):
            table = self._table(item, (key, index), "a table")
            if table is not None:
                out.append(((key, index), table))
        return out

    def _municipalities(
        self,
    ) -> tuple[list[Municipality | None], dict[str, tuple[KeyPath, Municipality | None]]]:
        """Valid municipalities (None where a record failed) and every declared slug."""
        records = self._array_of_tables("municipality")
        if self._doc.get("municipality", []) == []:
            self._issue(("municipality",), "at least one [[municipality]] is required")
        out: list[Municipality | None] = []
        slugs: dict[str, tuple[KeyPath, Municipality | None]] = {}
        for path, table in records:
            before = len(self._issues)
            self._keys(table, path, _MUNICIPALITY_KEYS)
            slug = self._str(table, path, "slug")
            if slug is not None and not SLUG_PATTERN.match(slug):
                self._issue(
                    (*path, "slug"),
                    f"{slug!r} is not a lowercase ASCII slug (like {slugify(slug) or 'dijon'!r})",
                )
                slug = None
            name = self._str(table, path, "name")
            lat, lon = self._coordinates(table, path)
            population = self._int(table, path, "population")
            if population is not None and population < 0:
                self._issue((*path, "population"), f"population {population} is negative")
            muni: Municipality | None = None
            if len(self._issues) == before:
                assert slug is not None and name is not None
                assert lat is not None and lon is not None and population is not None
                muni = Municipality(slug, name, lat, lon, population)
            if slug is not None:
                if slug in slugs:
                    first = slugs[slug][0]
                    self._issue(
                        (*path, "slug"),
                        f"duplicate slug {slug!r} (first at line "
                        f"{self._where.line(first)}, {field_name(first)})",
                    )
                    muni = None
                else:
                    slugs[slug] = (path, muni)
            out.append(muni)
        return out, slugs

    def _equipment(
        self,
        municipalities: list[Municipality | None],
        slugs: Mapping[str, tuple[KeyPath, Municipality | None]],
    ) -> list[Equipment]:
        out: list[Equipment] = []
        seen: dict[str, KeyPath] = {}
        for path, table in self._array_of_tables("equipment"):
            before = len(self._issues)
            self._keys(table, path, _EQUIPMENT_KEYS)
            ident = self._str(table, path, "id")
            if ident is not None:
                if not ID_PATTERN.match(ident):
                    self._issue(
                        (*path, "id"),
                        f"{ident!r} does not match "
                        f"{ID_PATTERN.pattern} (ids appear in MQTT topics)",
                    )
                elif ident in seen:
                    first = seen[ident]
                    self._issue(
                        (*path, "id"),
                        f"duplicate id {ident!r} (first at line "
                        f"{self._where.line(first)}, {field_name(first)})",
                    )
                else:
                    seen[ident] = path
            kind = self._str(table, path, "kind")
            if kind is not None and kind not in KINDS:
                self._issue(
                    (*path, "kind"), f"unknown kind {kind!r} (expected one of {_choices(KINDS)})"
                )
            slug = self._str(table, path, "municipality")
            home: Municipality | None = None
            if slug is not None:
                if slug not in slugs:
                    guess = difflib.get_close_matches(slug, list(slugs), n=1)
                    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                    self._issue(
                        (*path, "municipality"), f"municipality {slug!r} is not declared{hint}"
                    )
                else:
                    home = slugs[slug][1]
            lat, lon = self._coordinates(table, path)
            if home is not None and lat is not None and lon is not None:
                km = distance_km(home.lat, home.lon, lat, lon)
                if km > MAX_DISTANCE_KM:
                    self._issue(
                        path,
                        f"position ({lat:g}, {lon:g}) is {km:.1f} km from the "
                        f"centroid of {home.slug!r} (limit {MAX_DISTANCE_KM:g} km)",
                        at=(*path, "lat"),
                    )
            endpoint = self._str(table, path, "endpoint")
            profile = self._str(table, path, "profile")
            placement: str | None = None
            if "placement" in table:
                placement = self._placement_value(table["placement"], (*path, "placement"))
            attrs: Mapping[str, Any] | None = {}
            if "attrs" in table:
                attrs = self._table(table["attrs"], (*path, "attrs"), "a table")
                if attrs is not None:
                    self._plan_attrs(attrs, (*path, "attrs"), kind)
                    if "approaches" in attrs:
                        self._approaches(attrs["approaches"], (*path, "attrs", "approaches"),
                                         kind, lat, lon)
            if len(self._issues) != before:
                continue
            assert ident is not None and kind is not None and slug is not None
            assert lat is not None and lon is not None and attrs is not None
            assert endpoint is not None and profile is not None
            eq = Equipment(
                id=ident,
                kind=kind,
                municipality=slug,
                lat=lat,
                lon=lon,
                endpoint=endpoint,
                profile=profile,
                placement=placement,
                attrs=attrs,
                line=self._where.line(path),
            )
            for sub, message in self._check(eq) if self._check is not None else ():
                self._issue((*path, *sub), message)
            out.append(eq)
        self._watched(out, seen)
        self._equipment_paths = seen
        return out

    def _plan_attrs(self, attrs: Mapping[str, Any], path: KeyPath, kind: str | None) -> None:
        """``tags`` of any equipment, ``watches`` and ``presets`` of a camera (module doc)."""
        if "tags" in attrs:
            tags = attrs["tags"]
            where = (*path, "tags")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                self._issue(where, f"expected an array of strings, got {type_name(tags)} "
                                   f"{shown(tags)}")
            else:
                for tag in tags:
                    if tag not in TAGS:
                        guess = difflib.get_close_matches(tag, TAGS, n=1)
                        hint = f"did you mean {guess[0]!r}? " if guess else ""
                        self._issue(where, f"unknown tag {tag!r} ({hint}expected among "
                                           f"{_choices(TAGS)})")
                if len(set(tags)) != len(tags):
                    self._issue(where, "a tag is listed twice")
        if "doors" in attrs:
            self._door_tags(attrs["doors"], (*path, "doors"), kind)
        for key in ("watches", "presets"):
            if key in attrs and kind is not None and kind != "camera":
                self._issue((*path, key), f"only a camera has {key} (this is a {kind})")
        if "watches" in attrs:
            watched = attrs["watches"]
            if not isinstance(watched, str) or not ID_PATTERN.match(watched):
                self._issue((*path, "watches"), f"expected a building id, got "
                                                f"{type_name(watched)} {shown(watched)}")
        if "presets" in attrs:
            where = (*path, "presets")
            presets = self._table(attrs["presets"], where, "a table of preset numbers by name")
            for name, number in (presets or {}).items():
                if not NAME_PATTERN.match(name):
                    self._issue((*where, name), f"preset name {name!r} does not match "
                                                f"{NAME_PATTERN.pattern}")
                elif (not isinstance(number, int) or isinstance(number, bool)
                      or not 0 <= number <= MAX_PRESET):
                    self._issue((*where, name), f"expected a preset number in 0..{MAX_PRESET}, "
                                                f"got {shown(number)}")

    def _door_tags(self, doors: object, where: KeyPath, kind: str | None) -> None:
        """A building's ``doors``: door numbers (from 1) by tag of :data:`DOOR_TAGS`."""
        if kind is not None and kind != "building":
            self._issue(where, f"only a building has doors (this is a {kind})")
        table = self._table(doors, where, "a table of door numbers by tag")
        for tag, numbers in (table or {}).items():
            if tag not in DOOR_TAGS:
                guess = difflib.get_close_matches(tag, DOOR_TAGS, n=1)
                hint = f"did you mean {guess[0]!r}? " if guess else ""
                self._issue((*where, tag), f"unknown door tag {tag!r} ({hint}expected among "
                                           f"{_choices(DOOR_TAGS)})")
            elif (not isinstance(numbers, list) or not numbers
                  or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                             for n in numbers)):
                self._issue((*where, tag), f"expected a non-empty array of door numbers "
                                           f"(from 1), got {shown(numbers)}")

    def _watched(self, equipment: Sequence[Equipment], seen: Mapping[str, KeyPath]) -> None:
        """Each camera's ``watches`` names a building of this inventory."""
        kinds = {eq.id: eq.kind for eq in equipment}
        for eq in equipment:
            watched = eq.attrs.get("watches")
            if not isinstance(watched, str):
                continue
            where = (*seen[eq.id], "attrs", "watches")
            if watched not in seen:
                guess = difflib.get_close_matches(watched, [i for i, k in kinds.items()
                                                            if k == "building"], n=1)
                hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                self._issue(where, f"unknown building {watched!r}{hint}")
            elif kinds.get(watched, "building") != "building":
                self._issue(where, f"{watched!r} is a {kinds[watched]}, not a building")

    def _approaches(self, value: object, where: KeyPath, kind: str | None,
                    lat: float | None, lon: float | None) -> None:
        """A crossroad's ``approaches``: numbered arms with a heading and a stop line."""
        if kind is not None and kind != "crossroad":
            self._issue(where, f"only a crossroad has approaches (this is a {kind})")
        if not isinstance(value, list):
            self._issue(where, f"expected an array of approach tables, got "
                               f"{type_name(value)} {shown(value)}")
            return
        numbers: dict[int, int] = {}
        for index, item in enumerate(value):
            at = (*where, index)
            table = self._table(item, at, "an approach table {number, heading, lat, lon}")
            if table is None:
                continue
            self._keys(table, at, _APPROACH_KEYS)
            number = self._int(table, at, "number")
            if number is not None:
                if not 1 <= number <= MAX_APPROACHES:
                    self._issue((*at, "number"), f"approach number {number} outside "
                                                 f"1..{MAX_APPROACHES}")
                elif number in numbers:
                    self._issue((*at, "number"), f"approach {number} is listed twice (first "
                                                 f"as approaches[{numbers[number]}])")
                else:
                    numbers[number] = index
            heading = self._number(table, at, "heading")
            if heading is not None and not 0.0 <= heading <= 360.0:
                self._issue((*at, "heading"), f"heading {heading:g} outside [0, 360]")
            stop_lat, stop_lon = self._coordinates(table, at)
            if None not in (lat, lon, stop_lat, stop_lon):
                assert lat is not None and lon is not None
                assert stop_lat is not None and stop_lon is not None
                metres = 1000.0 * distance_km(lat, lon, stop_lat, stop_lon)
                if metres > MAX_STOP_LINE_M:
                    self._issue(at, f"stop line is {metres:.0f} m from the crossroad "
                                    f"(limit {MAX_STOP_LINE_M:g} m)")

    def _bus_lines(self, slugs: Mapping[str, object],
                   equipment: Sequence[Equipment]) -> dict[str, BusLine]:
        """The ``[[bus_line]]`` tables, their geometry checked against their crossroads."""
        by_id = {eq.id: eq for eq in equipment}
        out: dict[str, BusLine] = {}
        seen: dict[str, KeyPath] = {}
        for path, table in self._array_of_tables("bus_line"):
            before = len(self._issues)
            self._keys(table, path, _BUS_LINE_KEYS)
            ident = self._str(table, path, "id")
            if ident is not None:
                if not LINE_ID_PATTERN.match(ident):
                    self._issue((*path, "id"), f"{ident!r} does not match "
                                               f"{LINE_ID_PATTERN.pattern}")
                elif ident in seen:
                    first = seen[ident]
                    self._issue((*path, "id"), f"duplicate line {ident!r} (first at line "
                                               f"{self._where.line(first)}, {field_name(first)})")
                else:
                    seen[ident] = path
            slug = self._str(table, path, "municipality")
            if slug is not None and slug not in slugs:
                guess = difflib.get_close_matches(slug, list(slugs), n=1)
                hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                self._issue((*path, "municipality"), f"municipality {slug!r} is not declared{hint}")
            speed = DEFAULT_FREE_FLOW_MPS
            if "free_flow_speed_mps" in table:
                value = self._number(table, path, "free_flow_speed_mps")
                if value is not None and not 0.0 < value <= MAX_FREE_FLOW_MPS:
                    self._issue((*path, "free_flow_speed_mps"),
                                f"speed {value:g} m/s outside (0, {MAX_FREE_FLOW_MPS:g}]")
                elif value is not None:
                    speed = value
            points = self._line_path(table, path)
            timetable = self._timetable(table, path)
            stops = self._stops(table, path, timed="timetable" in table)
            crossings = self._line_crossroads(table, path, by_id)
            if points is None:
                continue
            geometry = line_geometry(points)
            if stops is not None:
                _, problems = geometry.check_stops(stops)
                for index, message in problems:
                    self._issue((*path, "stop", index), message)
            checked: list[Crossing] = []
            start = 0.0
            for where, xr, outbound, inbound in crossings or ():
                found = geometry.check_crossing(xr.id, (xr.lat, xr.lon), outbound, inbound,
                                                start_m=start)
                for key, message in found.problems:
                    self._issue((*where, key), message)
                if found.crossing is not None:
                    checked.append(found.crossing)
                    start = found.centre_s_m
            if len(self._issues) != before:
                continue
            assert ident is not None and slug is not None and stops is not None
            try:
                out[ident] = BusLine(ident, slug, path=tuple(points), stops=tuple(stops),
                                     timetable=timetable, free_flow_speed_mps=speed,
                                     crossings=tuple(checked))
            except ConfigError as exc:  # every rule is checked above; this is the backstop
                self._issue(path, str(exc))
        if seen:
            self._bus_refs(equipment, seen)
        return out

    def _line_path(self, table: Mapping[str, Any],
                   path: KeyPath) -> list[tuple[float, float]] | None:
        """A line's ``path``: at least two ``[lat, lon]`` points, none repeating the last."""
        if not self._present(table, path, "path", True):
            return None
        value = table["path"]
        where = (*path, "path")
        if not isinstance(value, list) or len(value) < 2:
            self._issue(where, f"expected an array of at least two [lat, lon] points, got "
                               f"{type_name(value)} {shown(value)}")
            return None
        points: list[tuple[float, float]] = []
        before = len(self._issues)
        for index, item in enumerate(value):
            at = (*where, index)
            if (not isinstance(item, list) or len(item) != 2
                    or not all(_is_number(v) for v in item)):
                self._issue(at, f"expected a point [lat, lon], got {shown(item)}")
                continue
            lat, lon = float(item[0]), float(item[1])
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                self._issue(at, f"point ({lat:g}, {lon:g}) outside [-90, 90] x [-180, 180]")
                continue
            if points and points[-1] == (lat, lon):
                self._issue(at, "point repeats the one before it")
                continue
            points.append((lat, lon))
        return points if len(self._issues) == before else None

    def _timetable(self, table: Mapping[str, Any], path: KeyPath) -> Timetable | None:
        """A line's optional ``timetable``: ``headway_s``, ``first`` and ``last``."""
        if "timetable" not in table:
            return None
        where = (*path, "timetable")
        timetable = self._table(table["timetable"], where, "a table")
        if timetable is None:
            return None
        before = len(self._issues)
        self._keys(timetable, where, _TIMETABLE_KEYS)
        headway = self._number(timetable, where, "headway_s")
        if headway is not None and not 0.0 < headway <= 86_400.0:
            self._issue((*where, "headway_s"), f"headway {headway:g} s outside (0, 86400]")
        times: dict[str, str | None] = {"first": None, "last": None}
        for key in times:
            text = self._str(timetable, where, key, required=key == "first")
            if text is not None and not TIME_PATTERN.match(text):
                self._issue((*where, key), f"{text!r} is not a local time \"HH:MM\" "
                                           "(00:00 to 23:59)")
            times[key] = text
        if len(self._issues) != before:
            return None
        assert headway is not None and times["first"] is not None
        return Timetable(headway, times["first"], times["last"])

    def _stops(self, table: Mapping[str, Any], path: KeyPath, *, timed: bool) -> list[Stop] | None:
        """A line's ``[[bus_line.stop]]`` tables: at least two, ``at_s`` with a timetable."""
        where = (*path, "stop")
        if "stop" not in table:
            self._issue(where, "a line needs at least two [[bus_line.stop]]", at=path)
            return None
        value = table["stop"]
        if not isinstance(value, list) or len(value) < 2:
            self._issue(where, f"expected at least two [[bus_line.stop]] tables, got "
                               f"{type_name(value)} {shown(value)}")
            return None
        before = len(self._issues)
        stops: list[Stop] = []
        ids: dict[str, int] = {}
        last_at: float | None = None
        for index, item in enumerate(value):
            at = (*where, index)
            stop = self._table(item, at, "a table")
            if stop is None:
                continue
            mark = len(self._issues)
            self._keys(stop, at, _STOP_KEYS)
            ident = self._str(stop, at, "id")
            if ident is not None:
                if not STOP_ID_PATTERN.match(ident):
                    self._issue((*at, "id"), f"{ident!r} does not match "
                                             f"{STOP_ID_PATTERN.pattern}")
                elif ident in ids:
                    self._issue((*at, "id"), f"stop {ident!r} is listed twice (first as "
                                             f"stop[{ids[ident]}])")
                else:
                    ids[ident] = index
            lat, lon = self._coordinates(stop, at)
            at_s: float | None = None
            if timed:
                at_s = self._number(stop, at, "at_s")
                if at_s is not None:
                    if index == 0 and at_s != 0.0:
                        self._issue((*at, "at_s"), f"the first stop is the trip's departure: "
                                                   f"at_s must be 0, not {at_s:g}")
                    elif at_s < 0.0:
                        self._issue((*at, "at_s"), f"at_s {at_s:g} is negative")
                    elif last_at is not None and at_s < last_at:
                        self._issue((*at, "at_s"), f"at_s {at_s:g} is earlier than the "
                                                   f"previous stop's {last_at:g}")
                    last_at = at_s
            elif "at_s" in stop:
                self._issue((*at, "at_s"), "at_s needs a [bus_line.timetable]")
            if len(self._issues) == mark:
                assert ident is not None and lat is not None and lon is not None
                stops.append(Stop(ident, lat, lon, at_s))
        return stops if len(self._issues) == before else None

    def _line_crossroads(
        self, table: Mapping[str, Any], path: KeyPath, by_id: Mapping[str, Equipment]
    ) -> list[tuple[KeyPath, Equipment, Approach, Approach]] | None:
        """A line's ``[[bus_line.crossroad]]`` tables: declared crossroads, with the
        approaches it drives in on (``outbound``, ``inbound``) among theirs."""
        where = (*path, "crossroad")
        value = table.get("crossroad", [])
        if not isinstance(value, list):
            self._issue(where, f"expected [[bus_line.crossroad]] tables, got "
                               f"{type_name(value)} {shown(value)}")
            return None
        before = len(self._issues)
        out: list[tuple[KeyPath, Equipment, Approach, Approach]] = []
        crossed: dict[str, int] = {}
        crossroads = [eq.id for eq in by_id.values() if eq.kind == "crossroad"]
        for index, item in enumerate(value):
            at = (*where, index)
            ref = self._table(item, at, "a table")
            if ref is None:
                continue
            self._keys(ref, at, _LINE_CROSSROAD_KEYS)
            ident = self._str(ref, at, "id")
            numbers = {key: self._int(ref, at, key) for key in ("outbound", "inbound")}
            if ident is None:
                continue
            if ident in crossed:
                self._issue((*at, "id"), f"the line crosses {ident!r} twice (first as "
                                         f"crossroad[{crossed[ident]}])")
                continue
            crossed[ident] = index
            xr = by_id.get(ident)
            if xr is None:
                if ident not in self._equipment_paths:  # else its own record is reported
                    guess = difflib.get_close_matches(ident, crossroads, n=1)
                    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                    self._issue((*at, "id"), f"unknown crossroad {ident!r}{hint}")
                continue
            if xr.kind != "crossroad":
                self._issue((*at, "id"), f"{ident!r} is a {xr.kind}, not a crossroad")
                continue
            try:
                approaches = {a.number: a for a in approaches_of(xr)}
            except ConfigError:
                continue  # reported with the crossroad's own record
            chosen: list[Approach] = []
            for key, number in numbers.items():
                if number is None:
                    continue
                if number not in approaches:
                    have = ", ".join(str(n) for n in sorted(approaches)) or "none"
                    self._issue((*at, key), f"crossroad {ident!r} has no approach {number} "
                                            f"(it has {have})")
                    continue
                chosen.append(approaches[number])
            if len(chosen) == 2:
                out.append((at, xr, chosen[0], chosen[1]))
        return out if len(self._issues) == before else None

    def _bus_refs(self, equipment: Sequence[Equipment], lines: Mapping[str, KeyPath]) -> None:
        """With lines declared, each bus (a vehicle with ``attrs.line``) names one."""
        for eq in equipment:
            if eq.kind != "vehicle" or "line" not in eq.attrs:
                continue
            line = eq.attrs["line"]
            if line in lines:
                continue
            where = (*self._equipment_paths[eq.id], "attrs", "line")
            if not isinstance(line, str):
                self._issue(where, f"expected a line id, got {type_name(line)} {shown(line)}")
                continue
            guess = difflib.get_close_matches(line, list(lines), n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            self._issue(where, f"line {line!r} is not declared by a [[bus_line]]{hint}")


# --------------------------------------------------------------------------- writing


def dump_inventory(inventory: Inventory, *, decimals: int | None = None) -> str:
    """The TOML text of ``inventory``; :func:`parse_inventory` reads it back equal.

    Floats are written exactly unless ``decimals`` fixes their number of
    decimals (then they read back equal only if they were rounded to it).
    """
    lines: list[str] = ["[metropolis]", f"name = {toml_value(inventory.name)}", ""]
    policy = inventory.placement
    lines += ["[placement]", f"default = {toml_value(policy.default)}"]
    if policy.kinds:
        lines.append("[placement.kinds]")
        lines += [f"{k} = {toml_value(v)}" for k, v in policy.kinds.items()]
    if policy.shards:
        lines.append("[placement.shards]")
        lines += [f"{k} = {v}" for k, v in policy.shards.items()]
    if policy.colocate:
        lines.append("[placement.colocate]")
        lines += [f"{k} = {toml_value(v)}" for k, v in policy.colocate.items()]

    def num(x: float) -> str:
        return toml_value(float(x), decimals)

    for m in inventory.municipalities:
        lines += [
            "",
            "[[municipality]]",
            f"slug = {toml_value(m.slug)}",
            f"name = {toml_value(m.name)}",
            f"lat = {num(m.lat)}",
            f"lon = {num(m.lon)}",
            f"population = {m.population}",
        ]
    for e in inventory.equipment:
        lines += [
            "",
            "[[equipment]]",
            f"id = {toml_value(e.id)}",
            f"kind = {toml_value(e.kind)}",
            f"municipality = {toml_value(e.municipality)}",
            f"lat = {num(e.lat)}",
            f"lon = {num(e.lon)}",
            f"endpoint = {toml_value(e.endpoint)}",
            f"profile = {toml_value(e.profile)}",
        ]
        if e.placement is not None:
            lines.append(f"placement = {toml_value(e.placement)}")
        if e.attrs:
            lines.append("[equipment.attrs]")
            lines += [f"{toml_key(k)} = {toml_value(v, decimals)}" for k, v in e.attrs.items()]
    for line in inventory.bus_lines.values():
        lines += _dump_line(line, num)
    lines.append("")
    return "\n".join(lines)


def _dump_line(line: BusLine, num: Callable[[float], str]) -> list[str]:
    """The ``[[bus_line]]`` table of ``line`` (its crossings' stop lines are derived)."""
    out = [
        "",
        "[[bus_line]]",
        f"id = {toml_value(line.id)}",
        f"municipality = {toml_value(line.municipality)}",
        f"free_flow_speed_mps = {num(line.free_flow_speed_mps)}",
        "path = [",
        *(f"    [{num(lat)}, {num(lon)}]," for lat, lon in line.path),
        "]",
    ]
    if line.timetable is not None:
        out += ["[bus_line.timetable]",
                f"headway_s = {num(line.timetable.headway_s)}",
                f"first = {toml_value(line.timetable.first)}"]
        if line.timetable.last is not None:
            out.append(f"last = {toml_value(line.timetable.last)}")
    for stop in line.stops:
        out += ["[[bus_line.stop]]", f"id = {toml_value(stop.id)}",
                f"lat = {num(stop.lat)}", f"lon = {num(stop.lon)}"]
        if stop.at_s is not None:
            out.append(f"at_s = {num(stop.at_s)}")
    for crossing in line.crossings:
        out += ["[[bus_line.crossroad]]", f"id = {toml_value(crossing.crossroad_id)}",
                f"outbound = {crossing.outbound_approach}",
                f"inbound = {crossing.inbound_approach}"]
    return out
