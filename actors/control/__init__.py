"""The control room's coordinator entities: alarms, crisis, dispatch.

They run like equipment entities, in the ``control`` domain on a host of their own
(:data:`runtime.placement.CONTROL_HOST`), restarted from their checkpoints; the
host feeds them the event stream through a consumer group, and operators reach
them through the command journal.
"""

from actors.control.alarms import AlarmsCoordinator
from actors.control.crisis import CrisisCoordinator
from actors.control.dispatch import DispatchCoordinator
from runtime.entity import Entity

#: Coordinator entities by id (the service places those it is asked to run).
COORDINATORS: dict[str, type[Entity]] = {"alarms": AlarmsCoordinator,
                                         "crisis": CrisisCoordinator,
                                         "dispatch": DispatchCoordinator}

__all__ = ["COORDINATORS", "AlarmsCoordinator", "CrisisCoordinator", "DispatchCoordinator"]
