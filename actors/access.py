"""An access terminal: a retractable bollard of a pedestrian zone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.equipment import EquipmentEntity, Field


class AccessTerminal(EquipmentEntity):
    kind = "access_terminal"
    FIELDS = {"bollard": Field(str, choices=("up", "down"))}

    @classmethod
    def reported_fields(cls, reported: Mapping[str, Any]) -> dict[str, Any]:
        # A moving bollard is neither up nor down: no value until it stops.
        bollard = reported.get("bollard")
        return {"bollard": bollard} if bollard in ("up", "down") else {}

    def device_fields(self, clean: Mapping[str, Any]) -> dict[str, Any]:
        # The terminal takes a raise/lower request and reports the bollard's position.
        out = {k: v for k, v in clean.items() if k != "bollard"}
        if "bollard" in clean:
            out["request"] = "raise" if clean["bollard"] == "up" else "lower"
        return out
