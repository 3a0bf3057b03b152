"""Bus priority at signalised crossroads (NTCIP 1211).

Bus positions come in over MQTT. :class:`BusTracker` turns them into
check-ins, check-outs and cancels per crossroad approach, on the geometry of
the inventory's bus lines (:mod:`runtime.transit`). The pool then asks the
crossroads' controllers for priority on those events.
"""

from actors.priority.tracker import (
    BusSample,
    BusTracker,
    CancelReason,
    EventKind,
    TrackEvent,
)

__all__ = ["BusSample", "BusTracker", "CancelReason", "EventKind", "TrackEvent"]
