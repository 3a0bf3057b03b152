"""Bus lines and crossroad approaches: the geometry that bus priority works on.

**Approaches.** A signalised crossroad has up to eight *approaches*, numbered
1 to 8: the arms on which vehicles drive in. An :class:`Approach` is given by
``heading_deg``, the direction of travel of the vehicles on it (degrees
clockwise from true north), and the position of its stop line. The inventory
lists them in the crossroad's ``attrs.approaches``. The demo numbers four arms
clockwise from the north one: 1 is the north arm (vehicles on it drive south,
heading 180), 2 the east arm (heading 270), 3 the south arm (heading 0) and 4 the
west arm (heading 90). Their stop lines are 25 m before the centre.

**Lines.** A :class:`BusLine` is a polyline ``path`` of ``(lat, lon)`` points
in its *outbound* direction, from its first stop to its last. Buses drive it
outbound, then back *inbound*. A position on the line is ``s_m``, the distance
in metres from the path's start. Both directions use the same measure, so an
inbound bus's ``s_m`` decreases. The :class:`Stop`\\ s lie on the path in
outbound order. The line passes its crossroads in order. A :class:`Crossing`
names the approach a bus drives in on in each direction and where its stop
line is along the path:

* ``s_m`` for the outbound approach. An outbound bus has passed it when its
  position grows past it.
* ``inbound_s_m`` for the inbound approach. An inbound bus has passed it when
  its position falls below it.

The outbound stop line always comes first: ``s_m < inbound_s_m``.

**Timetables.** A :class:`Timetable` runs a departure from the first stop
every ``headway_s`` seconds, from ``first`` to ``last`` (local times
``"HH:MM"`` of the city, :data:`runtime.clock.CITY_TZ`). A ``last`` earlier
than ``first`` means the service runs past midnight, and a ``last`` of None
means the service runs around the clock. A stop's ``at_s`` is its scheduled
arrival in seconds after the trip's departure (0 at the first stop). Inbound
trips run the outbound timetable in reverse. A line without a timetable has no
``at_s``. Its *free-flow schedule* (:meth:`BusLine.free_flow_s`) drives the
path at ``free_flow_speed_mps`` and allows :data:`DWELL_S` at each intermediate
stop. The demo builds its timetables the same way.

**Geometry.** :class:`LineGeometry` projects a path to metres once, using
Lambert-93 (:data:`runtime.geo.METRIC_CRS`, pyproj) as a shapely
``LineString``. It answers :meth:`~LineGeometry.locate` (distance along and
off the path), :meth:`~LineGeometry.point_at` (the inverse) and
:meth:`~LineGeometry.heading_at` (the true bearing of travel, from pyproj's
geodesics). It also checks a line's stops and crossings against the path, with
:data:`PATH_TOLERANCE_M` and :data:`HEADING_TOLERANCE_DEG`. The inventory
parser and the demo generator both use it, so the two cannot drift apart.

>>> line = BusLine("L9", "dijon", path=((47.3200, 5.0400), (47.3300, 5.0400)),
...                stops=(Stop("L9-00", 47.3200, 5.0400), Stop("L9-01", 47.3300, 5.0400)))
>>> geometry = line_geometry(line)
>>> round(geometry.length_m)
1111
>>> s, off = geometry.locate(47.3250, 5.0401)
>>> round(s), round(off, 1)
(555, 7.6)
>>> geometry.heading_at(s, INBOUND)
180.0

The value objects are importable without geometry libraries: shapely and
pyproj are loaded the first time a geometry is built, since every process that
reads an inventory imports this module.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from runtime.errors import ConfigError

if TYPE_CHECKING:
    from pyproj import Geod, Transformer
    from shapely.geometry import LineString

    from runtime.inventory import Equipment

__all__ = [
    "DIRECTIONS",
    "DWELL_S",
    "HEADING_TOLERANCE_DEG",
    "INBOUND",
    "LAYOVER_S",
    "LINE_ID_PATTERN",
    "MAX_APPROACHES",
    "MAX_FREE_FLOW_MPS",
    "MAX_STOP_LINE_M",
    "OUTBOUND",
    "PATH_TOLERANCE_M",
    "STOP_ID_PATTERN",
    "TIME_PATTERN",
    "Approach",
    "BusLine",
    "Crossing",
    "CrossingCheck",
    "LatLon",
    "LineGeometry",
    "Stop",
    "Timetable",
    "angle_diff",
    "approaches_of",
    "azimuth_distance",
    "destination",
    "line_geometry",
]

#: A WGS84 position as ``(lat, lon)`` in degrees.
LatLon = tuple[float, float]

OUTBOUND: Final = "outbound"
INBOUND: Final = "inbound"
#: The two ways a bus drives its line (the bus profile's ``direction``).
DIRECTIONS: Final = (OUTBOUND, INBOUND)
#: Approach numbers run from 1 to this.
MAX_APPROACHES: Final = 8
#: Line ids travel in every bus position (``line``): short, no spaces.
LINE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
#: Stop ids travel in every bus position (``next_stop``), like ``"L1-04"``.
STOP_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: A local time of day, ``"HH:MM"``.
TIME_PATTERN: Final = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
#: How far from its path a line's stops, crossroads and stop lines may lie.
PATH_TOLERANCE_M: Final = 30.0
#: How far an approach's heading may differ from the line's direction at its stop line.
HEADING_TOLERANCE_DEG: Final = 45.0
#: How far an approach's stop line may lie from its crossroad's position.
MAX_STOP_LINE_M: Final = 150.0
#: Free-flow speed of a line that does not set one (29 km/h, a city bus between stops).
DEFAULT_FREE_FLOW_MPS: Final = 8.0
#: The fastest free-flow speed a line may have (108 km/h).
MAX_FREE_FLOW_MPS: Final = 30.0
#: The dwell a free-flow schedule allows at each intermediate stop.
DWELL_S: Final = 20.0
#: The shortest wait of a bus at a terminus between two trips (its duty's slack).
LAYOVER_S: Final = 120.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_position(what: str, lat: object, lon: object) -> LatLon:
    if not (_is_number(lat) and _is_number(lon)):
        raise ConfigError(f"{what}: position ({lat!r}, {lon!r}) is not two finite numbers")
    assert isinstance(lat, int | float) and isinstance(lon, int | float)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ConfigError(f"{what}: position ({lat}, {lon}) outside WGS84's range")
    return float(lat), float(lon)


def angle_diff(a: float, b: float) -> float:
    """The smaller angle between two bearings, in degrees from 0 to 180."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _minutes(text: str) -> int:
    m = TIME_PATTERN.match(text)
    if m is None:
        raise ConfigError(f"time {text!r} is not a local time \"HH:MM\"")
    return int(m.group(1)) * 60 + int(m.group(2))


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True, slots=True)
class Approach:
    """One arm of a crossroad: ``number`` (1 to 8), the direction of travel of
    its vehicles ``heading_deg`` (0 to 360, clockwise from north; 360 reads as 0),
    and its stop line's position."""

    number: int
    heading_deg: float
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if (not isinstance(self.number, int) or isinstance(self.number, bool)
                or not 1 <= self.number <= MAX_APPROACHES):
            raise ConfigError(f"approach number {self.number!r} outside 1..{MAX_APPROACHES}")
        what = f"approach {self.number}"
        if not _is_number(self.heading_deg) or not 0.0 <= self.heading_deg <= 360.0:
            raise ConfigError(f"{what}: heading {self.heading_deg!r} outside [0, 360]")
        object.__setattr__(self, "heading_deg", float(self.heading_deg) % 360.0)
        lat, lon = _check_position(what, self.lat, self.lon)
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "lon", lon)


@dataclass(frozen=True, slots=True)
class Stop:
    """A stop of a line: its id, position, and scheduled arrival ``at_s`` in seconds
    after the trip's departure (None when the line has no timetable)."""

    id: str
    lat: float
    lon: float
    at_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not STOP_ID_PATTERN.match(self.id):
            raise ConfigError(f"stop id {self.id!r} does not match {STOP_ID_PATTERN.pattern}")
        lat, lon = _check_position(f"stop {self.id!r}", self.lat, self.lon)
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "lon", lon)
        if self.at_s is not None:
            if not _is_number(self.at_s) or self.at_s < 0:
                raise ConfigError(f"stop {self.id!r}: at_s {self.at_s!r} is not a number >= 0")
            object.__setattr__(self, "at_s", float(self.at_s))


@dataclass(frozen=True, slots=True)
class Timetable:
    """A departure from the first stop every ``headway_s`` seconds from ``first`` to
    ``last`` (local ``"HH:MM"``; ``last`` None: around the clock)."""

    headway_s: float
    first: str
    last: str | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.headway_s) or not 0 < self.headway_s <= 86_400:
            raise ConfigError(f"headway {self.headway_s!r} is not a number of seconds in "
                              "(0, 86400]")
        object.__setattr__(self, "headway_s", float(self.headway_s))
        _minutes(self.first)
        if self.last is not None:
            _minutes(self.last)

    @property
    def first_s(self) -> float:
        """The first departure, in seconds after local midnight."""
        return 60.0 * _minutes(self.first)

    @property
    def last_s(self) -> float | None:
        """The last departure in seconds after the first day's local midnight (past 86400
        when the service runs past midnight); None around the clock."""
        if self.last is None:
            return None
        last = 60.0 * _minutes(self.last)
        return last + 86_400.0 if last < self.first_s else last


@dataclass(frozen=True, slots=True)
class Crossing:
    """Where a line crosses a crossroad: the approaches it drives in on in each
    direction, and their stop lines' distances along the path (module doc)."""

    crossroad_id: str
    outbound_approach: int
    inbound_approach: int
    s_m: float
    inbound_s_m: float

    def __post_init__(self) -> None:
        for name in ("outbound_approach", "inbound_approach"):
            number = getattr(self, name)
            if (not isinstance(number, int) or isinstance(number, bool)
                    or not 1 <= number <= MAX_APPROACHES):
                raise ConfigError(f"crossing {self.crossroad_id!r}: {name} {number!r} outside "
                                  f"1..{MAX_APPROACHES}")
        if not (_is_number(self.s_m) and _is_number(self.inbound_s_m)):
            raise ConfigError(f"crossing {self.crossroad_id!r}: stop lines must be numbers")
        if not 0 <= self.s_m < self.inbound_s_m:
            raise ConfigError(f"crossing {self.crossroad_id!r}: the outbound stop line "
                              f"({self.s_m:g} m) must come before the inbound one "
                              f"({self.inbound_s_m:g} m)")
        object.__setattr__(self, "s_m", float(self.s_m))
        object.__setattr__(self, "inbound_s_m", float(self.inbound_s_m))

    def stop_line_s(self, direction: str) -> float:
        """The stop line's distance along the path for a bus driving ``direction``."""
        return self.s_m if direction == OUTBOUND else self.inbound_s_m

    def approach(self, direction: str) -> int:
        """The approach a bus driving ``direction`` comes in on."""
        return self.outbound_approach if direction == OUTBOUND else self.inbound_approach


@dataclass(frozen=True, slots=True)
class BusLine:
    """A bus line: its path (outbound), stops (outbound order), timetable and crossings.

    Construction checks what needs no geometry (ids, at least two points and
    two stops, ``at_s`` present exactly when there is a timetable and never
    decreasing, crossings in order). The inventory parser checks the
    geometry as well, with file and line (:meth:`LineGeometry.check_stops`,
    :meth:`LineGeometry.check_crossing`).
    """

    id: str
    municipality: str
    path: tuple[LatLon, ...]
    stops: tuple[Stop, ...]
    timetable: Timetable | None = None
    free_flow_speed_mps: float = DEFAULT_FREE_FLOW_MPS
    crossings: tuple[Crossing, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not LINE_ID_PATTERN.match(self.id):
            raise ConfigError(f"line id {self.id!r} does not match {LINE_ID_PATTERN.pattern}")
        what = f"line {self.id!r}"
        if not isinstance(self.municipality, str) or not self.municipality:
            raise ConfigError(f"{what}: municipality must be a non-empty string")
        path = tuple(_check_position(f"{what} path", *point) for point in self.path)
        if len(path) < 2:
            raise ConfigError(f"{what}: a path needs at least two points")
        for i in range(1, len(path)):
            if path[i] == path[i - 1]:
                raise ConfigError(f"{what}: path point {i} repeats the one before it")
        object.__setattr__(self, "path", path)
        stops = tuple(self.stops)
        object.__setattr__(self, "stops", stops)
        if len(stops) < 2:
            raise ConfigError(f"{what}: a line needs at least two stops")
        if len({s.id for s in stops}) != len(stops):
            raise ConfigError(f"{what}: two stops have the same id")
        timed = [s.at_s is not None for s in stops]
        if self.timetable is None and any(timed):
            raise ConfigError(f"{what}: stops have at_s but the line has no timetable")
        if self.timetable is not None:
            if not all(timed):
                raise ConfigError(f"{what}: with a timetable, every stop needs its at_s")
            times = [float(s.at_s or 0.0) for s in stops]
            if times[0] != 0.0:
                raise ConfigError(f"{what}: the first stop's at_s must be 0")
            if any(b < a for a, b in itertools.pairwise(times)):
                raise ConfigError(f"{what}: stop times must not decrease")
        if (not _is_number(self.free_flow_speed_mps)
                or not 0 < self.free_flow_speed_mps <= MAX_FREE_FLOW_MPS):
            raise ConfigError(f"{what}: free-flow speed {self.free_flow_speed_mps!r} outside "
                              f"(0, {MAX_FREE_FLOW_MPS:g}] m/s")
        object.__setattr__(self, "free_flow_speed_mps", float(self.free_flow_speed_mps))
        crossings = tuple(self.crossings)
        object.__setattr__(self, "crossings", crossings)
        if len({c.crossroad_id for c in crossings}) != len(crossings):
            raise ConfigError(f"{what}: a crossroad is crossed twice")
        if any(b.s_m < a.s_m for a, b in itertools.pairwise(crossings)):
            raise ConfigError(f"{what}: crossings are not in order along the path")

    def crossing(self, crossroad_id: str) -> Crossing:
        """The line's crossing of ``crossroad_id``; :class:`KeyError` if it has none."""
        for c in self.crossings:
            if c.crossroad_id == crossroad_id:
                return c
        raise KeyError(crossroad_id)

    def free_flow_s(self, stop_s: Sequence[float]) -> tuple[float, ...]:
        """The free-flow schedule's arrival at each stop, in seconds after departure,
        given the stops' distances along the path (:meth:`LineGeometry.check_stops`)."""
        start = stop_s[0]
        return tuple((s - start) / self.free_flow_speed_mps + DWELL_S * max(0, i - 1)
                     for i, s in enumerate(stop_s))


def approaches_of(eq: Equipment) -> tuple[Approach, ...]:
    """The approaches of a crossroad (``attrs.approaches``; none when it lists none).

    Raises :class:`ConfigError` for a malformed entry (the inventory parser
    reports those with file and line first).
    """
    raw = eq.attrs.get("approaches", ())
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(f"equipment {eq.id!r}: approaches must be an array of tables")
    out: list[Approach] = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise ConfigError(f"equipment {eq.id!r}: an approach must be a table")
        try:
            fields: dict[str, Any] = {key: item.get(key)
                                      for key in ("number", "heading", "lat", "lon")}
            out.append(Approach(fields["number"], fields["heading"], fields["lat"],
                                fields["lon"]))
        except ConfigError as exc:
            raise ConfigError(f"equipment {eq.id!r}: {exc}") from None
    if len({a.number for a in out}) != len(out):
        raise ConfigError(f"equipment {eq.id!r}: two approaches have the same number")
    return tuple(out)


# --------------------------------------------------------------------------- geometry


@functools.cache
def _transformers() -> tuple[Transformer, Transformer]:
    from pyproj import Transformer

    from runtime.geo import METRIC_CRS

    # pyproj >= 3.1 transformers are safe to share between threads.
    return (Transformer.from_crs("EPSG:4326", METRIC_CRS, always_xy=True),
            Transformer.from_crs(METRIC_CRS, "EPSG:4326", always_xy=True))


@functools.cache
def _geod() -> Geod:
    from pyproj import Geod

    return Geod(ellps="WGS84")


def azimuth_distance(a: LatLon, b: LatLon) -> tuple[float, float]:
    """The true bearing (degrees in [0, 360)) and geodesic distance (m) from ``a`` to ``b``."""
    azimuth, _, dist = _geod().inv(a[1], a[0], b[1], b[0])
    return float(azimuth) % 360.0, float(dist)


def destination(a: LatLon, azimuth: float, distance_m: float) -> LatLon:
    """The point ``distance_m`` metres from ``a`` along the true bearing ``azimuth``."""
    lon, lat, _ = _geod().fwd(a[1], a[0], azimuth, distance_m)
    return float(lat), float(lon)


@dataclass(frozen=True, slots=True)
class CrossingCheck:
    """What :meth:`LineGeometry.check_crossing` found: the crossing (None when a
    problem forbids it), the crossroad centre's distance along the path, and the
    problems as ``(field, message)`` with field ``id``, ``outbound`` or ``inbound``."""

    crossing: Crossing | None
    centre_s_m: float
    problems: tuple[tuple[str, str], ...]


class LineGeometry:
    """A path projected to metres (Lambert-93) as a shapely ``LineString``.

    Build it once per line (:func:`line_geometry` caches them). It is immutable
    and safe to share between threads.
    """

    def __init__(self, path: Sequence[LatLon]) -> None:
        from shapely.geometry import LineString

        if len(path) < 2:
            raise ConfigError("a path needs at least two points")
        to_metric, _ = _transformers()
        lats = [float(p[0]) for p in path]
        lons = [float(p[1]) for p in path]
        xs, ys = to_metric.transform(lons, lats)
        self._xy: tuple[tuple[float, float], ...] = tuple(
            (float(x), float(y)) for x, y in zip(xs, ys, strict=True))
        self._line: LineString = LineString(self._xy)
        self.path: tuple[LatLon, ...] = tuple(zip(lats, lons, strict=True))
        cumulative = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(self._xy):
            cumulative.append(cumulative[-1] + math.hypot(x1 - x0, y1 - y0))
        #: Each path point's distance along the path (m).
        self.vertex_s_m: tuple[float, ...] = tuple(cumulative)
        azimuths, _, _ = _geod().inv(lons[:-1], lats[:-1], lons[1:], lats[1:])
        #: Each segment's true bearing, outbound (degrees in [0, 360)).
        self.segment_headings: tuple[float, ...] = tuple(float(a) % 360.0 for a in azimuths)

    @property
    def length_m(self) -> float:
        """The path's length in metres."""
        return self.vertex_s_m[-1]

    def locate(self, lat: float, lon: float, *, start_m: float = 0.0,
               end_m: float | None = None) -> tuple[float, float]:
        """``(s_m, offset_m)`` of the nearest point of the path to ``(lat, lon)``:
        its distance along the path and the distance from it, in metres.

        ``start_m`` and ``end_m`` restrict the search to that stretch of the
        path (where a path passes near itself, or to follow a bus).
        """
        from shapely.geometry import LineString, Point

        to_metric, _ = _transformers()
        x, y = to_metric.transform(lon, lat)
        point = Point(x, y)
        length = self.length_m
        start = max(0.0, min(length, start_m))
        end = length if end_m is None else max(start, min(length, end_m))
        if start <= 0.0 and end >= length:
            return float(self._line.project(point)), float(self._line.distance(point))
        # The stretch: its two ends and the path points between them (what shapely's
        # ``substring`` builds, without its generic handling: this runs for every position
        # of every bus the priority pool follows).
        first = self._line.interpolate(start)
        if end <= start:  # a stretch of no length is a point
            return start, float(first.distance(point))
        cuts = self.vertex_s_m
        inner = self._xy[bisect.bisect_right(cuts, start):bisect.bisect_left(cuts, end)]
        last = self._line.interpolate(end)
        part = LineString([(first.x, first.y), *inner, (last.x, last.y)])
        return start + float(part.project(point)), float(part.distance(point))

    def point_at(self, s_m: float) -> LatLon:
        """The ``(lat, lon)`` at ``s_m`` metres along the path (clamped to the path)."""
        _, to_wgs84 = _transformers()
        p = self._line.interpolate(max(0.0, min(self.length_m, s_m)))
        lon, lat = to_wgs84.transform(p.x, p.y)
        return float(lat), float(lon)

    def heading_at(self, s_m: float, direction: str = OUTBOUND) -> float:
        """The true bearing of a bus driving ``direction`` at ``s_m``: that of the
        segment it drives there (at a path point, the one it arrives on)."""
        cuts = self.vertex_s_m
        last = len(cuts) - 2
        if direction == OUTBOUND:
            i = min(max(bisect.bisect_left(cuts, s_m) - 1, 0), last)
            while i > 0 and cuts[i + 1] == cuts[i]:
                i -= 1
            return self.segment_headings[i]
        i = min(max(bisect.bisect_right(cuts, s_m) - 1, 0), last)
        while i < last and cuts[i + 1] == cuts[i]:
            i += 1
        return (self.segment_headings[i] + 180.0) % 360.0

    def check_stops(self, stops: Sequence[Stop | LatLon]
                    ) -> tuple[tuple[float, ...], tuple[tuple[int, str], ...]]:
        """The stops' distances along the path, each searched after the one before,
        and the problems ``(index, message)`` of stops not on the path in order."""
        out: list[float] = []
        problems: list[tuple[int, str]] = []
        start = 0.0
        for i, stop in enumerate(stops):
            lat, lon = (stop.lat, stop.lon) if isinstance(stop, Stop) else stop
            s, off = self.locate(lat, lon, start_m=start)
            if off > PATH_TOLERANCE_M:
                _, anywhere = self.locate(lat, lon)
                if anywhere <= PATH_TOLERANCE_M:
                    problems.append((i, "stop comes before the previous stop along the path"))
                else:
                    problems.append((i, f"stop is {off:.0f} m from the path "
                                        f"(limit {PATH_TOLERANCE_M:g} m)"))
            else:
                start = s
            out.append(s)
        return tuple(out), tuple(problems)

    def check_crossing(self, crossroad_id: str, centre: LatLon, outbound: Approach,
                       inbound: Approach, *, start_m: float = 0.0) -> CrossingCheck:
        """The crossing of ``crossroad_id`` (centre at ``centre``) driven in on
        ``outbound`` and ``inbound``, searched from ``start_m`` on (the previous
        crossroad's centre), with the problems that forbid it."""
        problems: list[tuple[str, str]] = []
        centre_s, off = self.locate(*centre, start_m=start_m)
        if off > PATH_TOLERANCE_M:
            _, anywhere = self.locate(*centre)
            problems.append(("id", "crossroad comes before the previous crossroad along the path"
                             if anywhere <= PATH_TOLERANCE_M else
                             f"crossroad is {off:.0f} m from the path "
                             f"(limit {PATH_TOLERANCE_M:g} m)"))
        lines: dict[str, float] = {}
        for name, approach, direction in (("outbound", outbound, OUTBOUND),
                                          ("inbound", inbound, INBOUND)):
            s, off = self.locate(approach.lat, approach.lon, start_m=start_m)
            lines[name] = s
            if off > PATH_TOLERANCE_M:
                problems.append((name, f"approach {approach.number}'s stop line is {off:.0f} m "
                                       f"from the path (limit {PATH_TOLERANCE_M:g} m)"))
                continue
            along = self.heading_at(s, direction)
            if angle_diff(along, approach.heading_deg) > HEADING_TOLERANCE_DEG:
                problems.append((name, f"approach {approach.number} heads "
                                       f"{approach.heading_deg:g}°, but the line drives "
                                       f"{direction} at {along:.0f}° at its stop line "
                                       f"(limit {HEADING_TOLERANCE_DEG:g}°)"))
        if not problems and not lines["outbound"] < lines["inbound"]:
            problems.append(("inbound", f"approach {inbound.number}'s stop line does not come "
                                        f"after approach {outbound.number}'s along the path"))
        crossing = None
        if not problems:
            crossing = Crossing(crossroad_id, outbound.number, inbound.number,
                                lines["outbound"], lines["inbound"])
        return CrossingCheck(crossing, centre_s, tuple(problems))


@functools.lru_cache(maxsize=1024)
def _geometry(path: tuple[LatLon, ...]) -> LineGeometry:
    return LineGeometry(path)


def line_geometry(line: BusLine | Iterable[LatLon]) -> LineGeometry:
    """The geometry of a line (or of a path), built once per process for each path."""
    path = line.path if isinstance(line, BusLine) else tuple(
        (float(p[0]), float(p[1])) for p in line)
    return _geometry(path)


# --------------------------------------------------------------------------- on the wire


def line_to_wire(line: BusLine) -> dict[str, Any]:
    """A msgpack-friendly dict of ``line`` (a pool member gets its lines this way)."""
    return {
        "id": line.id, "municipality": line.municipality,
        "path": [[lat, lon] for lat, lon in line.path],
        "stops": [{"id": s.id, "lat": s.lat, "lon": s.lon, "at_s": s.at_s} for s in line.stops],
        "timetable": None if line.timetable is None else {
            "headway_s": line.timetable.headway_s, "first": line.timetable.first,
            "last": line.timetable.last},
        "free_flow_speed_mps": line.free_flow_speed_mps,
        "crossings": [{"crossroad_id": c.crossroad_id, "outbound_approach": c.outbound_approach,
                       "inbound_approach": c.inbound_approach, "s_m": c.s_m,
                       "inbound_s_m": c.inbound_s_m} for c in line.crossings],
    }


def line_from_wire(d: Mapping[str, Any]) -> BusLine:
    """The line :func:`line_to_wire` gave; :class:`ConfigError` when malformed."""
    try:
        table = d.get("timetable")
        return BusLine(
            id=d["id"], municipality=d["municipality"],
            path=tuple((float(p[0]), float(p[1])) for p in d["path"]),
            stops=tuple(Stop(**s) for s in d["stops"]),
            timetable=None if table is None else Timetable(**table),
            free_flow_speed_mps=d["free_flow_speed_mps"],
            crossings=tuple(Crossing(**c) for c in d["crossings"]))
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise ConfigError(f"a bus line on the wire is malformed: {exc!r}") from exc
