"""Which behaviour runs each kind of equipment (the hosts' entity factory)."""

from __future__ import annotations

from actors.equipment import (
    AccessTerminal,
    Building,
    Camera,
    Crossroad,
    EquipmentEntity,
    LightingCircuit,
    Vehicle,
)
from runtime.cell import EntityFactory
from runtime.errors import ConfigError
from runtime.inventory import Equipment

BEHAVIOURS: dict[str, type[EquipmentEntity]] = {
    cls.kind: cls
    for cls in (Crossroad, LightingCircuit, Building, Camera, Vehicle, AccessTerminal)
}


def factory_for(eq: Equipment) -> EntityFactory:
    """The entity class of ``eq``'s kind (classes are factories of their instances)."""
    try:
        return BEHAVIOURS[eq.kind]
    except KeyError as exc:
        raise ConfigError(f"no behaviour for kind {eq.kind!r}") from exc
