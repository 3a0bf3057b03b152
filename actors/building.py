"""A building: its BMS (fire, intrusion, doors)."""

from __future__ import annotations

from actors.equipment import EquipmentEntity, Field


class Building(EquipmentEntity):
    kind = "building"
    FIELDS = {"mode": Field(str, choices=("occupied", "unoccupied", "lockdown"))}
