"""Fault drills: the same behaviours, plus a message that makes an entity crash.

Chaos runs and the test suite start hosts with ``actors.drill:factory_for``
instead of ``actors.registry:factory_for`` to exercise supervision with real
crashes; production never loads this factory.
"""

from __future__ import annotations

from typing import cast

from actors.registry import factory_for as registry_factory
from runtime.cell import EntityFactory
from runtime.entity import Entity
from runtime.envelope import Envelope
from runtime.inventory import Equipment


class DrillError(RuntimeError):
    """The crash a drill asked for."""


_CLASSES: dict[type[Entity], type[Entity]] = {}


def _drill_class(base: type[Entity]) -> type[Entity]:
    known = _CLASSES.get(base)
    if known is not None:
        return known

    async def on_drill_crash(self: Entity, msg: Envelope) -> None:
        raise DrillError(f"drill crash of {self.ctx.id}")

    cls = type(f"Drill{base.__name__}", (base,), {"on_drill_crash": on_drill_crash})
    _CLASSES[base] = cls
    return cls


def factory_for(eq: Equipment) -> EntityFactory:
    """The kind's behaviour with a ``drill_crash`` message that raises (coordinators too)."""
    return _drill_class(cast(type[Entity], registry_factory(eq)))
