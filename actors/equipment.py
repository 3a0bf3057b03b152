"""Equipment entities: the commands each kind accepts, validated, as twin setpoints.

Every command is an absolute setpoint (``dim = 40``, never ``+10``), so replaying
the journal after a restart can never act twice. A setpoint is validated
against the kind's field table, then recorded as desired state; the device
sessions that carry it to the field are owned by the host (``devices/``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from runtime.entity import Entity
from runtime.errors import RejectedError


@dataclass(frozen=True, slots=True)
class Field:
    """A writable field: its type and allowed values or range."""

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    max_len: int = 200

    def check(self, name: str, value: Any) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise RejectedError(f"{name} must be true or false", code="bad_value")
            return value
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RejectedError(f"{name} must be a number", code="bad_value")
            if self.type is int and not float(value).is_integer():
                raise RejectedError(f"{name} must be a whole number", code="bad_value")
            if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise RejectedError(f"{name}={value} is outside {self.low}..{self.high}",
                                    code="out_of_range")
            return int(value) if self.type is int else float(value)
        if not isinstance(value, str):
            raise RejectedError(f"{name} must be a string", code="bad_value")
        if self.choices and value not in self.choices:
            raise RejectedError(f"{name} must be one of {', '.join(self.choices)}",
                                code="out_of_range")
        if len(value) > self.max_len:
            raise RejectedError(f"{name} is longer than {self.max_len}", code="bad_value")
        return value


class EquipmentEntity(Entity):
    """Common behaviour: ``set`` writes absolute setpoints of the kind's fields."""

    FIELDS: ClassVar[Mapping[str, Field]] = {}

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action != "set":
            return await super().apply_command(action, params)
        if not params:
            raise RejectedError("set needs at least one field", code="bad_value")
        clean: dict[str, Any] = {}
        for name, value in params.items():
            spec = self.FIELDS.get(name)
            if spec is None:
                raise RejectedError(
                    f"{self.kind} has no writable field {name!r} "
                    f"(writable: {', '.join(sorted(self.FIELDS))})", code="unknown_field")
            clean[name] = spec.check(name, value)
        self.twin.desired.update(clean)
        self.ctx.emit("setpoint", **{f"desired.{k}": v for k, v in clean.items()})
        return {"desired": clean}


class Crossroad(EquipmentEntity):
    kind = "crossroad"
    FIELDS = {
        "plan": Field(int, 1, 32),
        "mode": Field(str, choices=("auto", "manual", "flashing", "off")),
    }


class LightingCircuit(EquipmentEntity):
    kind = "lighting_circuit"
    FIELDS = {"on": Field(bool), "dim": Field(float, 0, 100)}


class Building(EquipmentEntity):
    kind = "building"
    FIELDS = {"mode": Field(str, choices=("occupied", "unoccupied", "lockdown"))}


class Camera(EquipmentEntity):
    kind = "camera"
    FIELDS = {"preset": Field(int, 0, 255), "recording": Field(bool)}


class Vehicle(EquipmentEntity):
    kind = "vehicle"
    FIELDS = {"message": Field(str, max_len=200)}


class AccessTerminal(EquipmentEntity):
    kind = "access_terminal"
    FIELDS = {"bollard": Field(str, choices=("up", "down"))}
