"""A lighting circuit: one cabinet and the lamps of its circuit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from actors.equipment import EquipmentEntity, Field, _lamp_failed, block_values
from runtime.device_port import DevicePort
from runtime.errors import DeviceUnavailableError, ProtocolError
from runtime.twin import Quality


class LightingCircuit(EquipmentEntity):
    """A lighting circuit: one cabinet, whose lamps are points of the circuit, not entities.

    ``on`` and ``dim`` are set for the whole circuit and carried to every lamp.
    The cabinet reports each lamp (its ``lamp`` block), never a circuit-wide
    value, so a setpoint is compared with every lamp and written only to the
    lamps that do not hold it (``lamp.3.dim``); when none of them holds it and
    the cabinet has a broadcast register (``broadcast_dim``), one broadcast
    write sets them all, as a DALI broadcast does.

    What the lamps hold is the twin's reading when the cabinet took it after
    this incarnation started and after the circuit's last write ended, none
    of its writes having gone unanswered since (the session serialises polls
    and writes, so such a reading shows every write made so far). Otherwise
    the circuit reads the cabinet first: its twin may predate a write that its
    previous incarnation made (a host killed between the write and the
    checkpoint), and a replayed command must not write a lamp a second time.
    """

    kind = "lighting_circuit"
    FIELDS = {"on": Field(bool), "dim": Field(float, 0, 100)}
    READS_BACK = True

    def check_conditions(self) -> None:
        """The kind's alarm conditions, then ``lamps_failed`` when lamps fail that had not.

        The ``lamp_fault`` condition holds while any lamp has failed, so its
        alarm says nothing of a second lamp failing; dispatch needs each new
        failure (it joins the circuit's open intervention), and nothing when
        the set only shrinks (a lamp replaced). The event carries every failed
        lamp (``lamps``, numbered from 1), the new ones (``new``) and where the
        cabinet stands (``lat``, ``lon``).
        """
        super().check_conditions()
        reported = {k: v.value for k, v in self.twin.reported.items()}
        failed = failed_lamps(reported)
        before = set(self.state.get("failed_lamps") or ())
        if failed == before:
            return
        self.state["failed_lamps"] = sorted(failed)
        new = failed - before
        if new:
            eq = self.ctx.equipment
            self.ctx.emit("lamps_failed", lamps=",".join(map(str, sorted(failed))),
                          new=",".join(map(str, sorted(new))), count=len(failed),
                          lat=eq.lat, lon=eq.lon)

    @classmethod
    def reported_fields(cls, reported: Mapping[str, Any]) -> dict[str, Any]:
        """``on`` and ``dim`` as most of the circuit's lamps hold them."""
        out: dict[str, Any] = {}
        for name in cls.FIELDS:
            values = [v for v in block_values(reported, "lamp", name) if v is not None]
            if values:
                out[name] = Counter(values).most_common(1)[0][0]
        return out

    def pending_setpoints(self) -> dict[str, Any]:
        desired = {k: v for k, v in self.twin.desired.items() if k in self.FIELDS}
        reported = self.twin.reported.get("lamp")
        lamps = reported.value if reported is not None else None
        if not isinstance(lamps, list):
            return desired  # no reading of the lamps yet: the cabinet is asked in device_writes
        return {k: v for k, v in desired.items()
                if not all(isinstance(lamp, Mapping) and lamp_holds(lamp, k, v)
                           for lamp in lamps)}

    def current_lamps(self) -> list[Mapping[str, Any]] | None:
        """The lamps as the twin's reading shows them, when it shows every write made so far."""
        got = self.twin.reported.get("lamp")
        if (got is None or self.write_unsure or not got.source_ts > self.wrote_ts
                or got.quality is not Quality.GOOD or not isinstance(got.value, list)
                or not all(isinstance(x, Mapping) for x in got.value)):
            return None
        return got.value

    async def device_writes(self, port: DevicePort, setpoints: Mapping[str, Any]) -> dict[str, Any]:
        lamps = self.current_lamps() if port.online else None
        if lamps is None:
            # The reading is also the verdict on a cabinet not reached yet since the host
            # started: no need to wait for its first poll.
            try:
                reading = await port.read()
            except DeviceUnavailableError as exc:
                if port.online:
                    raise
                raise self.offline() from exc
            got = reading.get("lamp")
            if not isinstance(got, list) or not all(isinstance(x, Mapping) for x in got):
                raise ProtocolError(f"{self.ctx.id}: the cabinet's reading has no lamp block")
            lamps = got
            self.write_unsure = False
        broadcast = frozenset(name for name in setpoints
                              if port.policy(f"{BROADCAST}{name}") is not None)
        return lamp_writes(setpoints, lamps, broadcast=broadcast)


def failed_lamps(reported: Mapping[str, Any]) -> set[int]:
    """Numbers (from 1) of the lamps whose ``fault_bits`` say they failed.

    As :func:`block_values`, whether the cabinet reports its lamps as one list
    or one value per node (``lamp.3.fault_bits``).
    """
    whole = reported.get("lamp")
    if isinstance(whole, list):
        return {n for n, lamp in enumerate(whole, start=1)
                if isinstance(lamp, Mapping) and _lamp_failed(lamp.get("fault_bits"))}
    out: set[int] = set()
    for key, value in reported.items():
        parts = key.split(".")
        if (len(parts) == 3 and parts[0] == "lamp" and parts[2] == "fault_bits"
                and parts[1].isdigit() and _lamp_failed(value)):
            out.add(int(parts[1]))
    return out


def lamp_holds(lamp: Mapping[str, Any], name: str, want: Any) -> bool:
    """Whether one reported lamp holds the circuit setpoint ``name = want``."""
    got = lamp.get(name)
    if name == "dim":
        # The cabinet dims in whole percents (a u16 register): a write of 40.4 leaves 40.
        return (isinstance(got, int | float) and not isinstance(got, bool)
                and round(float(want)) == round(float(got)))
    return bool(got == want)


#: Prefix of a cabinet's registers that set one field of every lamp at once.
BROADCAST: Final = "broadcast_"


def lamp_writes(setpoints: Mapping[str, Any], lamps: Sequence[Mapping[str, Any]], *,
                broadcast: Collection[str] = ()) -> dict[str, Any]:
    """``{"lamp.3.dim": 40.0, …}``: each lamp (numbered from 1) and setpoint it does not hold.

    A setpoint named in ``broadcast`` that no lamp holds (of two lamps or more)
    is one write to the cabinet's broadcast register instead
    (``{"broadcast_dim": 40.0}``): it sets exactly the lamps that need it.
    """
    out: dict[str, Any] = {}
    for name, want in setpoints.items():
        lacking = [n for n, lamp in enumerate(lamps, start=1) if not lamp_holds(lamp, name, want)]
        if name in broadcast and len(lamps) > 1 and len(lacking) == len(lamps):
            out[f"{BROADCAST}{name}"] = want
        else:
            out.update((f"lamp.{n}.{name}", want) for n in lacking)
    return out
