"""A hand-written SUMO crossroad for the tests that need no SUMO: one light ``J`` at the
origin with four one-lane arms 200 m long (``in_X`` drives in from the end ``X``,
``out_X`` out to it), and routes with two bus lines."""

from __future__ import annotations

from pathlib import Path

#: Links: 0 from the north straight, 1 from the east straight, 2 from the south straight,
#: 3 from the west straight, 4 from the west turning left (north). The program starts with
#: the north-south yellow: its first green phase is its second phase (east-west).
NET = """<?xml version="1.0" encoding="UTF-8"?>
<net version="1.20">
    <location netOffset="0.00,0.00" convBoundary="-200,-200,200,200" projParameter="!"/>
    <edge id=":J_0" function="internal">
        <lane id=":J_0_0" index="0" speed="13.89" length="20" shape="-1.6,10 -1.6,-10"/>
    </edge>
    <edge id="in_w" from="W" to="J" priority="1">
        <lane id="in_w_0" index="0" speed="13.89" length="190" shape="-200,-1.6 -10,-1.6"/>
    </edge>
    <edge id="out_e" from="J" to="E" priority="1">
        <lane id="out_e_0" index="0" speed="13.89" length="190" shape="10,-1.6 200,-1.6"/>
    </edge>
    <edge id="in_e" from="E" to="J" priority="1">
        <lane id="in_e_0" index="0" speed="13.89" length="190" shape="200,1.6 10,1.6"/>
    </edge>
    <edge id="out_w" from="J" to="W" priority="1">
        <lane id="out_w_0" index="0" speed="13.89" length="190" shape="-10,1.6 -200,1.6"/>
    </edge>
    <edge id="in_n" from="N" to="J" priority="1">
        <lane id="in_n_0" index="0" speed="13.89" length="190" shape="-1.6,200 -1.6,10"/>
    </edge>
    <edge id="out_s" from="J" to="S" priority="1">
        <lane id="out_s_0" index="0" speed="13.89" length="190" shape="-1.6,-10 -1.6,-200"/>
    </edge>
    <edge id="in_s" from="S" to="J" priority="1">
        <lane id="in_s_0" index="0" speed="13.89" length="190" shape="1.6,-200 1.6,-10"/>
    </edge>
    <edge id="out_n" from="J" to="N" priority="1">
        <lane id="out_n_0" index="0" speed="13.89" length="190" shape="1.6,10 1.6,200"/>
    </edge>
    <tlLogic id="J" type="static" programID="0" offset="0">
        <phase duration="4" state="yryrr"/>
        <phase duration="30" state="rGrGg" minDur="6" maxDur="30"/>
        <phase duration="3" state="ryryy"/>
        <phase duration="2" state="rrrrr"/>
        <phase duration="20" state="GrGrr"/>
    </tlLogic>
    <junction id="J" type="traffic_light" x="0.00" y="0.00" incLanes="" intLanes="" shape=""/>
    <junction id="W" type="dead_end" x="-200.00" y="0.00" incLanes="" intLanes="" shape=""/>
    <junction id="E" type="dead_end" x="200.00" y="0.00" incLanes="" intLanes="" shape=""/>
    <junction id="N" type="dead_end" x="0.00" y="200.00" incLanes="" intLanes="" shape=""/>
    <junction id="S" type="dead_end" x="0.00" y="-200.00" incLanes="" intLanes="" shape=""/>
    <connection from="in_n" to="out_s" fromLane="0" toLane="0" tl="J" linkIndex="0" dir="s"/>
    <connection from="in_e" to="out_w" fromLane="0" toLane="0" tl="J" linkIndex="1" dir="s"/>
    <connection from="in_s" to="out_n" fromLane="0" toLane="0" tl="J" linkIndex="2" dir="s"/>
    <connection from="in_w" to="out_e" fromLane="0" toLane="0" tl="J" linkIndex="3" dir="s"/>
    <connection from="in_w" to="out_n" fromLane="0" toLane="0" tl="J" linkIndex="4" dir="l"/>
</net>
"""

#: Line X west to east (two vehicles and a flow) and back (one vehicle), with a stop each
#: way on each side; line Y north to south only, without stops; a car with a line (not a
#: bus) and a bus without a route of edges.
ROUTES = """<routes>
    <vType id="bus" vClass="bus"/>
    <vType id="car" vClass="passenger"/>
    <busStop id="st_w1" lane="in_w_0" startPos="40" endPos="60"/>
    <busStop id="st_e1" lane="out_e_0" startPos="130" endPos="150"/>
    <busStop id="st_e2" lane="in_e_0" startPos="40" endPos="60"/>
    <busStop id="st_w2" lane="out_w_0" startPos="130" endPos="150"/>
    <route id="west_east" edges="in_w out_e"/>
    <vehicle id="b1" type="bus" line="X" depart="0" route="west_east">
        <stop busStop="st_w1" duration="20"/><stop busStop="st_e1" duration="20"/>
    </vehicle>
    <vehicle id="car1" type="car" line="X" depart="1" route="west_east"/>
    <flow id="f1" type="bus" line="X" begin="0" end="600" period="300" route="west_east"/>
    <vehicle id="b2" type="bus" line="X" depart="5">
        <route edges="in_e out_w"/>
        <stop busStop="st_e2" duration="20"/><stop busStop="st_w2" duration="20"/>
    </vehicle>
    <vehicle id="b3" type="bus" line="Y" depart="9"><route edges="in_n out_s"/></vehicle>
    <trip id="b4" type="bus" line="Z" depart="12" from="in_n" to="out_s"/>
</routes>
"""


def write(tmp: Path) -> tuple[Path, Path]:
    """The fixture's network and routes, written into ``tmp``."""
    net, routes = tmp / "cross.net.xml", tmp / "cross.rou.xml"
    net.write_text(NET, encoding="utf-8")
    routes.write_text(ROUTES, encoding="utf-8")
    return net, routes
