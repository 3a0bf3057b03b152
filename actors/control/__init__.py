"""The control room's coordinator entities: alarms (and, as they come, crisis and dispatch).

They run like equipment entities, in the ``control`` domain on a host of their own
(:data:`runtime.placement.CONTROL_HOST`), restarted from their checkpoints; the
host feeds them the event stream through a consumer group, and operators reach
them through the command journal.
"""

from actors.control.alarms import AlarmsCoordinator

#: Coordinator entities by id (the service places those it is asked to run).
COORDINATORS = {"alarms": AlarmsCoordinator}

__all__ = ["COORDINATORS", "AlarmsCoordinator"]
