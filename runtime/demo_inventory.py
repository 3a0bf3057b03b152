"""The demo metropolis: Dijon Métropole's equipment, generated deterministically.

>>> from runtime.demo_inventory import build_demo, generate_demo
>>> build_demo(scale=1.0).count_by_kind()["crossroad"]
113
>>> text = generate_demo(scale=0.1, seed=7)   # TOML, as `commandpost inventory demo` writes it

At scale 1.0 the counts are those of the reference city (see
:data:`BASE_COUNTS`); other scales multiply each count and round half up,
keeping at least one of each kind when ``scale > 0``. Equipment is spread over
the 23 municipalities in proportion to population (largest remainder) and
jittered around each centroid. The same ``(scale, seed)`` always gives the
same text.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from runtime.errors import ConfigError
from runtime.inventory import (
    Equipment,
    Inventory,
    Municipality,
    PlacementPolicy,
    dump_inventory,
    slugify,
)
from runtime.transit import (
    LAYOVER_S,
    Approach,
    BusLine,
    Crossing,
    LatLon,
    Stop,
    Timetable,
    angle_diff,
    azimuth_distance,
    destination,
    line_geometry,
)

__all__ = [
    "BASE_COUNTS",
    "BUS_LINES",
    "MAX_SCALE",
    "SERVICE_ROLES",
    "DemoCounts",
    "DemoPorts",
    "build_demo",
    "demo_counts",
    "generate_demo",
    "municipalities",
]

METROPOLIS_NAME: Final = "Dijon Métropole"

#: Reference figures of the metropolis at scale 1.0.
BASE_COUNTS: Final = {
    "crossroad": 113,
    "lighting_circuit": 1134,
    "lamp_points": 34_000,
    "building": 180,
    "camera": 269,
    "bus": 180,
    "service_vehicle": 205,
    "radio": 130,
    "access_terminal": 26,
}

#: Above this, access-terminal unit ids would pass Modbus's 247 on their one
#: simulator port and lighting ports would run into the access terminals' port.
MAX_SCALE: Final = 9.0

BUS_LINES: Final = ("L1", "L2", "L3", "L4", "L5", "L6", "B10", "B11", "B12", "B13", "B14", "B15")
SERVICE_ROLES: Final = ("gritter", "sweeper", "police", "waste", "maintenance", "green_areas",
                        "fire_safety")
#: The roles the shipped plans send (snow: gritters; fire: fire safety). A demo with fewer
#: service vehicles than roles gives these first, so that its plans find their vehicles.
PLAN_ROLES: Final = ("gritter", "fire_safety")
POINTS_PER_CIRCUIT: Final = (25, 35)
#: The pedestrian zone (its hours: actors/schedules/pedestrian_zones.toml) of every demo
#: access terminal.
PEDESTRIAN_ZONE: Final = "pedestrian_centre"

_PLACEMENT: Final = PlacementPolicy(
    default="sharded",
    shards={"traffic": 1, "lighting": 3, "buildings": 1, "video": 1, "fleet": 1, "access": 1},
)
_KM_PER_DEGREE: Final = 111.32
# Jitter radius: ~0.6 km for a small town, ~1.5 km for Dijon; clipped at 3 sigma (4.5 km
# at most), far inside the inventory's 50 km check.
_SIGMA_KM: Final = (0.6, 1.5)
_CLIP_SIGMAS: Final = 3.0
_DECIMALS: Final = 6


@functools.cache
def municipalities() -> tuple[Municipality, ...]:
    """The 23 municipalities of the packaged ``data/municipalities.csv``, slugged, in file order."""
    text = resources.files("runtime").joinpath("data/municipalities.csv").read_text("utf-8")
    out: list[Municipality] = []
    for row in csv.DictReader(io.StringIO(text)):
        out.append(
            Municipality(
                slug=slugify(row["name"]),
                name=row["name"],
                lat=float(row["lat"]),
                lon=float(row["lon"]),
                population=int(row["population"]),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DemoCounts:
    """How much of each thing the demo has at one scale."""

    crossroad: int
    lighting_circuit: int
    lamp_points: int
    building: int
    camera: int
    buses: int
    service_vehicles: int
    radios: int
    access_terminal: int

    @property
    def vehicle(self) -> int:
        """Buses and service vehicles together (both are of kind ``vehicle``)."""
        return self.buses + self.service_vehicles

    def by_kind(self) -> dict[str, int]:
        """Entity count per inventory kind."""
        return {
            "crossroad": self.crossroad,
            "lighting_circuit": self.lighting_circuit,
            "building": self.building,
            "camera": self.camera,
            "vehicle": self.vehicle,
            "access_terminal": self.access_terminal,
        }


def _check_scale(scale: float) -> None:
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ConfigError(f"demo scale must be a finite number, got {scale!r}")
    if not 0 <= scale <= MAX_SCALE:
        raise ConfigError(f"demo scale {scale:g} outside [0, {MAX_SCALE:g}]")


def _scaled(base: int, scale: float) -> int:
    if scale == 0:
        return 0
    # Round the product first so that float noise (205 * 0.1 = 20.500000000000004) cannot
    # decide a half-up rounding.
    return max(1, math.floor(round(base * scale, 9) + 0.5))


def demo_counts(scale: float = 1.0) -> DemoCounts:
    """The demo's counts at ``scale`` (0 to :data:`MAX_SCALE`)."""
    _check_scale(scale)
    circuits = _scaled(BASE_COUNTS["lighting_circuit"], scale)
    lo, hi = POINTS_PER_CIRCUIT
    # Only at scales below ~0.0013 can the rounded totals leave a circuit outside 25-35 points.
    points = min(max(_scaled(BASE_COUNTS["lamp_points"], scale), lo * circuits), hi * circuits)
    # However small the demo, one service vehicle for each role the shipped plans send.
    service = _scaled(BASE_COUNTS["service_vehicle"], scale)
    service = max(service, len(PLAN_ROLES)) if service else 0
    return DemoCounts(
        crossroad=_scaled(BASE_COUNTS["crossroad"], scale),
        lighting_circuit=circuits,
        lamp_points=points,
        building=_scaled(BASE_COUNTS["building"], scale),
        camera=_scaled(BASE_COUNTS["camera"], scale),
        buses=_scaled(BASE_COUNTS["bus"], scale),
        service_vehicles=service,
        radios=min(service, _scaled(BASE_COUNTS["radio"], scale)),
        access_terminal=_scaled(BASE_COUNTS["access_terminal"], scale),
    )


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by largest remainder, in exact integers."""
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    # Ties go to the larger weight, then to the earlier entry: never to dict or hash order.
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], -weights[i], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _sigma_km(population: int) -> float:
    lo, hi = _SIGMA_KM
    return min(hi, max(lo, lo * math.cbrt(population / 10_000)))


def _position(rng: random.Random, muni: Municipality) -> tuple[float, float]:
    sigma = _sigma_km(muni.population)
    dx, dy = rng.gauss(0.0, sigma), rng.gauss(0.0, sigma)
    radius = math.hypot(dx, dy)
    limit = _CLIP_SIGMAS * sigma
    if radius > limit:
        dx, dy = dx * limit / radius, dy * limit / radius
    lat = muni.lat + dy / _KM_PER_DEGREE
    lon = muni.lon + dx / (_KM_PER_DEGREE * math.cos(math.radians(muni.lat)))
    return round(lat, _DECIMALS), round(lon, _DECIMALS)


def _circuit_points(rng: random.Random, circuits: int, total: int) -> list[int]:
    """``circuits`` sizes within :data:`POINTS_PER_CIRCUIT` summing to exactly ``total``."""
    if circuits == 0:
        return []
    lo, hi = POINTS_PER_CIRCUIT
    base, extra = divmod(total, circuits)
    sizes = [base] * circuits
    for i in rng.sample(range(circuits), extra):
        sizes[i] += 1
    # Pairwise transfers keep the sum and the bounds while spreading the sizes out.
    for _ in range(circuits):
        a, b = rng.randrange(circuits), rng.randrange(circuits)
        move = rng.randint(0, min(sizes[a] - lo, hi - sizes[b]))
        sizes[a] -= move
        sizes[b] += move
    return sizes


def _dealt(rng: random.Random, options: Sequence[str], count: int) -> list[str]:
    """``count`` picks spread evenly over ``options``, in shuffled order."""
    picks = [options[i % len(options)] for i in range(count)]
    rng.shuffle(picks)
    return picks


def _service_roles(count: int) -> tuple[str, ...]:
    """The roles dealt to ``count`` service vehicles: all of them when there are enough
    vehicles, else :data:`PLAN_ROLES` first."""
    if count >= len(SERVICE_ROLES):
        return SERVICE_ROLES
    return (*PLAN_ROLES, *(r for r in SERVICE_ROLES if r not in PLAN_ROLES))


@dataclass(frozen=True, slots=True)
class _Family:
    """One run of ids: ``{prefix}-{slug}-{n:04d}``, numbered per municipality."""

    kind: str
    prefix: str
    profile: str
    count: int


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """First loopback port of each simulator family (each uses a few consecutive ports).

    The defaults are the demo's documented ports; :meth:`free` picks ports that
    are free now, so that benches and tests can run side by side.
    """

    traffic: int = 15020
    lighting: int = 15100
    access: int = 15200
    opcua: int = 4840

    def __post_init__(self) -> None:
        for name in ("traffic", "lighting", "access", "opcua"):
            port = getattr(self, name)
            if not 1 <= port <= 65535 - _PORT_SPAN:
                raise ConfigError(f"demo {name} port {port} is out of range")

    @classmethod
    def free(cls) -> DemoPorts:
        """Four blocks of consecutive loopback ports that are free at this moment.

        They are drawn below the system's ephemeral range when there is room: a port in
        that range, free now, may be taken by any process's next outgoing connection (a
        Ray worker's, a Redis client's) before the simulator listens on it.
        """
        low, high = _FREE_PORTS
        first, _ = _ephemeral_ports()
        if first - low >= 64 * _PORT_SPAN:
            high = first
        rng = random.Random()
        bases: list[int] = []
        while len(bases) < 4:
            base = rng.randrange(low, high - _PORT_SPAN, _PORT_SPAN)
            if base not in bases and all(_port_free(base + k) for k in range(_PORT_SPAN)):
                bases.append(base)
        return cls(*bases)


#: Consecutive ports one family may use (lighting at scale 9: 51 cabinets per 200 → 51 ports).
_PORT_SPAN: Final = 64


#: Where :meth:`DemoPorts.free` draws its ports (the part below the ephemeral range).
_FREE_PORTS: Final = (10_000, 60_000)


def _ephemeral_ports() -> tuple[int, int]:
    """The system's range of ports for outgoing connections (Linux's default otherwise)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        first, last = (int(x) for x in text.split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return first, last


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def build_demo(scale: float = 1.0, seed: int = 0, ports: DemoPorts | None = None) -> Inventory:
    """The demo metropolis as an :class:`Inventory`, deterministic for ``(scale, seed)``."""
    ports = ports or DemoPorts()
    counts = demo_counts(scale)
    rng = random.Random(seed)
    munis = municipalities()
    weights = [m.population for m in munis]
    families = (
        _Family("crossroad", "xr", "traffic_controller", counts.crossroad),
        _Family("lighting_circuit", "lc", "lighting_cabinet", counts.lighting_circuit),
        _Family("building", "bld", "bms", counts.building),
        _Family("camera", "cam", "camera", counts.camera),
        _Family("vehicle", "bus", "bus", counts.buses),
        _Family("vehicle", "veh", "service_vehicle", counts.service_vehicles),
        _Family("access_terminal", "at", "access_terminal", counts.access_terminal),
    )
    placed: dict[str, list[tuple[str, Municipality, float, float]]] = {}
    for family in families:
        rows: list[tuple[str, Municipality, float, float]] = []
        for muni, share in zip(munis, _apportion(family.count, weights), strict=True):
            for n in range(1, share + 1):
                lat, lon = _position(rng, muni)
                rows.append((f"{family.prefix}-{muni.slug}-{n:04d}", muni, lat, lon))
        placed[family.prefix] = rows

    points = iter(_circuit_points(rng, counts.lighting_circuit, counts.lamp_points))
    dealt_lines = _dealt(rng, BUS_LINES, counts.buses)
    lines = iter(dealt_lines)
    roles = iter(_dealt(rng, _service_roles(counts.service_vehicles), counts.service_vehicles))
    radios = set(rng.sample(range(counts.service_vehicles), counts.radios))

    def endpoint(prefix: str, i: int, ident: str) -> str:
        if prefix == "xr":
            return f"modbus://127.0.0.1:{ports.traffic + i // 200}/{i % 200 + 1}"
        if prefix == "lc":
            return f"modbus://127.0.0.1:{ports.lighting + i // 200}/{i % 200 + 1}"
        if prefix == "at":
            return f"modbus://127.0.0.1:{ports.access}/{i + 1}"
        if prefix == "bld":
            return f"opcua://127.0.0.1:{ports.opcua + i // 60}/bld/{ident}"
        return "mqtt"

    def attrs(prefix: str, i: int) -> dict[str, Any]:
        if prefix == "lc":
            return {"points": next(points), **LAMP_ATTRS}
        if prefix == "bus":
            return {"line": next(lines)}
        if prefix == "veh":
            return {"role": next(roles), "radio": i in radios}
        if prefix == "at":
            return {"zone": PEDESTRIAN_ZONE}
        return {}

    plan_attrs = _plan_attrs(seed, placed)
    bus_lines, approaches = _bus_lines(placed["xr"], munis, Counter(dealt_lines))
    equipment: list[Equipment] = []
    for family in families:
        for i, (ident, muni, lat, lon) in enumerate(placed[family.prefix]):
            equipment.append(
                Equipment(
                    id=ident,
                    kind=family.kind,
                    municipality=muni.slug,
                    lat=lat,
                    lon=lon,
                    endpoint=endpoint(family.prefix, i, ident),
                    profile=family.profile,
                    attrs={**attrs(family.prefix, i), **plan_attrs.get(ident, {}),
                           **_schedule_attrs(family.kind), **approaches.get(ident, {})},
                )
            )
    return Inventory(
        name=METROPOLIS_NAME,
        municipalities=munis,
        equipment=tuple(equipment),
        placement=_PLACEMENT,
        bus_lines=bus_lines,
        source=f"<demo scale={scale:g} seed={seed}>",
    )


#: The demo's lamps: LEDs of ``lamp_w`` at full power that replaced ``legacy_w`` sodium lamps.
LAMP_ATTRS: Final = {"lamp_w": 70, "legacy_w": 150}


def _schedule_attrs(kind: str) -> dict[str, Any]:
    """Every demo lighting circuit follows the ``road_lighting`` schedule (dusk to dawn,
    dimmed at night); the ``road_lighting`` tag marks those of the main roads, which the
    snow plan brings to full power. Other kinds follow their own default schedules."""
    return {"schedule": "road_lighting"} if kind == "lighting_circuit" else {}


#: The demo cameras' PTZ presets: every camera has ``home``; one watching a building has
#: the views the crisis plans turn it to.
CAMERA_PRESETS: Final = {"home": 1}
WATCH_PRESETS: Final = {"flood": 12, "snow": 14, "fire": 16}
#: The demo buildings' doors by tag: the fire plan unlocks the evacuation doors.
BUILDING_DOORS: Final = {"evacuation": [1, 2]}
#: Share of each family given a tag (the first of each municipality always has it).
_TAG_SHARES: Final = {
    ("xr", "priority_route"): 0.5,
    ("lc", "road_lighting"): 0.6,
    ("at", "flood_prone"): 0.5,
}


def _plan_attrs(
    seed: int, placed: dict[str, list[tuple[str, Municipality, float, float]]]
) -> dict[str, dict[str, Any]]:
    """Tags and camera views the crisis plans select by, from a random stream of their own.

    A stream of its own, so that the positions and the other attributes stay
    what they were before plans existed. Crossroads are on priority routes,
    circuits light roads (some of them priority routes), access terminals close
    flood-prone streets of pedestrian zones, and each camera watches the
    nearest building of its municipality, if it has one, with ``flood`` and
    ``snow`` presets.
    """
    rng = random.Random(f"plans:{seed}")
    out: dict[str, dict[str, Any]] = {}
    for (prefix, tag), share in _TAG_SHARES.items():
        first: set[str] = set()
        for ident, muni, _, _ in placed.get(prefix, []):
            tags = out.setdefault(ident, {}).setdefault("tags", [])
            if prefix == "at":
                tags.append("pedestrian_zone")
            if muni.slug not in first or rng.random() < share:
                first.add(muni.slug)
                tags.append(tag)
                if prefix == "lc" and rng.random() < 0.4:
                    tags.append("priority_route")
    buildings: dict[str, list[tuple[str, float, float]]] = {}
    for ident, muni, lat, lon in placed.get("bld", []):
        buildings.setdefault(muni.slug, []).append((ident, lat, lon))
        out[ident] = {"doors": {tag: list(doors) for tag, doors in BUILDING_DOORS.items()}}
    for ident, muni, lat, lon in placed.get("cam", []):
        near = buildings.get(muni.slug)
        if not near:
            out[ident] = {"presets": dict(CAMERA_PRESETS)}
            continue
        watched = min(near, key=lambda b: (b[1] - lat) ** 2 + (b[2] - lon) ** 2)[0]
        out[ident] = {"watches": watched, "presets": {**CAMERA_PRESETS, **WATCH_PRESETS}}
    return {k: {a: v for a, v in attrs.items() if v} for k, attrs in out.items()}


# --------------------------------------------------------------------------- bus lines

#: The demo crossroads' arms: (approach number, bearing of the arm from the centre,
#: heading of the vehicles driving in on it), clockwise from the north arm.
ARMS: Final = ((1, 0.0, 180.0), (2, 90.0, 270.0), (3, 180.0, 0.0), (4, 270.0, 90.0))
#: How far before a demo crossroad's centre its stop lines are.
STOP_LINE_M: Final = 25.0
#: The demo lines' stops are this far apart, about.
STOP_SPACING_M: Final = 400.0
#: Every demo line runs a departure every few minutes from 05:30 to 00:30.
SERVICE_HOURS: Final = ("05:30", "00:30")
#: The demo's free-flow speed (29 km/h).
FREE_FLOW_MPS: Final = 8.0
# A line drives straight along an arm for up to this far on each side of a crossroad's
# centre, as a street would, and ends this far past its outermost crossroad (at least
# _MIN_REACH_M from the centre of Dijon).
_ARM_M: Final = 60.0
_TERMINUS_M: Final = 500.0
_MIN_REACH_M: Final = 1_500.0
# A stop this close to a crossroad's centre moves to the near side, _NEAR_SIDE_M before it.
_NEAR_SIDE_M: Final = 40.0
_MIN_STOP_GAP_M: Final = 60.0
_MIN_HEADWAY_S: Final = 300.0


def _arm(heading: float) -> int:
    """The number of the arm on which a vehicle heading ``heading`` drives in."""
    return next(n for n, _, h in ARMS if angle_diff(h, heading) < 1.0)


def _cardinal(bearing: float) -> float:
    return (round(bearing / 90.0) % 4) * 90.0


def _rounded(point: LatLon) -> LatLon:
    return round(point[0], _DECIMALS), round(point[1], _DECIMALS)


def _approaches(centre: LatLon, offset_m: float) -> list[dict[str, Any]]:
    """A crossroad's four arms, stop lines ``offset_m`` before its centre."""
    out: list[dict[str, Any]] = []
    for number, bearing, heading in ARMS:
        lat, lon = _rounded(destination(centre, bearing, offset_m))
        out.append({"number": number, "heading": heading, "lat": lat, "lon": lon})
    return out


def _bus_lines(
    crossroads: Sequence[tuple[str, Municipality, float, float]],
    munis: Sequence[Municipality],
    buses: Counter[str],
) -> tuple[dict[str, BusLine], dict[str, dict[str, Any]]]:
    """The demo's bus lines through its crossroads, and each crossroad's approaches.

    Dijon's bus lines are radial: each runs from one side of the metropolis
    through the centre of Dijon to the other side. The demo cuts the compass
    around Dijon's centre into ``2 * len(BUS_LINES)`` sectors. Line ``k`` takes
    the crossroads of sector ``k`` and of the sector opposite. It starts at
    its outbound terminus beyond the opposite sector's outermost crossroad, passes
    the crossroads from the outermost inward, then outward, and ends beyond the
    outermost crossroad of sector ``k``. At each crossroad it drives in along
    one arm and out along another, the arms nearest the directions of the
    previous and the next crossroad, as a street would. Where the next
    crossroad lies back the way the line came, the line turns off to the side
    rather than back along its own arm. So every crossroad is on a line,
    unless it lies within 20 m of the one before it. Each line has a timetable
    whose headway spreads its buses over its round trip.
    """
    centre: LatLon = (munis[0].lat, munis[0].lon)
    sectors = 2 * len(BUS_LINES)
    width = 360.0 / sectors
    members: dict[int, list[tuple[float, str, LatLon]]] = {k: [] for k in range(len(BUS_LINES))}
    for ident, _, lat, lon in crossroads:
        bearing, radius = azimuth_distance(centre, (lat, lon))
        sector = int(((bearing + width / 2) % 360.0) // width)
        side = 1.0 if sector < len(BUS_LINES) else -1.0
        members[sector % len(BUS_LINES)].append((side * radius, ident, (lat, lon)))
    approaches: dict[str, dict[str, Any]] = {}
    lines: dict[str, BusLine] = {}
    for k, line_id in enumerate(BUS_LINES):
        chain = sorted(members[k])
        axis = k * width
        reach = {side: max([abs(r) for r, _, _ in chain if r * side > 0] + [0.0])
                 for side in (1.0, -1.0)}
        start = destination(centre, axis + 180.0,
                            max(reach[-1.0] + _TERMINUS_M, _MIN_REACH_M))
        end = destination(centre, axis, max(reach[1.0] + _TERMINUS_M, _MIN_REACH_M))
        path: list[LatLon] = [_rounded(start)]
        crossed: list[tuple[str, LatLon, int, int, float]] = []
        here = start
        targets = [(ident, point) for _, ident, point in chain]
        for i, (ident, point) in enumerate(targets):
            ahead = targets[i + 1][1] if i + 1 < len(targets) else end
            bearing_in, dist_in = azimuth_distance(here, point)
            bearing_out, dist_out = azimuth_distance(point, ahead)
            if min(dist_in, dist_out) < 20.0:
                continue  # two crossroads this close are one to a bus
            heading_in, heading_out = _cardinal(bearing_in), _cardinal(bearing_out)
            if angle_diff(heading_in, heading_out) > 135.0:
                # The next crossroad lies back the way the line came: it turns off to the
                # side nearer to it rather than back along its own arm.
                heading_out = min(((heading_in + 90.0) % 360.0, (heading_in + 270.0) % 360.0),
                                  key=lambda h: angle_diff(h, bearing_out))
            # Short enough arms that the way between two crossroads never runs backwards.
            arm = min(_ARM_M, 0.3 * min(dist_in, dist_out))
            offset = min(STOP_LINE_M, 0.6 * arm)
            approaches[ident] = {"approaches": _approaches(point, offset)}
            path += [_rounded(destination(point, heading_in + 180.0, arm)), _rounded(point),
                     _rounded(destination(point, heading_out, arm))]
            here = path[-1]
            crossed.append((ident, point, _arm(heading_in), _arm(heading_out + 180.0), offset))
        path.append(_rounded(end))
        lines[line_id] = _line(line_id, path, crossed, munis, start, buses[line_id],
                               approaches)
    for ident, _, lat, lon in crossroads:
        approaches.setdefault(ident, {"approaches": _approaches((lat, lon), STOP_LINE_M)})
    return lines, approaches


def _line(
    line_id: str,
    path: list[LatLon],
    crossed: Sequence[tuple[str, LatLon, int, int, float]],
    munis: Sequence[Municipality],
    start: LatLon,
    buses: int,
    approaches: dict[str, dict[str, Any]],
) -> BusLine:
    """One demo line: its crossings, its stops every ~400 m and its timetable."""
    geometry = line_geometry(path)
    crossings: list[Crossing] = []
    centres: list[float] = []
    begin = 0.0
    for ident, point, outbound, inbound, _ in crossed:
        arms = {a["number"]: Approach(a["number"], a["heading"], a["lat"], a["lon"])
                for a in approaches[ident]["approaches"]}
        found = geometry.check_crossing(ident, point, arms[outbound], arms[inbound],
                                        start_m=begin)
        if found.crossing is None:
            raise ConfigError(f"demo line {line_id} at {ident}: {found.problems}")
        crossings.append(found.crossing)
        centres.append(found.centre_s_m)
        begin = found.centre_s_m
    length = geometry.length_m
    legs = max(1, round(length / STOP_SPACING_M))
    wanted: list[float] = []
    for n in range(legs + 1):
        s = length * n / legs
        if 0 < n < legs:
            near = [c for c in centres if abs(c - s) < _NEAR_SIDE_M]
            s = near[0] - _NEAR_SIDE_M if near else s
        if not wanted or (s - wanted[-1] >= _MIN_STOP_GAP_M and length - s >= _MIN_STOP_GAP_M):
            wanted.append(s)
        elif n == legs:
            wanted[-1] = s  # the terminus replaces a stop too close to it
    points = [_rounded(geometry.point_at(s)) for s in wanted]
    stop_s, problems = geometry.check_stops(points)
    if problems:
        raise ConfigError(f"demo line {line_id}: {problems}")
    free = [Stop(f"{line_id}-{n:02d}", lat, lon) for n, (lat, lon) in enumerate(points)]
    draft = BusLine(line_id, "dijon", tuple(path), tuple(free), free_flow_speed_mps=FREE_FLOW_MPS)
    times = [round(t, 1) for t in draft.free_flow_s(stop_s)]
    stops = tuple(Stop(s.id, s.lat, s.lon, t) for s, t in zip(free, times, strict=True))
    # A round trip with a layover at each end, shared by the line's buses.
    round_trip = 2.0 * (times[-1] + LAYOVER_S)
    headway = max(_MIN_HEADWAY_S, 60.0 * math.floor(round_trip / max(buses, 1) / 60.0))
    home = min(munis, key=lambda m: azimuth_distance((m.lat, m.lon), start)[1])
    return BusLine(line_id, home.slug, tuple(path), stops,
                   timetable=Timetable(headway, *SERVICE_HOURS),
                   free_flow_speed_mps=FREE_FLOW_MPS, crossings=tuple(crossings))


def generate_demo(scale: float = 1.0, seed: int = 0, ports: DemoPorts | None = None) -> str:
    """The TOML text of the demo metropolis, identical for the same ``(scale, seed, ports)``."""
    return dump_inventory(build_demo(scale, seed, ports), decimals=_DECIMALS)
