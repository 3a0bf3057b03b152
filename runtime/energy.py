"""Street-lighting energy: the circuits' metered hours, summed per hour or per night.

Each lighting circuit publishes its metered hours as one read model per local
date (:func:`model_name`, ``view:energy.{circuit}.{YYYY-MM-DD}`` in the store)::

    {"id", "municipality", "date", "lamps", "lamp_w", "legacy_w",
     "hours": {"<hour epoch>": [wh, lit_s, resets, wraps]}}

``lit_s`` is the part of the hour between the circuit's dusk and dawn. The
two baselines of an hour follow from it: the same lamps at full power for
``lit_s`` (``lamps * lamp_w * lit_s / 3600``, the **dimming** baseline), and
the lamps they replaced likewise (``legacy_w``, the **legacy** baseline).
:func:`report` sums any set of them (a circuit, a municipality, the
metropolis) per hour or per night; a night runs from noon to noon local time
(dusk to dawn lies inside it) and is named by the date it starts. A month of
the metropolis is about 700 circuits x 31 dates: one pipelined read.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from runtime.clock import CITY_TZ

__all__ = ["MAX_RANGE_S", "STEPS", "dates_between", "model_name", "night_of", "report"]

#: Steps a report is summed by.
STEPS: Final = ("hour", "night")
#: The longest range one report covers (62 days).
MAX_RANGE_S: Final = 62 * 86_400.0


def model_name(circuit: str, date: datetime.date | str) -> str:
    """The read model holding circuit ``circuit``'s metered hours of local date ``date``."""
    return f"energy.{circuit}.{date if isinstance(date, str) else date.isoformat()}"


def night_of(ts: float) -> datetime.date:
    """The night ``ts`` belongs to: the date of the noon before it, local time."""
    local = datetime.datetime.fromtimestamp(ts, CITY_TZ)
    return local.date() - datetime.timedelta(days=1 if local.hour < 12 else 0)


def _noon(date: datetime.date) -> float:
    return datetime.datetime.combine(date, datetime.time(12), tzinfo=CITY_TZ).timestamp()


def dates_between(start: float, end: float) -> list[str]:
    """The local dates whose read models may hold hours of ``[start, end)``."""
    first = datetime.datetime.fromtimestamp(start, CITY_TZ).date()
    last = datetime.datetime.fromtimestamp(end, CITY_TZ).date()
    out = []
    while first <= last:
        out.append(first.isoformat())
        first += datetime.timedelta(days=1)
    return out


def _saving(metered: float, baseline: float) -> float | None:
    return round(100.0 * (1.0 - metered / baseline), 2) if baseline > 0 else None


def _row(start: float, end: float, sums: list[float]) -> dict[str, Any]:
    wh, dimming, legacy, resets, wraps = sums
    return {"start": start, "end": end, "metered_wh": round(wh, 1),
            "dimming_baseline_wh": round(dimming, 1), "legacy_baseline_wh": round(legacy, 1),
            "dimming_saving_pct": _saving(wh, dimming),
            "legacy_saving_pct": _saving(wh, legacy),
            "counter_resets": int(resets), "counter_wraps": int(wraps)}


def report(models: Iterable[Mapping[str, Any]], start: float, end: float,
           step: str) -> dict[str, Any]:
    """Metered Wh and both baselines of ``models``' hours in ``[start, end)``, per ``step``.

    ``{"from", "to", "step", "circuits", "lamps", "steps": [{"start", "end",
    "night"?, "metered_wh", "dimming_baseline_wh", "legacy_baseline_wh",
    "dimming_saving_pct", "legacy_saving_pct", "counter_resets",
    "counter_wraps"}], "total": {…}}``; a saving is None where its baseline
    is 0 (a step in daylight). Steps with no hour are left out.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}")
    buckets: dict[float, list[float]] = {}
    circuits: dict[str, int] = {}
    for model in models:
        hours = model.get("hours")
        if not isinstance(hours, Mapping):
            continue
        lamps = float(model.get("lamps") or 0)
        lamp_w, legacy_w = float(model.get("lamp_w") or 0), float(model.get("legacy_w") or 0)
        circuits[str(model.get("id"))] = int(lamps)
        for key, row in hours.items():
            hour = float(key)
            if not start <= hour < end or not isinstance(row, list | tuple) or len(row) < 4:
                continue
            wh, lit_s, resets, wraps = (float(x) for x in row[:4])
            if not all(math.isfinite(x) for x in (wh, lit_s)):
                continue
            bucket = hour if step == "hour" else _noon(night_of(hour))
            sums = buckets.setdefault(bucket, [0.0] * 5)
            sums[0] += wh
            sums[1] += lamps * lamp_w * lit_s / 3600.0
            sums[2] += lamps * legacy_w * lit_s / 3600.0
            sums[3] += resets
            sums[4] += wraps
    steps = []
    total = [0.0] * 5
    for bucket in sorted(buckets):
        sums = buckets[bucket]
        total = [a + b for a, b in zip(total, sums, strict=True)]
        if step == "hour":
            steps.append(_row(bucket, bucket + 3600.0, sums))
        else:
            night = night_of(bucket)
            row = _row(bucket, _noon(night + datetime.timedelta(days=1)), sums)
            steps.append({"night": night.isoformat(), **row})
    return {"from": start, "to": end, "step": step, "unit": "Wh", "circuits": len(circuits),
            "lamps": sum(circuits.values()), "steps": steps,
            "total": _row(start, end, total)}
