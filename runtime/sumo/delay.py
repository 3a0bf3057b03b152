"""Delays per trip, from SUMO's trip output (``--tripinfo-output``).

For each trip SUMO writes its ``duration`` (departure to arrival, s) and its
``waitingTime``: the time the vehicle's speed was below 0.1 m/s, scheduled
stops not counted (a bus's dwell at its stops is not waiting; a bus queued
behind another at a stop, or at a red light, is). That is the delay this
module reports: for the buses, the time they stood at signals and in queues
outside their dwell, ``bus_signal_delay_s`` of ``commandpost bench tsp``.
Trips SUMO wrote as unfinished (``arrival`` -1: still running when the
simulation ended) are counted apart and left out of the means.

>>> trips = parse_trips('''<tripinfos>
...   <tripinfo id="c1" vType="car" duration="120" waitingTime="30" arrival="130"/>
...   <tripinfo id="b1" vType="bus" duration="400" waitingTime="12" arrival="410"/>
... </tripinfos>''')
>>> summarise(trips, lambda t: t.id.startswith("b"))
Summary(bus_trips=1, other_trips=1, bus_delay_s=12.0, bus_travel_s=400.0, other_delay_s=30.0, \
other_travel_s=120.0, unfinished=0)
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ConfigError

__all__ = ["Summary", "Trip", "change_pct", "parse_trips", "read_trips", "summarise"]


@dataclass(frozen=True, slots=True)
class Trip:
    """One vehicle's trip: its id, type, travel time and waiting time (s)."""

    id: str
    vtype: str
    duration_s: float
    waiting_s: float
    finished: bool = True


@dataclass(frozen=True, slots=True)
class Summary:
    """Trips counted and mean delays and travel times (s), buses and the others apart."""

    bus_trips: int
    other_trips: int
    bus_delay_s: float | None
    bus_travel_s: float | None
    other_delay_s: float | None
    other_travel_s: float | None
    unfinished: int = 0


def _number(element: ET.Element, key: str, where: str) -> float:
    text = element.get(key)
    try:
        value = float(text or "")
    except ValueError:
        raise ConfigError(f"{where}: tripinfo {element.get('id')!r}: {key} {text!r} is not a "
                          "number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: tripinfo {element.get('id')!r}: {key} is not finite")
    return value


def parse_trips(text: str, where: str = "<tripinfo>") -> list[Trip]:
    """The trips of a trip output's text."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ConfigError(f"{where}:{exc.position[0]}: {exc}") from exc
    return [Trip(t.get("id") or "", t.get("vType") or "", _number(t, "duration", where),
                 _number(t, "waitingTime", where), _number(t, "arrival", where) >= 0)
            for t in root.iter("tripinfo")]


def read_trips(path: str | Path) -> list[Trip]:
    """The trips of a trip output file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    return parse_trips(text, str(path))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(trips: Iterable[Trip], is_bus: Callable[[Trip], bool]) -> Summary:
    """Means per finished trip, buses (``is_bus``) and the other vehicles apart."""
    buses: list[Trip] = []
    others: list[Trip] = []
    unfinished = 0
    for trip in trips:
        if not trip.finished:
            unfinished += 1
        else:
            (buses if is_bus(trip) else others).append(trip)
    return Summary(len(buses), len(others), _mean([t.waiting_s for t in buses]),
                   _mean([t.duration_s for t in buses]), _mean([t.waiting_s for t in others]),
                   _mean([t.duration_s for t in others]), unfinished)


def change_pct(before: float | None, after: float | None) -> float | None:
    """How much ``after`` differs from ``before``, in percent of ``before`` (None when
    either is missing or ``before`` is 0)."""
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (after - before) / before
