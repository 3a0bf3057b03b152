"""SUMO networks and scenarios as the command post sees them.

Eclipse SUMO's own tools and its TraCI session are in :mod:`devices.sumo`;
here is what reads and writes its files, with no SUMO needed:

* :mod:`runtime.sumo.network`: a network and its routes read with the
  standard library's XML parser and mapped onto the runtime's model: each
  traffic light a crossroad (approaches from its incoming edges' headings and
  stop lines), its program a controller program, each bus ``line`` a
  :class:`~runtime.transit.BusLine` with its stops and crossings;
* :mod:`runtime.sumo.scenario`: the default corridor of ``commandpost bench tsp``;
* :mod:`runtime.sumo.delay`: delays per trip from SUMO's trip outputs.
"""
