"""Which behaviour runs each kind of equipment (the hosts' entity factory)."""

from __future__ import annotations

from actors.access import AccessTerminal
from actors.building import Building
from actors.camera import Camera
from actors.crossroad import Crossroad
from actors.equipment import EquipmentEntity
from actors.lighting import LightingCircuit
from actors.vehicle import Vehicle
from runtime.cell import EntityFactory
from runtime.datafile import KeyPath
from runtime.errors import ConfigError
from runtime.inventory import COORDINATOR, PRIORITY_PREFIX, Equipment

BEHAVIOURS: dict[str, type[EquipmentEntity]] = {
    cls.kind: cls
    for cls in (Crossroad, LightingCircuit, Building, Camera, Vehicle, AccessTerminal)
}


def check_record(eq: Equipment) -> list[tuple[KeyPath, str]]:
    """What the behaviour of ``eq``'s kind finds wrong in its inventory record
    (:meth:`runtime.entity.Entity.check_record`), for :func:`runtime.inventory.load_inventory`."""
    behaviour = BEHAVIOURS.get(eq.kind)
    return [] if behaviour is None else behaviour.check_record(eq)


def factory_for(eq: Equipment) -> EntityFactory:
    """The entity class of ``eq``'s kind, or of the coordinator it is.

    Classes are factories of their instances.
    """
    if eq.kind == COORDINATOR and eq.id.startswith(PRIORITY_PREFIX):
        from actors.priority.pool import PoolMember

        return PoolMember
    if eq.kind == COORDINATOR:
        from actors.control import COORDINATORS

        try:
            return COORDINATORS[eq.id]
        except KeyError as exc:
            raise ConfigError(f"no coordinator {eq.id!r} (known: "
                              f"{', '.join(sorted(COORDINATORS))})") from exc
    try:
        return BEHAVIOURS[eq.kind]
    except KeyError as exc:
        raise ConfigError(f"no behaviour for kind {eq.kind!r}") from exc
