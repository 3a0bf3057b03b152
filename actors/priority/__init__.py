"""Bus priority at signalised crossroads (NTCIP 1211).

Bus positions come in over MQTT. :class:`~actors.priority.tracker.BusTracker` turns them into
check-ins, check-outs and cancels per crossroad approach, on the geometry of
the inventory's bus lines (:mod:`runtime.transit`); the pool
(:mod:`actors.priority.pool`) asks the crossroads for priority on those events, and
each crossroad's lane (:mod:`actors.priority.lane`) decides by its policy
(:mod:`actors.priority.policy`) and writes to its controller. The package imports
nothing itself: a crossroad's host needs the lane, not the geometry.
"""
