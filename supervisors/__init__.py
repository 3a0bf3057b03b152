"""commandpost supervisors: an Erlang/OTP supervision tree for asyncio.

The vocabulary (restart types, strategies, intensity, backoff, events) is data
in :mod:`supervisors.spec`; :class:`Supervisor` in :mod:`supervisors.core`
applies it to children that implement the :class:`Child` protocol.
"""

from supervisors.core import (
    Child,
    ChildFactory,
    Supervisor,
    SupervisorGaveUp,
    UnknownChildError,
)
from supervisors.spec import (
    Backoff,
    ChildInfo,
    ChildSpec,
    ChildStatus,
    EventAction,
    ExitKind,
    ExitReason,
    IntensityScope,
    RestartType,
    Strategy,
    SupervisorEvent,
    SupervisorOptions,
    SupervisorStatus,
)

__all__ = [
    "Backoff",
    "Child",
    "ChildFactory",
    "ChildInfo",
    "ChildSpec",
    "ChildStatus",
    "EventAction",
    "ExitKind",
    "ExitReason",
    "IntensityScope",
    "RestartType",
    "Strategy",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorGaveUp",
    "SupervisorOptions",
    "SupervisorStatus",
    "UnknownChildError",
]
