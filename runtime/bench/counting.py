"""Counting telemetry at both ends: what devices emitted against what entities applied.

Pure arithmetic on snapshots, so that it is tested on synthetic data:

* the source: per device, the counters of :mod:`devices.sim.control`
  (``emitted``, ``first_seq``, ``last_seq``, ``points``, ``dropped``, ``late``);
* the sink: per entity, ``samples`` (distinct sequence numbers applied) and
  ``points`` (data values applied), from the entities' state.

Between two snapshots taken while the sources were held and drained,
``emitted`` is the number of numbered samples the device sent in the window
(its ``seq`` range must agree: a device whose range and count disagree is
reported under ``numbering_errors``), ``applied`` what its entity applied, and
``lost`` = emitted - applied, per device, never derived from the sink alone.
A device that applied more than it emitted (a duplicate) is counted under
``duplicates``, not netted against another device's losses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ProtocolTally", "Tally", "tally"]

_SEQ_MOD = 2**32


@dataclass(slots=True)
class ProtocolTally:
    """Sums over the devices of one protocol."""

    devices: int = 0
    emitted: int = 0
    applied: int = 0
    lost: int = 0
    duplicates: int = 0
    points_emitted: int = 0
    points: int = 0  # data points applied
    dropped: int = 0  # emitted, then dropped on purpose (injected loss)
    late: int = 0  # skipped by a publisher that fell behind (never emitted)
    numbering_errors: int = 0
    lossy_devices: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["lossy_devices"] = sorted(self.lossy_devices)[:20]
        return out


@dataclass(slots=True)
class Tally:
    """Per protocol, and in all."""

    by_protocol: dict[str, ProtocolTally]

    def total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.by_protocol.values())


def _delta(after: Mapping[str, Any], before: Mapping[str, Any] | None, key: str) -> int:
    b = int((before or {}).get(key) or 0)
    return int(after.get(key) or 0) - b


def tally(
    source_before: Mapping[str, Mapping[str, Any]],
    source_after: Mapping[str, Mapping[str, Any]],
    sink_before: Mapping[str, Mapping[str, Any]],
    sink_after: Mapping[str, Mapping[str, Any]],
    *,
    extra_sources: Iterable[tuple[Mapping[str, Mapping[str, Any]],
                                  Mapping[str, Mapping[str, Any]]]] = (),
) -> Tally:
    """Count a window per device and sum per protocol (see the module docstring).

    ``source_*`` map device id to its control-channel counters, ``sink_*``
    entity id to ``{"samples", "points"}``. ``extra_sources`` are more
    (before, after) pairs of sources that emitted for the same devices in the
    window (a load generator numbering its own samples).
    """
    out: dict[str, ProtocolTally] = {}
    pairs = [(source_before, source_after), *extra_sources]
    emitted_by: dict[str, int] = {}
    for before_map, after_map in pairs:
        for did, after in after_map.items():
            before = before_map.get(did)
            proto = str(after.get("protocol", "?"))
            t = out.setdefault(proto, ProtocolTally())
            n = _delta(after, before, "emitted")
            first_new = (before or {}).get("last_seq")
            last = after.get("last_seq")
            if n > 0 and last is not None:
                start = first_new if first_new is not None else after.get("first_seq")
                if start is not None:
                    span = (int(last) - int(start)) % _SEQ_MOD
                    # Without an earlier sample, the first one is in the window too.
                    if first_new is None:
                        span += 1
                    if span != n:
                        t.numbering_errors += 1
            emitted_by[did] = emitted_by.get(did, 0) + n
            t.emitted += n
            t.points_emitted += _delta(after, before, "points")
            t.dropped += _delta(after, before, "dropped")
            t.late += _delta(after, before, "late")
    protocol_of = {did: str(a.get("protocol", "?")) for _, m in pairs for did, a in m.items()}
    for did, emitted in emitted_by.items():
        t = out[protocol_of[did]]
        t.devices += 1
        sink = sink_after.get(did)
        if sink is None:
            t.lost += emitted
            if emitted:
                t.lossy_devices.append(did)
            continue
        applied = _delta(sink, sink_before.get(did), "samples")
        t.applied += applied
        t.points += _delta(sink, sink_before.get(did), "points")
        if applied < emitted:
            t.lost += emitted - applied
            t.lossy_devices.append(did)
        elif applied > emitted:
            t.duplicates += applied - emitted
    return Tally(out)
