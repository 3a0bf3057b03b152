"""A camera: its health, presets by name, and motion near the building it watches.

Health → alarms (:data:`actors.equipment.CONDITIONS` and this module):

* online: ``device_offline`` (every kind);
* recording: ``camera_not_recording`` while the camera reports it does not record
  and no operator asked it to stop (``recording = false`` desired);
* tamper: ``camera_tamper`` (a momentary device event);
* storage fill: ``camera_storage_full`` at :data:`STORAGE_FULL_PCT` % and above;
* ``camera_fault`` while it reports its health ``failed``.

PTZ presets by name: ``set {"preset": "fire"}`` is the camera's own number for
that name (``attrs.presets``), resolved at the edge (:meth:`Camera.validate_command_for`,
422 for a name it does not have) and again when the command is applied (a
plan journals the name: each camera has its own number).

A ``motion`` event of a camera that watches a building (``attrs.watches``)
carries ``watches``, so that the alarms coordinator can join it to an
intrusion alarm of that building: one incident with both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from actors.equipment import CAMERA_STORAGE_FULL_PCT, EquipmentEntity, Field
from runtime.commands import shown
from runtime.entity import Checkpoint
from runtime.envelope import Envelope
from runtime.errors import InvalidCommandError, MalformedMessageError, RejectedError
from runtime.inventory import NAME_PATTERN, Equipment

__all__ = ["STORAGE_FULL_PCT", "Camera", "resolve_preset"]

#: Storage fill (percent) from which the camera's recordings are at risk.
STORAGE_FULL_PCT: Final = CAMERA_STORAGE_FULL_PCT


def resolve_preset(equipment: Equipment, name: str) -> int:
    """The camera's own number of preset ``name``; :class:`InvalidCommandError` if none."""
    presets = equipment.attrs.get("presets")
    known = presets if isinstance(presets, Mapping) else {}
    if name not in known:
        raise InvalidCommandError(
            f"{equipment.id} has no preset {shown(name)} (presets: "
            f"{', '.join(sorted(known)) or 'none'})", field="params.preset",
            code="unknown_preset")
    return int(known[name])


class Camera(EquipmentEntity):
    """A video-protection camera (module doc)."""

    kind = "camera"
    FIELDS = {"preset": Field(int, 0, 255), "recording": Field(bool)}

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        # Not recording is an alarm only when nobody asked the camera to stop.
        self._conditions = {
            **self._conditions,
            "camera_not_recording": lambda r: (r.get("recording") is False
                                               and self.twin.desired.get("recording")
                                               is not False),
        }

    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """As every kind's ``set``, and ``preset`` may be a preset's name (kept as a name)."""
        name = params.get("preset") if isinstance(params, Mapping) else None
        if not isinstance(name, str):
            return super().validate_command(action, params)
        if not NAME_PATTERN.match(name):
            raise InvalidCommandError(f"preset {shown(name)} is not a preset name",
                                      field="params.preset", code="bad_value")
        rest = {k: v for k, v in params.items() if k != "preset"}
        clean = super().validate_command(action, rest) if rest else {}
        return {**clean, "preset": name}

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """``set`` of ``preset`` (a number, or one of the camera's preset names) and
        ``recording``."""
        forms = super().describe_commands(equipment)
        presets = equipment.attrs.get("presets")
        if isinstance(presets, Mapping) and presets:
            for form in forms:
                form["params"]["preset"]["names"] = {str(k): int(v) for k, v in
                                                     sorted(presets.items())}
        return forms

    @classmethod
    def validate_command_for(cls, equipment: Equipment, action: str,
                             params: Mapping[str, Any], *, now: float) -> dict[str, Any]:
        """As :meth:`validate_command`, with a preset's name as this camera's number."""
        clean = cls.validate_command(action, params)
        if isinstance(clean.get("preset"), str):
            clean["preset"] = resolve_preset(equipment, clean["preset"])
        return clean

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        try:
            clean = self.validate_command_for(self.ctx.equipment, action, params,
                                              now=self.ctx.clock.time())
        except InvalidCommandError as exc:
            raise RejectedError(str(exc), code=exc.code) from None
        return await super().apply_command(action, clean)

    async def on_device_event(self, msg: Envelope) -> None:
        p = msg.payload if isinstance(msg.payload, Mapping) else {}
        watched = self.ctx.equipment.attrs.get("watches")
        if p.get("event") != "motion" or not isinstance(watched, str):
            await super().on_device_event(msg)
            return
        fields = p.get("fields") if isinstance(p.get("fields"), Mapping) else {}
        if not isinstance(fields, Mapping):
            raise MalformedMessageError("device event fields must be a mapping")
        self.ctx.emit("device_event", device_event="motion", watches=watched,
                      **{f"field.{k}": v for k, v in fields.items()})
