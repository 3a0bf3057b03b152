"""A crossroad: its traffic controller's signal plan and mode."""

from __future__ import annotations

from actors.equipment import EquipmentEntity, Field


class Crossroad(EquipmentEntity):
    kind = "crossroad"
    FIELDS = {
        "plan": Field(int, 1, 32),
        "mode": Field(str, choices=("auto", "manual", "flashing", "off")),
    }
