"""The metropolis' geography: Voronoi cells of the municipalities, lookups, distances."""

from __future__ import annotations

import json
import math
import random

import pytest
from pyproj import Transformer
from shapely.geometry import Point, shape

from runtime.demo_inventory import municipalities
from runtime.errors import ConfigError, RejectedError
from runtime.geo import BUFFER_M, METRIC_CRS, Geography, demo_geography, distance_m
from runtime.inventory import Municipality

KM_PER_DEGREE_LAT = 111.2


def test_every_centre_lies_in_its_own_cell() -> None:
    geo = demo_geography()
    munis = municipalities()
    assert geo.slugs == tuple(m.slug for m in munis)
    for m in munis:
        assert geo.municipality_at(m.lat, m.lon) == m.slug


def test_points_far_outside_are_in_no_municipality() -> None:
    geo = demo_geography()
    munis = municipalities()
    north = max(m.lat for m in munis) + 20 / KM_PER_DEGREE_LAT
    south = min(m.lat for m in munis) - 20 / KM_PER_DEGREE_LAT
    assert geo.municipality_at(north, 5.03) is None
    assert geo.municipality_at(south, 5.06) is None
    assert not geo.contains(north, 5.03)
    assert geo.contains(47.3220, 5.0415)


def test_the_union_is_one_polygon_tiled_by_the_cells() -> None:
    geo = demo_geography()
    outline = geo.outline()
    assert outline["type"] == "Polygon"
    assert len(outline["coordinates"]) == 1  # no hole
    features = geo.polygons()
    assert [f["id"] for f in features] == list(geo.slugs)
    cells = [shape(f["geometry"]) for f in features]
    assert all(c.is_valid and c.geom_type == "Polygon" for c in cells)
    union = shape(outline)
    # The cells neither overlap nor leave gaps (to the rounding of the coordinates).
    assert sum(c.area for c in cells) == pytest.approx(union.area, rel=1e-6)
    json.dumps(features)  # JSON-ready for the admin map


def test_the_buffer_reaches_beyond_the_outermost_centres() -> None:
    geo = demo_geography()
    to_metric = Transformer.from_crs("EPSG:4326", METRIC_CRS, always_xy=True)
    to_wgs84 = Transformer.from_crs(METRIC_CRS, "EPSG:4326", always_xy=True)
    west = min(municipalities(), key=lambda m: m.lon)
    x, y = to_metric.transform(west.lon, west.lat)
    inside_lon, inside_lat = to_wgs84.transform(x - BUFFER_M + 200, y)
    outside_lon, outside_lat = to_wgs84.transform(x - BUFFER_M - 200, y)
    assert geo.municipality_at(inside_lat, inside_lon) == west.slug
    assert geo.municipality_at(outside_lat, outside_lon) is None


def test_a_point_belongs_to_the_nearest_centre() -> None:
    """The Voronoi property, checked in the metric projection on random points."""
    geo = demo_geography()
    munis = municipalities()
    to_metric = Transformer.from_crs("EPSG:4326", METRIC_CRS, always_xy=True)
    centres = [to_metric.transform(m.lon, m.lat) for m in munis]
    union = shape(geo.outline())
    rng = random.Random(11)
    checked = 0
    while checked < 300:
        lat, lon = rng.uniform(47.20, 47.40), rng.uniform(4.88, 5.24)
        if not union.contains(Point(lon, lat)):
            assert geo.municipality_at(lat, lon) is None
            continue
        x, y = to_metric.transform(lon, lat)
        ranked = sorted((math.dist((x, y), c), m.slug) for c, m in zip(centres, munis, strict=True))
        if ranked[1][0] - ranked[0][0] < 50:  # too near a border to tell
            continue
        assert geo.municipality_at(lat, lon) == ranked[0][1]
        checked += 1


def test_distance_matches_known_geodesics() -> None:
    # WGS84: one degree of longitude along the equator, one of latitude from it.
    assert distance_m((0.0, 0.0), (0.0, 1.0)) == pytest.approx(111_319.49, rel=0.005)
    assert distance_m((0.0, 0.0), (1.0, 0.0)) == pytest.approx(110_574.39, rel=0.005)
    geo = demo_geography()
    assert geo.distance_m((47.3220, 5.0415), (47.3220, 5.0415)) == 0.0
    assert geo.distance_m((47.3220, 5.0415), (47.2915, 5.0085)) == pytest.approx(4_210, abs=5)


@pytest.mark.parametrize("lat, lon", [(math.nan, 5.0), (47.0, math.inf), (91.0, 5.0),
                                      (47.0, -181.0)])
def test_bad_positions_are_refused(lat: float, lon: float) -> None:
    with pytest.raises(RejectedError) as info:
        demo_geography().municipality_at(lat, lon)
    assert info.value.code == "bad_position"
    with pytest.raises(RejectedError):
        distance_m((lat, lon), (47.0, 5.0))


def test_polygons_are_computed_once_per_set_of_centres() -> None:
    again = Geography(municipalities())
    assert again._data is demo_geography()._data
    assert demo_geography() is demo_geography()
    assert again.polygons() == demo_geography().polygons()


def test_bad_configurations_are_refused() -> None:
    munis = municipalities()
    with pytest.raises(ConfigError):
        Geography(munis[:2])
    with pytest.raises(ConfigError):
        Geography([*munis[:3], munis[0]])
    with pytest.raises(ConfigError):
        Geography(munis, buffer_m=0)
    three = [Municipality("a", "A", 47.30, 5.00, 1), Municipality("b", "B", 47.30, 5.10, 1),
             Municipality("c", "C", 47.35, 5.05, 1)]
    tiny = Geography(three, buffer_m=1_000)
    assert tiny.municipality_at(47.30, 5.01) == "a"
    assert tiny.municipality_at(47.355, 5.05) == "c"
    assert tiny.municipality_at(47.37, 5.05) is None
