"""An entity's twin: what the device reports and what operators asked for.

Reported values carry SCADA quality, the device's source timestamp and the
time they were received, so a value can be shown as stale without losing it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Quality(enum.StrEnum):
    """OPC-style quality of a reported value."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reported(NamedTuple):
    """One reported value with its provenance.

    A named tuple rather than a frozen dataclass: a busy host builds one per
    value of every sample it receives, and a tuple is several times cheaper to make.
    """

    value: Any
    quality: Quality = Quality.GOOD
    source_ts: float = 0.0  # the device's own timestamp (epoch s), 0 when it gave none
    received_ts: float = 0.0  # when the runtime received it (epoch s)
    seq: int = 0  # the device's sequence number, 0 when it gave none

    def stale(self, now: float, max_age_s: float) -> bool:
        """True when the value is older than ``max_age_s`` (by source, else receipt)."""
        ts = self.source_ts or self.received_ts
        return max_age_s > 0 and now - ts > max_age_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "quality": str(self.quality),
            "source_ts": self.source_ts,
            "received_ts": self.received_ts,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reported:
        return cls(
            value=d.get("value"),
            quality=Quality(d.get("quality", "good")),
            source_ts=float(d.get("source_ts", 0.0)),
            received_ts=float(d.get("received_ts", 0.0)),
            seq=int(d.get("seq", 0)),
        )


@dataclass(slots=True)
class Twin:
    """Reported and desired state of one entity (mutable, owned by its entity)."""

    reported: dict[str, Reported] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)

    def report_many(
        self,
        values: dict[str, Any],
        *,
        quality: Quality = Quality.GOOD,
        source_ts: float = 0.0,
        received_ts: float = 0.0,
        seq: int = 0,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        """:meth:`report` every value of one sample but the keys in ``skip``."""
        reported = self.reported
        for name, value in values.items():
            if name not in skip:
                reported[name] = Reported(value, quality, source_ts, received_ts, seq)

    def report(
        self,
        name: str,
        value: Any,
        *,
        quality: Quality = Quality.GOOD,
        source_ts: float = 0.0,
        received_ts: float = 0.0,
        seq: int = 0,
    ) -> None:
        self.reported[name] = Reported(value, quality, source_ts, received_ts, seq)

    def degrade(self, quality: Quality) -> None:
        """Mark every reported value with ``quality`` (a device went offline)."""
        self.reported = {
            k: Reported(v.value, quality, v.source_ts, v.received_ts, v.seq)
            for k, v in self.reported.items()
        }

    def pending(self) -> dict[str, Any]:
        """Desired fields whose reported value differs (what reconciliation must do)."""
        out: dict[str, Any] = {}
        for k, want in self.desired.items():
            got = self.reported.get(k)
            if got is None or got.value != want:
                out[k] = want
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "reported": {k: v.to_dict() for k, v in self.reported.items()},
            "desired": dict(self.desired),
        }

    def view(self, now: float, max_age_s: float = 0.0) -> dict[str, Any]:
        """The API's shape: reported fields with quality, timestamp and staleness."""
        return {
            "reported": {
                k: {**v.to_dict(), "stale": v.stale(now, max_age_s)}
                for k, v in self.reported.items()
            },
            "desired": dict(self.desired),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Twin:
        if not d:
            return cls()
        rep = d.get("reported") or {}
        return cls(
            reported={str(k): Reported.from_dict(v) for k, v in rep.items()},
            desired=dict(d.get("desired") or {}),
        )
