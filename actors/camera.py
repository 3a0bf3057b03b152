"""A camera: its health, presets and motion."""

from __future__ import annotations

from actors.equipment import EquipmentEntity, Field


class Camera(EquipmentEntity):
    kind = "camera"
    FIELDS = {"preset": Field(int, 0, 255), "recording": Field(bool)}
