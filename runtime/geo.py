"""The metropolis' geography: which municipality a point falls in, and distances.

>>> from runtime.geo import demo_geography
>>> geo = demo_geography()
>>> geo.municipality_at(47.3220, 5.0415)
'dijon'
>>> geo.municipality_at(47.50, 5.04) is None      # 20 km north: outside the metropolis
True
>>> round(geo.distance_m((47.3220, 5.0415), (47.2915, 5.0085)))   # Dijon -> Chenôve
4210

There are no survey-grade municipal boundaries in the demo, so each
municipality's polygon is its *Voronoi cell*: the points closer to its centre
than to any other centre, clipped to the convex hull of all the centres
buffered by :data:`BUFFER_M`. The cells are built in Lambert-93 (EPSG:2154),
a metric projection, so that "closer" and the buffer are in metres, and
transformed back to WGS84 longitude/latitude for lookups and for the map.
Point-in-polygon and the geometry itself are shapely's (GEOS), projections
and great-circle distances pyproj's (PROJ and GeographicLib).

Building the cells takes a few milliseconds; they are computed once per
process for a given set of centres and shared by every :class:`Geography`.
Importing this module loads shapely, numpy and pyproj (~45 MB of RSS): processes that do
not need geography should not import it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Geod, Transformer
from shapely.geometry import MultiPoint, Point, Polygon, mapping
from shapely.ops import unary_union, voronoi_diagram

from runtime.errors import ConfigError, RejectedError
from runtime.inventory import Municipality

__all__ = [
    "BUFFER_M",
    "METRIC_CRS",
    "Geography",
    "LatLon",
    "demo_geography",
    "distance_m",
]

#: How far beyond the convex hull of the centres the metropolis reaches, in metres.
BUFFER_M: Final = 3_000.0
#: The metric projection the cells are built in: Lambert-93, France's official one.
METRIC_CRS: Final = "EPSG:2154"
_WGS84: Final = "EPSG:4326"
#: Decimal places of the GeoJSON coordinates (~0.1 m).
_DECIMALS: Final = 6

#: A WGS84 position as ``(lat, lon)`` in degrees, the order the rest of the project uses.
LatLon = tuple[float, float]

# GeographicLib's geodesics on the WGS84 ellipsoid: exact to a few nanometres.
_GEOD: Final = Geod(ellps="WGS84")


def _check_position(lat: float, lon: float) -> None:
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon))
    if not ok or not (math.isfinite(lat) and math.isfinite(lon)):
        raise RejectedError(f"position ({lat!r}, {lon!r}) is not two finite numbers",
                            code="bad_position")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise RejectedError(f"position ({lat}, {lon}) is outside WGS84's range",
                            code="bad_position")


def distance_m(a: LatLon, b: LatLon) -> float:
    """Great-circle distance in metres (the geodesic on the WGS84 ellipsoid) between two points.

    ``a`` and ``b`` are ``(lat, lon)`` in degrees.

    Raises :class:`~runtime.errors.RejectedError` (code ``bad_position``) for a
    coordinate that is not finite or out of range.
    """
    _check_position(*a)
    _check_position(*b)
    _, _, dist = _GEOD.inv(a[1], a[0], b[1], b[0])
    return float(dist)


@dataclass(frozen=True, slots=True)
class _Cells:
    """The computed polygons of one set of centres, in WGS84 lon/lat."""

    slugs: tuple[str, ...]
    names: tuple[str, ...]
    cells: tuple[Polygon, ...]
    outline: Polygon


def _reproject(transformer: Transformer, coords: NDArray[np.float64]) -> NDArray[np.float64]:
    """``coords`` (an ``(n, 2)`` array of x, y) through ``transformer``."""
    x, y = transformer.transform(coords[:, 0], coords[:, 1])
    return np.column_stack((x, y))


@functools.lru_cache(maxsize=8)
def _cells(centres: tuple[tuple[str, str, float, float], ...], buffer_m: float) -> _Cells:
    """Voronoi cells of ``centres`` ``(slug, name, lat, lon)``, clipped to the buffered hull."""
    to_metric = Transformer.from_crs(_WGS84, METRIC_CRS, always_xy=True)
    to_wgs84 = Transformer.from_crs(METRIC_CRS, _WGS84, always_xy=True)
    points = [Point(to_metric.transform(lon, lat)) for _, _, lat, lon in centres]
    sites = MultiPoint(points)
    area = sites.convex_hull.buffer(buffer_m)
    # The envelope makes the diagram reach past the buffered hull, so the clipped
    # cells tile all of it.
    diagram = voronoi_diagram(sites, envelope=area)
    by_site: list[Polygon | None] = [None] * len(points)
    for region in diagram.geoms:
        clipped = region.intersection(area)
        # Each Voronoi region holds exactly one site; the output order is GEOS's own.
        owner = next((i for i, p in enumerate(points) if region.contains(p)), None)
        if owner is None:
            continue
        if not isinstance(clipped, Polygon):
            raise ConfigError(f"the cell of {centres[owner][0]!r} is not one polygon")
        by_site[owner] = clipped
    cells: list[Polygon] = []
    for (slug, *_), cell in zip(centres, by_site, strict=True):
        if cell is None:
            raise ConfigError(f"municipality {slug!r} got no Voronoi cell")
        cells.append(shapely.transform(cell, functools.partial(_reproject, to_wgs84)))
    outline = unary_union(cells)
    if not isinstance(outline, Polygon):
        raise ConfigError("the municipalities' cells do not join into one polygon")
    return _Cells(
        slugs=tuple(c[0] for c in centres),
        names=tuple(c[1] for c in centres),
        cells=tuple(cells),
        outline=outline,
    )


def _coords(geometry: Polygon) -> dict[str, Any]:
    """GeoJSON geometry of ``geometry`` with lists (JSON-ready) and rounded coordinates."""
    raw = mapping(geometry)
    rings = [[[round(x, _DECIMALS), round(y, _DECIMALS)] for x, y in ring]
             for ring in raw["coordinates"]]
    return {"type": "Polygon", "coordinates": rings}


class Geography:
    """The municipalities' polygons with point lookups and distances.

    ``municipalities`` need distinct slugs and at least three distinct
    centres. Safe to share between threads.
    """

    def __init__(self, municipalities: Sequence[Municipality], *,
                 buffer_m: float = BUFFER_M) -> None:
        if not math.isfinite(buffer_m) or buffer_m <= 0:
            raise ConfigError(f"buffer_m must be a positive number of metres, not {buffer_m!r}")
        slugs = [m.slug for m in municipalities]
        if len(set(slugs)) != len(slugs):
            raise ConfigError("municipality slugs must be distinct")
        if len(slugs) < 3:
            raise ConfigError("a geography needs at least three municipalities")
        centres = tuple((m.slug, m.name, m.lat, m.lon) for m in municipalities)
        self._data = _cells(centres, float(buffer_m))
        self._tree = shapely.STRtree(self._data.cells)
        # Older GEOS builds its tree on the first query: have it here, so that the
        # concurrent lookups of Flask's threads only ever read it.
        self._tree.query(self._data.cells[0].centroid)

    @property
    def slugs(self) -> tuple[str, ...]:
        """The municipalities' slugs, in the order given."""
        return self._data.slugs

    def municipality_at(self, lat: float, lon: float) -> str | None:
        """Slug of the municipality whose polygon holds ``(lat, lon)``; None outside them all.

        A point on the border of two cells goes to the one given first.
        Raises :class:`~runtime.errors.RejectedError` (code ``bad_position``)
        for a coordinate that is not finite or out of range.
        """
        _check_position(lat, lon)
        point = Point(lon, lat)
        hits = self._tree.query(point, predicate="intersects")
        if len(hits) == 0:
            return None
        return self._data.slugs[int(min(hits))]

    def contains(self, lat: float, lon: float) -> bool:
        """Whether ``(lat, lon)`` lies within the metropolis."""
        return self.municipality_at(lat, lon) is not None

    def distance_m(self, a: LatLon, b: LatLon) -> float:
        """Geodesic distance in metres between ``(lat, lon)`` points (:func:`distance_m`)."""
        return distance_m(a, b)

    def polygons(self) -> list[dict[str, Any]]:
        """One GeoJSON ``Feature`` per municipality, in the order given.

        ``{"type": "Feature", "id": slug, "properties": {"slug", "name"},
        "geometry": {"type": "Polygon", "coordinates": [[[lon, lat], …]]}}``,
        coordinates rounded to 6 decimals; a new list at every call.
        """
        return [
            {
                "type": "Feature",
                "id": slug,
                "properties": {"slug": slug, "name": name},
                "geometry": _coords(cell),
            }
            for slug, name, cell in zip(
                self._data.slugs, self._data.names, self._data.cells, strict=True
            )
        ]

    def outline(self) -> dict[str, Any]:
        """The metropolis' outline (the union of the polygons) as a GeoJSON ``Polygon``."""
        return _coords(self._data.outline)


@functools.cache
def demo_geography() -> Geography:
    """The geography of the packaged 23 municipalities (``runtime/data/municipalities.csv``)."""
    from runtime.demo_inventory import municipalities

    return Geography(municipalities())
