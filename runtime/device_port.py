"""What the runtime asks of the device layer (implemented in ``devices/``).

A host owns the device sessions of its entities. It receives a
:class:`DeviceManager` built by a factory named in its assignment (the runtime
never imports ``devices/``); the manager polls or subscribes, and hands what
it reads to the entities as envelopes through ``deliver``:

* ``telemetry`` (kind TELEMETRY): ``{"values": {name: value}, "seq": int,
  "ts": source timestamp, "quality": "good" | "uncertain" | "bad"}``;
* ``device_status`` (kind EVENT): ``{"online": bool, "reason": str}``, sent
  once when a device's liveness flips;
* ``device_event`` (kind EVENT): ``{"event": name, "ts": …, "fields": {…}}``.

An entity writes to its device through its :class:`DevicePort`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from runtime.envelope import Envelope
from runtime.inventory import Equipment


class DevicePort(Protocol):
    """One entity's handle on its device."""

    @property
    def online(self) -> bool:
        """Whether the device answers (per its profile's liveness rule)."""

    def policy(self, field: str) -> str | None:
        """The profile's reconcile policy of a writable field: "reapply", "alarm" or
        "never" (a command register, never written again); None for another field."""

    async def settled(self) -> bool:
        """Wait until the session knows whether the device answers; returns :attr:`online`.

        Right after a host starts, ``online`` is False only because the device
        has not been reached yet; this waits for the first verdict (a reading,
        or the liveness rule giving up), bounded by the profile's liveness window.
        """

    async def read(self) -> Mapping[str, Any]:
        """The device's values now, by the profile's names (blocks as lists of dicts).

        The reading also reaches the entity as a ``telemetry`` sample. Raises
        :class:`~runtime.errors.RejectedError` with ``code="not_readable"`` for a
        device that only publishes, and :class:`~runtime.errors.DeviceUnavailableError`
        when it cannot be reached.
        """

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        """Write absolute setpoints; returns what the device confirmed.

        Raises :class:`~runtime.errors.RejectedError` when the device refuses
        (with its code) and :class:`~runtime.errors.DeviceUnavailableError`
        when it cannot be reached.
        """


class DeviceManager(Protocol):
    """All device sessions of one host."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def port(self, entity_id: str) -> DevicePort | None: ...

    def online_count(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


DeviceManagerFactory = Callable[
    [Sequence[Equipment], Callable[[Envelope], None], Mapping[str, Any]], DeviceManager
]
