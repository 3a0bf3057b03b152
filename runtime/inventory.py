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

>>> inv = load_inventory("metropolis.toml")          # doctest: +SKIP
>>> inv.by_id("xr-dijon-0001").domain                # doctest: +SKIP
'traffic'

:func:`parse_inventory` checks the whole file before it returns and reports
every problem at once: :class:`~runtime.errors.InventoryError` carries one line
per issue, ``"{file}:{line}: {field}: {message}"``, where ``field`` is a path
such as ``equipment[7].kind`` (array indices count from 0, in file order).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from types import MappingProxyType
from typing import Any, Final

from runtime.errors import ConfigError, InventoryError

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
PLACEMENTS: Final = ("sharded", "dedicated")

#: Equipment ids appear in MQTT topics and Redis keys: no wildcards, no slashes.
ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: Municipality slugs appear in topics and API filters, as :func:`slugify` makes them.
SLUG_PATTERN: Final = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
#: Tag and preset names: lowercase words joined by underscores.
NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
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
    """

    default: str = "sharded"
    kinds: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)
    shards: Mapping[str, int] = field(default_factory=_empty_mapping, hash=False)

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
        object.__setattr__(self, "kinds", MappingProxyType(dict(self.kinds)))
        object.__setattr__(self, "shards", MappingProxyType(dict(self.shards)))

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


@dataclass(frozen=True, slots=True)
class Inventory:
    """A validated metropolis: its municipalities, its equipment and their placement.

    Construction checks what spans records (unique slugs and ids, declared
    municipalities, equipment within :data:`MAX_DISTANCE_KM` of its
    municipality); :func:`parse_inventory` checks the same with line numbers.
    """

    name: str
    municipalities: tuple[Municipality, ...]
    equipment: tuple[Equipment, ...]
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
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

    def by_id(self, id: str) -> Equipment:
        """The equipment with this id; :class:`KeyError` if there is none."""
        return self._by_id[id]

    def municipality(self, slug: str) -> Municipality:
        """The municipality with this slug; :class:`KeyError` if there is none."""
        return self._by_slug[slug]

    def count_by_kind(self) -> dict[str, int]:
        """Equipment count per kind, every kind present (0 if none), in :data:`KINDS` order."""
        counts = dict.fromkeys(KINDS, 0)
        for eq in self.equipment:
            counts[eq.kind] += 1
        return counts


# --------------------------------------------------------------------------- loading


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate an inventory file; :class:`InventoryError` lists every issue."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InventoryError([f"{source}:0: file: cannot read: {reason}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InventoryError(
            [f"{source}:{line}: file: not valid UTF-8 (byte {exc.start})"]
        ) from exc
    # Editors on Windows like to add a byte-order mark; it is not a syntax error worth a stop.
    return parse_inventory(text.removeprefix("\ufeff"), source)


def parse_inventory(text: str, source: str) -> Inventory:
    """Validate inventory TOML ``text`` (``source`` names it in issues) into an :class:`Inventory`.

    Every problem is collected before raising :class:`InventoryError`, whose
    ``issues`` are ``"{source}:{line}: {field}: {message}"`` lines sorted by line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, message = _syntax_location(str(exc), text)
        raise InventoryError([f"{source}:{line}: syntax: {message}"]) from exc
    return _Parser(text, source, doc).run()


_SYNTAX_AT_RE: Final = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")
_SYNTAX_END_RE: Final = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_location(message: str, text: str) -> tuple[int, str]:
    if m := _SYNTAX_AT_RE.search(message):
        return int(m.group(1)), message[: m.start()]
    if m := _SYNTAX_END_RE.search(message):
        return max(1, text.count("\n") + (0 if text.endswith("\n") else 1)), message[: m.start()]
    return 1, message


# Where things are in the raw text: tomllib keeps no positions, so the file is
# scanned once for table headers and `key =` lines, and each is filed under
# the same path (`("equipment", 7, "kind")`) that validation uses.

_Path = tuple[str | int, ...]

_BARE_KEY: Final = r"[A-Za-z0-9_-]+"
_KEY_PART: Final = rf"""(?:{_BARE_KEY}|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY: Final = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER_RE: Final = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED_KEY})\s*\]\]?\s*(?:#.*)?$")
_KEYVAL_RE: Final = re.compile(rf"^\s*({_DOTTED_KEY})\s*=(.*)$")
_KEY_PART_RE: Final = re.compile(_KEY_PART)


def _split_key(dotted: str) -> tuple[str, ...]:
    parts: list[str] = []
    for m in _KEY_PART_RE.finditer(dotted):
        part = m.group(0)
        if part.startswith('"'):
            try:
                part = str(json.loads(part))
            except ValueError:
                part = part[1:-1]
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _scan_value(text: str, delim: str | None, depth: int) -> tuple[str | None, int]:
    """Follow one line of a value: is a multi-line string or array still open at its end?"""
    i, n = 0, len(text)
    while i < n:
        if delim is not None:
            if delim == '"""' and text[i] == "\\":
                i += 2
            elif text.startswith(delim, i):
                i += 3
                # Up to two quotes may end the content right before the closing three.
                while i < n and text[i] == delim[0]:
                    i += 1
                delim = None
            else:
                i += 1
            continue
        c = text[i]
        if c == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            delim = text[i : i + 3]
            i += 3
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end + 1
        else:
            depth += (c in "[{") - (c in "]}")
            i += 1
    return delim, max(depth, 0)


class _Locator:
    """Line numbers of table headers and key assignments, by validation path."""

    def __init__(self, text: str) -> None:
        self._lines: dict[_Path, int] = {}
        arrays: dict[_Path, int] = {}  # array-of-tables path -> index of its last element

        def resolve(parts: tuple[str, ...]) -> _Path:
            # `[equipment.attrs]` names the last `[[equipment]]` seen.
            out: _Path = ()
            for part in parts:
                out = (*out, part)
                if out in arrays:
                    out = (*out, arrays[out])
            return out

        table: _Path = ()
        delim: str | None = None  # the open multi-line string's quotes, if any
        depth = 0  # brackets open in a multi-line array value
        # tomllib counts lines by "\n" alone; str.splitlines() would also split on \x0c, \u2028…
        for lineno, line in enumerate(text.split("\n"), start=1):
            if delim is not None or depth > 0:
                delim, depth = _scan_value(line, delim, depth)
                continue
            if header := _HEADER_RE.match(line):
                parts = _split_key(header.group(2))
                if header.group(1) == "[[":
                    parent = resolve(parts[:-1])
                    array = (*parent, parts[-1])
                    arrays[array] = arrays.get(array, -1) + 1
                    table = (*array, arrays[array])
                else:
                    table = resolve(parts)
                self._lines.setdefault(table, lineno)
                continue
            if keyval := _KEYVAL_RE.match(line):
                self._lines.setdefault((*table, *_split_key(keyval.group(1))), lineno)
                delim, depth = _scan_value(keyval.group(2), None, 0)

    def line(self, path: _Path) -> int:
        """The line of ``path``, else of the nearest enclosing table or key, else 1."""
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return 1


def _field_name(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(_BARE_KEY, part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out or "inventory"


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, datetime | date | time):
        return "date/time"
    return type(value).__name__


def _shown(value: object) -> str:
    """``value`` as it was written in TOML, shortened."""
    try:
        text = _toml_value(value, None)
    except ConfigError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _choices(options: Iterable[str]) -> str:
    return ", ".join(options)


_TOP_KEYS: Final = ("metropolis", "placement", "municipality", "equipment")
_METROPOLIS_KEYS: Final = ("name",)
_PLACEMENT_KEYS: Final = ("default", "kinds", "shards")
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


class _Parser:
    """One validation pass over a parsed document, collecting issues."""

    def __init__(self, text: str, source: str, doc: dict[str, Any]) -> None:
        self._source = source
        self._doc = doc
        self._where = _Locator(text)
        self._issues: list[tuple[int, int, str]] = []

    # -- reporting

    def _issue(self, path: _Path, message: str, *, at: _Path | None = None) -> None:
        line = self._where.line(path if at is None else at)
        text = f"{self._source}:{line}: {_field_name(path)}: {message}"
        self._issues.append((line, len(self._issues), text))

    def _unknown_keys(self, table: Mapping[str, Any], path: _Path, known: Sequence[str]) -> None:
        for key in table:
            if key in known:
                continue
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            self._issue(
                (*path, key), f"unknown key {key!r} ({hint}expected one of {_choices(known)})"
            )

    def _table(self, value: object, path: _Path, what: str) -> Mapping[str, Any] | None:
        if isinstance(value, dict):
            return value
        self._issue(path, f"expected {what}, got {_type_name(value)} {_shown(value)}")
        return None

    # -- typed fields; each returns None after reporting a problem (or when optional and absent)

    def _present(self, table: Mapping[str, Any], path: _Path, key: str, required: bool) -> bool:
        if key in table:
            return True
        if required:
            self._issue((*path, key), "required field missing", at=path)
        return False

    def _str(
        self, table: Mapping[str, Any], path: _Path, key: str, *, required: bool = True
    ) -> str | None:
        if not self._present(table, path, key, required):
            return None
        value = table[key]
        if not isinstance(value, str):
            self._issue((*path, key), f"expected a string, got {_type_name(value)} {_shown(value)}")
            return None
        if not value.strip():
            self._issue((*path, key), "must not be empty")
            return None
        return value

    def _number(self, table: Mapping[str, Any], path: _Path, key: str) -> float | None:
        if not self._present(table, path, key, True):
            return None
        value = table[key]
        if not _is_number(value):
            self._issue((*path, key), f"expected a number, got {_type_name(value)} {_shown(value)}")
            return None
        return float(value)

    def _int(self, table: Mapping[str, Any], path: _Path, key: str) -> int | None:
        if not self._present(table, path, key, True):
            return None
        value = table[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self._issue(
                (*path, key), f"expected an integer, got {_type_name(value)} {_shown(value)}"
            )
            return None
        return value

    def _coordinates(
        self, table: Mapping[str, Any], path: _Path
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

    def _placement_value(self, value: object, path: _Path) -> str | None:
        if value in PLACEMENTS:
            assert isinstance(value, str)
            return value
        shown = repr(value) if isinstance(value, str) else _shown(value)
        self._issue(path, f"unknown placement {shown} (expected one of {_choices(PLACEMENTS)})")
        return None

    # -- sections

    def run(self) -> Inventory:
        self._unknown_keys(self._doc, (), _TOP_KEYS)
        name = self._metropolis()
        placement = self._placement()
        municipalities, slugs = self._municipalities()
        equipment = self._equipment(municipalities, slugs)
        if not self._issues and name is not None and placement is not None:
            try:
                return Inventory(
                    name=name,
                    municipalities=tuple(m for m in municipalities if m is not None),
                    equipment=tuple(equipment),
                    placement=placement,
                    source=self._source,
                )
            except ConfigError as exc:
                # Every cross-record rule is checked above with a line; this is the backstop.
                self._issue((), str(exc))
        if not self._issues:
            self._issue((), "inventory could not be built")
        self._issues.sort()
        raise InventoryError([text for _, _, text in self._issues])

    def _metropolis(self) -> str | None:
        path: _Path = ("metropolis",)
        if "metropolis" not in self._doc:
            self._issue(path, "required table [metropolis] missing")
            return None
        table = self._table(self._doc["metropolis"], path, "a table")
        if table is None:
            return None
        self._unknown_keys(table, path, _METROPOLIS_KEYS)
        return self._str(table, path, "name")

    def _placement(self) -> PlacementPolicy | None:
        path: _Path = ("placement",)
        if "placement" not in self._doc:
            return PlacementPolicy()
        table = self._table(self._doc["placement"], path, "a table")
        if table is None:
            return None
        before = len(self._issues)
        self._unknown_keys(table, path, _PLACEMENT_KEYS)
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
                    domain_path, f"expected an integer, got {_type_name(count)} {_shown(count)}"
                )
            elif not 1 <= count <= MAX_SHARDS:
                self._issue(domain_path, f"shard count {count} outside [1, {MAX_SHARDS}]")
            else:
                shards[domain] = count
        if len(self._issues) != before:
            return None
        return PlacementPolicy(default=default, kinds=kinds, shards=shards)

    def _array_of_tables(self, key: str) -> list[tuple[_Path, Mapping[str, Any]]]:
        value = self._doc.get(key, [])
        if not isinstance(value, list):
            self._issue((key,), f"expected an array of tables ([[{key}]]), got {_type_name(value)}")
            return []
        out: list[tuple[_Path, Mapping[str, Any]]] = []
        for index, item in enumerate(value):
            table = self._table(item, (key, index), "a table")
            if table is not None:
                out.append(((key, index), table))
        return out

    def _municipalities(
        self,
    ) -> tuple[list[Municipality | None], dict[str, tuple[_Path, Municipality | None]]]:
        """Valid municipalities (None where a record failed) and every declared slug."""
        records = self._array_of_tables("municipality")
        if self._doc.get("municipality", []) == []:
            self._issue(("municipality",), "at least one [[municipality]] is required")
        out: list[Municipality | None] = []
        slugs: dict[str, tuple[_Path, Municipality | None]] = {}
        for path, table in records:
            before = len(self._issues)
            self._unknown_keys(table, path, _MUNICIPALITY_KEYS)
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
                        f"{self._where.line(first)}, {_field_name(first)})",
                    )
                    muni = None
                else:
                    slugs[slug] = (path, muni)
            out.append(muni)
        return out, slugs

    def _equipment(
        self,
        municipalities: list[Municipality | None],
        slugs: Mapping[str, tuple[_Path, Municipality | None]],
    ) -> list[Equipment]:
        out: list[Equipment] = []
        seen: dict[str, _Path] = {}
        for path, table in self._array_of_tables("equipment"):
            before = len(self._issues)
            self._unknown_keys(table, path, _EQUIPMENT_KEYS)
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
                        f"{self._where.line(first)}, {_field_name(first)})",
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
            if len(self._issues) != before:
                continue
            assert ident is not None and kind is not None and slug is not None
            assert lat is not None and lon is not None and attrs is not None
            assert endpoint is not None and profile is not None
            out.append(
                Equipment(
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
            )
        self._watched(out, seen)
        return out

    def _plan_attrs(self, attrs: Mapping[str, Any], path: _Path, kind: str | None) -> None:
        """``tags`` of any equipment, ``watches`` and ``presets`` of a camera (module doc)."""
        if "tags" in attrs:
            tags = attrs["tags"]
            where = (*path, "tags")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                self._issue(where, f"expected an array of strings, got {_type_name(tags)} "
                                   f"{_shown(tags)}")
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
                                                f"{_type_name(watched)} {_shown(watched)}")
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
                                                f"got {_shown(number)}")

    def _door_tags(self, doors: object, where: _Path, kind: str | None) -> None:
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
                                           f"(from 1), got {_shown(numbers)}")

    def _watched(self, equipment: Sequence[Equipment], seen: Mapping[str, _Path]) -> None:
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


# --------------------------------------------------------------------------- writing


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_ESCAPES: Final = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if re.fullmatch(_BARE_KEY, key) else _toml_string(key)


def _toml_float(value: float, decimals: int | None) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    text = repr(value)
    return text if any(c in text for c in ".eE") else text + ".0"


def _toml_value(value: Any, decimals: int | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value, decimals)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_toml_key(str(k))} = {_toml_value(v, decimals)}" for k, v in value.items()
        )
        return "{" + items + "}" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, decimals) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def dump_inventory(inventory: Inventory, *, decimals: int | None = None) -> str:
    """The TOML text of ``inventory``; :func:`parse_inventory` reads it back equal.

    Floats are written exactly unless ``decimals`` fixes their number of
    decimals (then they read back equal only if they were rounded to it).
    """
    lines: list[str] = ["[metropolis]", f"name = {_toml_string(inventory.name)}", ""]
    policy = inventory.placement
    lines += ["[placement]", f"default = {_toml_string(policy.default)}"]
    if policy.kinds:
        lines.append("[placement.kinds]")
        lines += [f"{k} = {_toml_string(v)}" for k, v in policy.kinds.items()]
    if policy.shards:
        lines.append("[placement.shards]")
        lines += [f"{k} = {v}" for k, v in policy.shards.items()]

    def num(x: float) -> str:
        return _toml_float(x, decimals)

    for m in inventory.municipalities:
        lines += [
            "",
            "[[municipality]]",
            f"slug = {_toml_string(m.slug)}",
            f"name = {_toml_string(m.name)}",
            f"lat = {num(m.lat)}",
            f"lon = {num(m.lon)}",
            f"population = {m.population}",
        ]
    for e in inventory.equipment:
        lines += [
            "",
            "[[equipment]]",
            f"id = {_toml_string(e.id)}",
            f"kind = {_toml_string(e.kind)}",
            f"municipality = {_toml_string(e.municipality)}",
            f"lat = {num(e.lat)}",
            f"lon = {num(e.lon)}",
            f"endpoint = {_toml_string(e.endpoint)}",
            f"profile = {_toml_string(e.profile)}",
        ]
        if e.placement is not None:
            lines.append(f"placement = {_toml_string(e.placement)}")
        if e.attrs:
            lines.append("[equipment.attrs]")
            lines += [f"{_toml_key(k)} = {_toml_value(v, decimals)}" for k, v in e.attrs.items()]
    lines.append("")
    return "\n".join(lines)
