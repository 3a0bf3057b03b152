"""Fault drills: the same behaviours, plus a message that makes an entity crash.

Chaos runs and the test suite start hosts with ``actors.drill:factory_for``
instead of ``actors.registry:factory_for`` to exercise supervision with real
crashes; production never loads this factory.
"""

from __future__ import annotations

from actors.equipment import EquipmentEntity
from actors.registry import BEHAVIOURS
from runtime.cell import EntityFactory
from runtime.envelope import Envelope
from runtime.inventory import Equipment


class DrillError(RuntimeError):
    """The crash a drill asked for."""


_CLASSES: dict[str, type[EquipmentEntity]] = {}


def _drill_class(base: type[EquipmentEntity]) -> type[EquipmentEntity]:
    known = _CLASSES.get(base.kind)
    if known is not None:
        return known

    async def on_drill_crash(self: EquipmentEntity, msg: Envelope) -> None:
        raise DrillError(f"drill crash of {self.ctx.id}")

    cls = type(f"Drill{base.__name__}", (base,), {"on_drill_crash": on_drill_crash})
    _CLASSES[base.kind] = cls
    return cls


def factory_for(eq: Equipment) -> EntityFactory:
    """The kind's behaviour with a ``drill_crash`` message that raises."""
    return _drill_class(BEHAVIOURS[eq.kind])
