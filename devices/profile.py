"""Device profiles: where each value of a field device lives and how it is encoded.

A profile is a TOML file (``devices/profiles/NAME.toml``) read by both the
runtime's entities and the simulators, so moving a register or a node id in
the file moves it for both::

    [profile]
    name = "lighting_cabinet"
    protocol = "modbus"
    poll_interval_s = 1.0

    [[field]]
    name = "mains_ok"
    address = 0
    type = "bool"

    [[block]]
    name = "lamp"
    base = 100
    stride = 8
    count = 30
    count_attr = "points"
      [[block.field]]
      name = "dim"
      address = 1
      type = "u16"
      writable = true
      reconcile = "reapply"

:func:`load_profile` checks the whole file and reports every problem at once:
:class:`~runtime.errors.ConfigError` carries one ``"{file}:{line}: {field}: {message}"``
line per issue, ``field`` being a path such as ``block[0].field[2].type``.

Modbus encoding: ``bool`` is 0/1, ``u16``/``i16`` one register (two's complement),
``u32``/``i32`` two registers high word first; the engineering value is
``raw * scale``; a field with ``choices`` maps raw value ``i`` to ``choices[i]``.

A writable field names its ``reconcile`` policy (:data:`RECONCILE`): ``reapply``
(a setpoint the device must hold again after a reconnect), ``alarm`` (an
operator decides) or ``never`` (a transient command, such as a signal priority
request, that a restart must never send again). A block repeat whose fields
make one command is written whole in one request (:meth:`Profile.encode_block`).
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from runtime.datafile import Checker, KeyPath, parse_toml, read_text, shown, type_name
from runtime.errors import ConfigError, DataFileError, ProtocolError, RejectedError

__all__ = [
    "FIELD_TYPES",
    "PROTOCOLS",
    "PROTOCOL_TYPES",
    "RECONCILE",
    "BlockSpec",
    "FieldSpec",
    "Profile",
    "builtin_names",
    "builtin_profile",
    "load_profile",
    "parse_profile",
]

PROTOCOLS: Final = ("modbus", "opcua", "mqtt")
FIELD_TYPES: Final = ("bool", "u16", "i16", "u32", "i32", "float", "str")
#: What a writable field's desired value becomes when a device comes back (reconnect,
#: restart): ``reapply`` writes it again, ``alarm`` asks an operator, ``never`` marks a
#: transient command register (a priority request) that is never kept as desired, never
#: reconciled and never written again.
RECONCILE: Final = ("reapply", "alarm", "never")
#: Which field types each protocol can carry.
PROTOCOL_TYPES: Final[Mapping[str, tuple[str, ...]]] = {
    "modbus": ("bool", "u16", "i16", "u32", "i32"),
    "opcua": ("bool", "i32", "u32", "float", "str"),
    "mqtt": ("bool", "i32", "float", "str"),
}
_INT_TYPES: Final = ("u16", "i16", "u32", "i32")
#: Raw (register) range of each Modbus integer type.
_RAW_RANGE: Final[Mapping[str, tuple[int, int]]] = {
    "bool": (0, 1),
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
}
_MAX_ADDRESS: Final = 0xFFFF
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_MAX_PAYLOAD_BYTES: Final = 4096


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One value of a device: a register (modbus), a node (opcua) or a payload key (mqtt).

    ``line`` is where its ``[[field]]`` header stands in the profile file (0 when
    built in code).
    """

    name: str
    type: str
    address: int | None = None
    node: str | None = None
    key: str | None = None
    scale: float = 1.0
    unit: str = ""
    writable: bool = False
    reconcile: str | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    line: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"field name {self.name!r} does not match {_NAME_RE.pattern}")
        what = f"field {self.name!r}"
        if self.type not in FIELD_TYPES:
            raise ConfigError(f"{what}: unknown type {self.type!r}")
        if self.address is not None and (
            not _is_int(self.address) or not 0 <= self.address <= _MAX_ADDRESS
        ):
            raise ConfigError(f"{what}: address {self.address!r} outside [0, {_MAX_ADDRESS}]")
        if not _is_number(self.scale) or self.scale == 0 or not math.isfinite(self.scale):
            raise ConfigError(f"{what}: scale must be a finite non-zero number")
        object.__setattr__(self, "scale", float(self.scale))
        if self.writable and self.reconcile not in RECONCILE:
            raise ConfigError(f"{what}: a writable field needs reconcile in {RECONCILE}")
        if not self.writable and self.reconcile is not None:
            raise ConfigError(f"{what}: reconcile is only for writable fields")
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is not None:
                if not _is_number(value):
                    raise ConfigError(f"{what}: {bound} must be a number")
                object.__setattr__(self, bound, float(value))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"{what}: min {self.min:g} > max {self.max:g}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.choices:
            if self.type not in ("str", *_INT_TYPES):
                raise ConfigError(f"{what}: choices need a str or integer type")
            if len(set(self.choices)) != len(self.choices) or not all(
                isinstance(c, str) and c for c in self.choices
            ):
                raise ConfigError(f"{what}: choices must be distinct non-empty strings")
        if self.key is None:
            object.__setattr__(self, "key", self.name)

    @property
    def width(self) -> int:
        """Registers used on Modbus: 2 for ``u32``/``i32``, else 1."""
        return 2 if self.type in ("u32", "i32") else 1

    # -- modbus codec

    def decode(self, regs: Sequence[int]) -> Any:
        """Engineering value of this field from its ``width`` registers."""
        if len(regs) < self.width:
            raise ProtocolError(f"field {self.name!r}: {len(regs)} registers, need {self.width}")
        if self.width == 2:
            raw = ((regs[0] & 0xFFFF) << 16) | (regs[1] & 0xFFFF)
            if self.type == "i32" and raw >= 0x8000_0000:
                raw -= 0x1_0000_0000
        else:
            raw = regs[0] & 0xFFFF
            if self.type == "i16" and raw >= 0x8000:
                raw -= 0x1_0000
        if self.type == "bool":
            return raw != 0
        if self.choices:
            if not 0 <= raw < len(self.choices):
                raise ProtocolError(
                    f"field {self.name!r}: raw value {raw} is not one of "
                    f"{len(self.choices)} choices"
                )
            return self.choices[raw]
        if self.scale == 1.0:
            return raw
        return raw * self.scale

    def encode(self, value: Any) -> list[int]:
        """Registers for a write of ``value`` (engineering units), after checking it.

        Raises :class:`RejectedError` with ``code="bad_value"`` (wrong type, unknown
        choice) or ``code="out_of_range"`` (outside ``min``/``max`` or the type).
        """
        if self.type not in _RAW_RANGE:
            raise ConfigError(f"field {self.name!r}: type {self.type} has no register encoding")
        raw: int
        if self.type == "bool":
            if isinstance(value, bool) or value in (0, 1):
                raw = int(value)
            else:
                raise RejectedError(f"{self.name}: expected a boolean, got {value!r}", "bad_value")
        elif self.choices and isinstance(value, str):
            if value not in self.choices:
                raise RejectedError(
                    f"{self.name}: {value!r} is not one of {', '.join(self.choices)}", "bad_value"
                )
            raw = self.choices.index(value)
        elif self.choices:
            if not _is_int(value) or not 0 <= value < len(self.choices):
                raise RejectedError(
                    f"{self.name}: {value!r} is not one of {', '.join(self.choices)}", "bad_value"
                )
            raw = value
        else:
            if not _is_number(value) or not math.isfinite(value):
                raise RejectedError(f"{self.name}: expected a number, got {value!r}", "bad_value")
            if (self.min is not None and value < self.min) or (
                self.max is not None and value > self.max
            ):
                raise RejectedError(
                    f"{self.name}: {value!r} outside [{_bound(self.min)}, {_bound(self.max)}]",
                    "out_of_range",
                )
            raw = round(value / self.scale)
        low, high = _RAW_RANGE[self.type]
        if not low <= raw <= high:
            raise RejectedError(
                f"{self.name}: raw value {raw} does not fit {self.type}", "out_of_range"
            )
        if self.width == 2:
            unsigned = raw & 0xFFFF_FFFF
            return [unsigned >> 16, unsigned & 0xFFFF]
        return [raw & 0xFFFF]


def _bound(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """A repeated group of fields: the lamps of a cabinet, the zones of a building.

    Field addresses are offsets inside one repeat; repeat ``i`` starts at
    ``base + i * stride``.
    """

    name: str
    base: int | None
    stride: int | None
    count: int
    count_attr: str | None
    fields: tuple[FieldSpec, ...]
    line: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"block name {self.name!r} does not match {_NAME_RE.pattern}")
        what = f"block {self.name!r}"
        if not _is_int(self.count) or self.count < 0:
            raise ConfigError(f"{what}: count must be a non-negative integer")
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise ConfigError(f"{what}: needs at least one field")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ConfigError(f"{what}: duplicate field names")
        if self.stride is not None and (not _is_int(self.stride) or self.stride < 1):
            raise ConfigError(f"{what}: stride must be a positive integer")

    def field(self, name: str) -> FieldSpec:
        """The field ``name`` of one repeat; :class:`KeyError` if absent."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated device profile (see the module docstring for the file format)."""

    name: str
    protocol: str
    description: str
    poll_interval_s: float
    liveness_misses: int
    timeout_s: float
    max_payload_bytes: int
    fields: tuple[FieldSpec, ...]
    blocks: tuple[BlockSpec, ...]
    events: tuple[str, ...]
    source: str = "<memory>"
    #: How old (seconds since the sample's own ``ts``) a reading may be and still be used;
    #: 0: no limit. Publications keep the machine's cadence, so on an accelerated city
    #: clock the age is judged in the machine's seconds (see :mod:`actors.vehicle`).
    max_age_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"profile name {self.name!r} does not match {_NAME_RE.pattern}")
        what = f"profile {self.name!r}"
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{what}: unknown protocol {self.protocol!r}")
        for attr in ("poll_interval_s", "timeout_s"):
            value = getattr(self, attr)
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{what}: {attr} must be a positive number")
            object.__setattr__(self, attr, float(value))
        for attr in ("liveness_misses", "max_payload_bytes"):
            value = getattr(self, attr)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{what}: {attr} must be a positive integer")
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "events", tuple(self.events))
        if not _is_number(self.max_age_s) or not (self.max_age_s >= 0
                                                  and math.isfinite(self.max_age_s)):
            raise ConfigError(f"{what}: max_age_s must be a number >= 0 (0: no limit)")
        object.__setattr__(self, "max_age_s", float(self.max_age_s))
        names = [f.name for f in self.fields] + [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise ConfigError(f"{what}: duplicate field or block names")
        allowed = PROTOCOL_TYPES[self.protocol]
        for spec in (*self.fields, *(f for b in self.blocks for f in b.fields)):
            if spec.type not in allowed:
                raise ConfigError(
                    f"{what}: field {spec.name!r}: {self.protocol} has no {spec.type}"
                )
            if self.protocol == "modbus" and spec.address is None:
                raise ConfigError(f"{what}: field {spec.name!r} needs an address")
            if self.protocol == "opcua" and not spec.node:
                raise ConfigError(f"{what}: field {spec.name!r} needs a node")
        if self.protocol == "modbus":
            for block in self.blocks:
                if block.base is None or block.stride is None:
                    raise ConfigError(f"{what}: block {block.name!r} needs base and stride")

    def field(self, name: str) -> FieldSpec:
        """The top-level field ``name``; :class:`KeyError` if absent."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def block(self, name: str) -> BlockSpec:
        """The block ``name``; :class:`KeyError` if absent."""
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(name)

    def writable(self) -> dict[str, FieldSpec]:
        """Top-level writable fields by name."""
        return {f.name: f for f in self.fields if f.writable}

    def count(self, block: str, attrs: Mapping[str, Any]) -> int:
        """Repeats of ``block`` for equipment with ``attrs``: its ``count_attr``, else ``count``."""
        spec = self.block(block)
        if spec.count_attr is None or spec.count_attr not in attrs:
            return spec.count
        value = attrs[spec.count_attr]
        if not _is_int(value) or value < 0:
            raise ConfigError(
                f"{self.source}: block {block!r}: attrs.{spec.count_attr} must be a "
                f"non-negative integer, got {value!r}"
            )
        assert isinstance(value, int)
        return value

    # -- modbus helpers

    def _need_modbus(self) -> None:
        if self.protocol != "modbus":
            raise ConfigError(f"profile {self.name!r} is {self.protocol}, not modbus")

    def register_span(self, attrs: Mapping[str, Any]) -> tuple[int, int]:
        """``(first address, count)`` covering every field and block repeat."""
        self._need_modbus()
        first, end = _MAX_ADDRESS + 1, 0
        for spec in self.fields:
            assert spec.address is not None
            first = min(first, spec.address)
            end = max(end, spec.address + spec.width)
        for block in self.blocks:
            repeats = self.count(block.name, attrs)
            if repeats == 0:
                continue
            assert block.base is not None and block.stride is not None
            low = min(_addr(f) for f in block.fields)
            high = max(_addr(f) + f.width for f in block.fields)
            first = min(first, block.base + low)
            end = max(end, block.base + (repeats - 1) * block.stride + high)
        if end == 0:
            raise ConfigError(f"profile {self.name!r} has no registers")
        if end > _MAX_ADDRESS + 1:
            raise ConfigError(f"profile {self.name!r}: registers run past {_MAX_ADDRESS}")
        return first, end - first

    def decode_registers(
        self, start: int, regs: Sequence[int], attrs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Every field and block repeat in engineering units from registers read at ``start``.

        ``{"mains_ok": True, ..., "lamp": [{"on": True, "dim": 40, ...}, ...]}``;
        :class:`ProtocolError` if ``regs`` does not cover them all.
        """
        self._need_modbus()
        counts = tuple(self.count(b.name, attrs) for b in self.blocks)
        fields, blocks, end = _decode_plan(self, start, counts)
        if end > len(regs):
            raise ProtocolError(
                f"profile {self.name!r}: fields up to register {start + end - 1} are outside "
                f"the {len(regs)} registers read at {start}"
            )
        out: dict[str, Any] = {name: decode(regs, offset) for name, offset, decode in fields}
        for block_name, repeats in blocks:
            out[block_name] = [{name: decode(regs, base + offset) for name, offset, decode in rep}
                               for base, rep in repeats]
        return out

    def encode_field(self, name: str, value: Any) -> tuple[int, list[int]]:
        """``(address, registers)`` writing ``value`` to the top-level field ``name``.

        :class:`RejectedError` codes: ``unknown_field``, ``read_only``, ``bad_value``,
        ``out_of_range``.
        """
        self._need_modbus()
        try:
            spec = self.field(name)
        except KeyError:
            raise RejectedError(f"{self.name} has no field {name!r}", "unknown_field") from None
        if not spec.writable:
            raise RejectedError(f"{self.name}.{name} is read-only", "read_only")
        return _addr(spec), spec.encode(value)

    def encode_block_field(
        self, block: str, index: int, name: str, value: Any
    ) -> tuple[int, list[int]]:
        """``(address, registers)`` writing ``value`` to field ``name`` of repeat ``index``.

        ``index`` counts from 0, like the list :meth:`decode_registers` returns.
        """
        self._need_modbus()
        try:
            spec = self.block(block)
            item = spec.field(name)
        except KeyError:
            raise RejectedError(
                f"{self.name} has no field {block}.{name}", "unknown_field"
            ) from None
        if not item.writable:
            raise RejectedError(f"{self.name}.{block}.{name} is read-only", "read_only")
        assert spec.base is not None and spec.stride is not None
        address = spec.base + index * spec.stride + _addr(item) if _is_int(index) else -1
        if index < 0 or address + item.width > _MAX_ADDRESS + 1:
            raise RejectedError(f"{self.name}.{block}: no repeat {index!r}", "out_of_range")
        return address, item.encode(value)

    def encode_block(
        self, block: str, index: int, values: Mapping[str, Any]
    ) -> tuple[int, list[int]]:
        """``(address, registers)`` writing repeat ``index`` of ``block`` whole, in one request.

        ``values`` names every field of the repeat, and the fields must lie back to
        back: a device that judges the repeat as one command (a priority request, a
        plan table slot) gets it in one write. :class:`RejectedError` codes as
        :meth:`encode_block_field`, and ``bad_value`` for a field missing or unknown.
        """
        self._need_modbus()
        try:
            spec = self.block(block)
        except KeyError:
            raise RejectedError(f"{self.name} has no block {block!r}", "unknown_field") from None
        names = {f.name for f in spec.fields}
        if set(values) != names:
            missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
            raise RejectedError(
                f"{self.name}.{block} is written whole: "
                + "; ".join(part for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "") if part),
                "bad_value")
        ranges = sorted(self.encode_block_field(block, index, f.name, values[f.name])
                        for f in spec.fields)
        address, regs = ranges[0][0], list(ranges[0][1])
        for at, raw in ranges[1:]:
            if at != address + len(regs):
                raise ConfigError(f"{self.source}: block {block!r}: its fields leave a gap at "
                                  f"register {address + len(regs)}: it cannot be written whole")
            regs.extend(raw)
        return address, regs


_Decode = Callable[[Sequence[int], int], Any]
_Plan = tuple[
    tuple[tuple[str, int, _Decode], ...],
    tuple[tuple[str, tuple[tuple[int, tuple[tuple[str, int, _Decode], ...]], ...]], ...],
    int,
]


def _register_decoder(spec: FieldSpec) -> _Decode:
    """``decode(regs, offset)``: :meth:`FieldSpec.decode` without slicing, for hot polls."""
    if spec.width == 2 or spec.choices or spec.type == "i16":
        width = spec.width
        return lambda regs, offset: spec.decode(regs[offset : offset + width])
    if spec.type == "bool":
        return lambda regs, offset: (regs[offset] & 0xFFFF) != 0
    scale = spec.scale
    if scale == 1.0:
        return lambda regs, offset: regs[offset] & 0xFFFF
    return lambda regs, offset: (regs[offset] & 0xFFFF) * scale


@functools.lru_cache(maxsize=256)
def _decode_plan(profile: Profile, start: int, counts: tuple[int, ...]) -> _Plan:
    """Offsets and decoders of every field of a read at ``start`` (cached per layout)."""
    end = 0
    fields = []
    for spec in profile.fields:
        offset = _addr(spec) - start
        if offset < 0:
            raise ProtocolError(f"profile {profile.name!r}: field {spec.name!r} is before "
                                f"the registers read at {start}")
        fields.append((spec.name, offset, _register_decoder(spec)))
        end = max(end, offset + spec.width)
    blocks = []
    for block, count in zip(profile.blocks, counts, strict=True):
        assert block.base is not None and block.stride is not None
        rep = tuple((spec.name, _addr(spec), _register_decoder(spec)) for spec in block.fields)
        repeats = []
        for i in range(count):
            base = block.base + i * block.stride - start
            if base < 0:
                raise ProtocolError(f"profile {profile.name!r}: block {block.name!r} is "
                                    f"before the registers read at {start}")
            repeats.append((base, rep))
            end = max(end, base + max((_addr(f) + f.width for f in block.fields), default=0))
        blocks.append((block.name, tuple(repeats)))
    return tuple(fields), tuple(blocks), end


def _addr(spec: FieldSpec) -> int:
    if spec.address is None:
        raise ConfigError(f"field {spec.name!r} has no address")
    return spec.address


# --------------------------------------------------------------------------- loading


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a profile file; :class:`ConfigError` lists every issue, one a line."""
    return parse_profile(read_text(path), os.fspath(path))


def parse_profile(text: str, source: str) -> Profile:
    """Validate profile TOML ``text`` (``source`` names it in messages) into a :class:`Profile`."""
    return _Parser(text, source, parse_toml(text, source)).run()


_PROFILES_DIR: Final = "profiles"


def builtin_names() -> tuple[str, ...]:
    """Names of the profiles shipped in ``devices/profiles``, sorted."""
    folder = importlib.resources.files("devices").joinpath(_PROFILES_DIR)
    return tuple(
        sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))
    )


@functools.cache
def builtin_profile(name: str) -> Profile:
    """The shipped profile ``name`` (cached); :class:`ConfigError` if there is none."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"bad profile name {name!r}")
    resource = importlib.resources.files("devices").joinpath(_PROFILES_DIR, f"{name}.toml")
    if not resource.is_file():
        raise ConfigError(
            f"unknown profile {name!r} (expected one of {', '.join(builtin_names())})"
        )
    text = resource.read_text(encoding="utf-8")
    return parse_profile(text, f"devices/profiles/{name}.toml")



_TOP_KEYS: Final = ("profile", "field", "block")
_PROFILE_KEYS: Final = (
    "name",
    "protocol",
    "description",
    "poll_interval_s",
    "liveness_misses",
    "timeout_s",
    "max_payload_bytes",
    "events",
    "max_age_s",
)
_FIELD_KEYS: Final = (
    "name",
    "type",
    "address",
    "node",
    "key",
    "scale",
    "unit",
    "writable",
    "reconcile",
    "min",
    "max",
    "choices",
    "required",
)
_BLOCK_KEYS: Final = ("name", "base", "stride", "count", "count_attr", "field")
_DEFAULTS: Final[Mapping[str, Any]] = {
    "description": "",
    "poll_interval_s": 1.0,
    "liveness_misses": 3,
    "timeout_s": 0.5,
    "max_payload_bytes": DEFAULT_MAX_PAYLOAD_BYTES,
    "max_age_s": 0.0,
}


class _Parser(Checker):
    """One validation pass over a parsed profile document, collecting issues."""

    def __init__(self, text: str, source: str, doc: dict[str, Any]) -> None:
        super().__init__(text, source, doc)
        self._protocol: str | None = None

    def _get(
        self, table: Mapping[str, Any], path: KeyPath, key: str, kind: str, required: bool
    ) -> Any:
        """``table[key]`` if it has the expected ``kind``; ``None`` after reporting otherwise."""
        if key not in table:
            if required:
                self._issue((*path, key), "required field missing", at=path)
            return None
        value = table[key]
        ok = {
            "str": isinstance(value, str),
            "int": _is_int(value),
            "number": _is_number(value) and math.isfinite(value),
            "bool": isinstance(value, bool),
            "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[kind]
        if not ok:
            expected = {
                "str": "a string",
                "int": "an integer",
                "number": "a number",
                "bool": "a boolean",
                "strings": "an array of strings",
            }[kind]
            self._issue(
                (*path, key), f"expected {expected}, got {type_name(value)} {shown(value)}"
            )
            return None
        return value

    def _array(
        self, table: Mapping[str, Any], path: KeyPath, key: str
    ) -> list[tuple[KeyPath, Any]]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self._issue((*path, key), f"expected [[{key}]] tables, got {type_name(value)}")
            return []
        return [((*path, key, i), item) for i, item in enumerate(value)]

    def run(self) -> Profile:
        self._keys(self._doc, (), _TOP_KEYS)
        header = self._header()
        fields = self._fields(self._array(self._doc, (), "field"), top=True)
        blocks = self._blocks()
        self._names(fields, blocks)
        if self._protocol == "modbus":
            self._overlaps(fields, blocks)
        if not any(f.name == "seq" for _, f in fields) and header is not None:
            self._issue(("profile",), "every profile needs a 'seq' field")
        if not self._issues and header is not None:
            try:
                return Profile(
                    **header,
                    fields=tuple(f for _, f in fields),
                    blocks=tuple(b for _, b in blocks),
                    source=self._source,
                )
            except ConfigError as exc:
                self._issue(("profile",), str(exc))
        if not self._issues:
            self._issue(("profile",), "profile could not be built")
        raise DataFileError(self.issue_lines())

    def _header(self) -> dict[str, Any] | None:
        path: KeyPath = ("profile",)
        table = self._doc.get("profile")
        if not isinstance(table, dict):
            self._issue(path, "required table [profile] missing")
            return None
        self._keys(table, path, _PROFILE_KEYS)
        before = len(self._issues)
        out: dict[str, Any] = dict(_DEFAULTS)
        name = self._get(table, path, "name", "str", True)
        if name is not None and not _NAME_RE.match(name):
            self._issue((*path, "name"), f"{name!r} does not match {_NAME_RE.pattern}")
        out["name"] = name
        protocol = self._get(table, path, "protocol", "str", True)
        if protocol is not None and protocol not in PROTOCOLS:
            self._issue(
                (*path, "protocol"),
                f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})",
            )
            protocol = None
        self._protocol = protocol
        out["protocol"] = protocol
        description = self._get(table, path, "description", "str", False)
        if description is not None:
            out["description"] = description
        value = self._get(table, path, "max_age_s", "number", False)
        if value is not None:
            if not value > 0:
                self._issue((*path, "max_age_s"), f"must be > 0, got {value!r}")
            out["max_age_s"] = float(value)
        for key in ("poll_interval_s", "timeout_s"):
            value = self._get(table, path, key, "number", False)
            if value is not None:
                if value <= 0:
                    self._issue((*path, key), f"must be > 0, got {value!r}")
                out[key] = float(value)
        for key in ("liveness_misses", "max_payload_bytes"):
            value = self._get(table, path, key, "int", False)
            if value is not None:
                if value < 1:
                    self._issue((*path, key), f"must be >= 1, got {value!r}")
                out[key] = value
        events = self._get(table, path, "events", "strings", False)
        out["events"] = tuple(events or ())
        if events is not None and len(set(events)) != len(events):
            self._issue((*path, "events"), "duplicate event names")
        if len(self._issues) > before or name is None or protocol is None:
            return None
        return out

    def _fields(
        self, items: list[tuple[KeyPath, Any]], *, top: bool
    ) -> list[tuple[KeyPath, FieldSpec]]:
        out: list[tuple[KeyPath, FieldSpec]] = []
        seen: dict[str, KeyPath] = {}
        for path, table in items:
            spec = self._field(path, table, top=top)
            if spec is None:
                continue
            if spec.name in seen:
                self._issue(
                    (*path, "name"),
                    f"duplicate field name {spec.name!r} "
                    f"(first at line {self._where.line(seen[spec.name])})",
                )
                continue
            seen[spec.name] = path
            out.append((path, spec))
        return out

    def _field(self, path: KeyPath, table: Mapping[str, Any], *, top: bool) -> FieldSpec | None:
        self._keys(table, path, _FIELD_KEYS)
        before = len(self._issues)
        protocol = self._protocol
        name = self._get(table, path, "name", "str", True)
        if name is not None and not _NAME_RE.match(name):
            self._issue((*path, "name"), f"{name!r} does not match {_NAME_RE.pattern}")
        ftype = self._get(table, path, "type", "str", True)
        if ftype is not None:
            allowed = PROTOCOL_TYPES.get(protocol or "", FIELD_TYPES)
            if ftype not in allowed:
                self._issue(
                    (*path, "type"),
                    f"unknown type {ftype!r} for {protocol or 'this profile'} "
                    f"(expected one of {', '.join(allowed)})",
                )
                ftype = None
        address = self._get(table, path, "address", "int", protocol == "modbus")
        if address is not None:
            if not 0 <= address <= _MAX_ADDRESS:
                self._issue((*path, "address"), f"address {address} outside [0, {_MAX_ADDRESS}]")
            elif protocol not in (None, "modbus"):
                self._issue((*path, "address"), f"address is for modbus, not {protocol}")
        node = self._get(table, path, "node", "str", protocol == "opcua")
        if node is not None and protocol not in (None, "opcua"):
            self._issue((*path, "node"), f"node is for opcua, not {protocol}")
        key = self._get(table, path, "key", "str", False)
        if key is not None and protocol not in (None, "mqtt"):
            self._issue((*path, "key"), f"key is for mqtt, not {protocol}")
        scale = self._get(table, path, "scale", "number", False)
        if scale is not None:
            if scale == 0:
                self._issue((*path, "scale"), "must not be 0")
            elif ftype in ("bool", "str"):
                self._issue((*path, "scale"), f"a {ftype} field has no scale")
        unit = self._get(table, path, "unit", "str", False)
        writable = self._get(table, path, "writable", "bool", False)
        reconcile = self._get(table, path, "reconcile", "str", False)
        if reconcile is not None and reconcile not in RECONCILE:
            self._issue(
                (*path, "reconcile"),
                f"unknown reconcile {reconcile!r} (expected one of {', '.join(RECONCILE)})",
            )
        elif writable and reconcile is None and "reconcile" not in table:
            self._issue(
                (*path, "reconcile"),
                f"a writable field needs reconcile ({', '.join(RECONCILE)})",
                at=(*path, "writable"),
            )
        elif not writable and reconcile is not None:
            self._issue((*path, "reconcile"), "reconcile is only for writable fields")
        low = self._get(table, path, "min", "number", False)
        high = self._get(table, path, "max", "number", False)
        if low is not None and high is not None and low > high:
            self._issue((*path, "max"), f"max {high:g} < min {low:g}")
        choices = self._get(table, path, "choices", "strings", False)
        if choices is not None:
            if not choices or len(set(choices)) != len(choices) or not all(choices):
                self._issue((*path, "choices"), "choices must be distinct non-empty strings")
            elif ftype is not None and ftype not in ("str", *_INT_TYPES):
                self._issue((*path, "choices"), f"a {ftype} field cannot have choices")
        required = self._get(table, path, "required", "bool", False)
        if len(self._issues) > before or name is None or ftype is None:
            return None
        try:
            return FieldSpec(
                name=name,
                type=ftype,
                address=address,
                node=node,
                key=key,
                scale=1.0 if scale is None else float(scale),
                unit=unit or "",
                writable=bool(writable),
                reconcile=reconcile,
                min=low,
                max=high,
                choices=tuple(choices or ()),
                required=bool(required),
                line=self._where.line(path),
            )
        except ConfigError as exc:
            self._issue(path, str(exc))
            return None

    def _blocks(self) -> list[tuple[KeyPath, BlockSpec]]:
        out: list[tuple[KeyPath, BlockSpec]] = []
        for path, table in self._array(self._doc, (), "block"):
            self._keys(table, path, _BLOCK_KEYS)
            before = len(self._issues)
            modbus = self._protocol == "modbus"
            name = self._get(table, path, "name", "str", True)
            if name is not None and not _NAME_RE.match(name):
                self._issue((*path, "name"), f"{name!r} does not match {_NAME_RE.pattern}")
            base = self._get(table, path, "base", "int", modbus)
            if base is not None and not 0 <= base <= _MAX_ADDRESS:
                self._issue((*path, "base"), f"base {base} outside [0, {_MAX_ADDRESS}]")
            stride = self._get(table, path, "stride", "int", modbus)
            if stride is not None and stride < 1:
                self._issue((*path, "stride"), f"stride must be >= 1, got {stride}")
            count = self._get(table, path, "count", "int", True)
            if count is not None and count < 0:
                self._issue((*path, "count"), f"count must be >= 0, got {count}")
            count_attr = self._get(table, path, "count_attr", "str", False)
            fields = self._fields(self._array(table, path, "field"), top=False)
            if "field" not in table:
                self._issue((*path, "field"), "a block needs at least one [[block.field]]", at=path)
            if stride is not None and stride >= 1:
                for fpath, spec in fields:
                    if spec.address is not None and spec.address + spec.width > stride:
                        self._issue(
                            (*fpath, "address"),
                            f"offset {spec.address} (+{spec.width} registers) does not fit "
                            f"in stride {stride}",
                        )
                self._field_overlaps(fields)
            if len(self._issues) > before or name is None or count is None or not fields:
                continue
            try:
                out.append(
                    (
                        path,
                        BlockSpec(
                            name=name,
                            base=base,
                            stride=stride,
                            count=count,
                            count_attr=count_attr,
                            fields=tuple(f for _, f in fields),
                            line=self._where.line(path),
                        ),
                    )
                )
            except ConfigError as exc:
                self._issue(path, str(exc))
        return out

    def _names(
        self, fields: list[tuple[KeyPath, FieldSpec]], blocks: list[tuple[KeyPath, BlockSpec]]
    ) -> None:
        seen = {spec.name for _, spec in fields}
        for path, block in blocks:
            if block.name in seen:
                self._issue((*path, "name"), f"block name {block.name!r} is already used")
            seen.add(block.name)

    def _field_overlaps(self, fields: list[tuple[KeyPath, FieldSpec]]) -> None:
        owner: dict[int, str] = {}
        for path, spec in fields:
            if spec.address is None:
                continue
            for reg in range(spec.address, spec.address + spec.width):
                if reg in owner:
                    self._issue(
                        (*path, "address"), f"register {reg} is already used by {owner[reg]!r}"
                    )
                    break
                owner[reg] = spec.name

    def _overlaps(
        self, fields: list[tuple[KeyPath, FieldSpec]], blocks: list[tuple[KeyPath, BlockSpec]]
    ) -> None:
        self._field_overlaps(fields)
        owner: dict[int, str] = {}
        for _, spec in fields:
            for reg in range(_addr(spec), _addr(spec) + spec.width):
                owner.setdefault(reg, spec.name)
        for path, block in blocks:
            assert block.base is not None and block.stride is not None
            low = min(_addr(f) for f in block.fields)
            high = max(_addr(f) + f.width for f in block.fields)
            start = block.base + low
            end = block.base + max(block.count - 1, 0) * block.stride + high
            if block.count and end > _MAX_ADDRESS + 1:
                self._issue((*path, "count"), f"{block.count} repeats run past {_MAX_ADDRESS}")
                continue
            hit = next((r for r in range(start, end) if r in owner), None) if block.count else None
            if hit is not None:
                self._issue(
                    (*path, "base"),
                    f"repeats span registers {start}..{end - 1}, overlapping {owner[hit]!r} "
                    f"at {hit}",
                )
            for reg in range(start, end):
                owner.setdefault(reg, block.name)
