"""``commandpost bench dispatch``: a day of citizen requests, dispatched, on an accelerated clock.

With the city running as ``make demo`` runs it (:class:`~runtime.bench.common.City`),
``630 * scale`` requests (at least 10) are posted through the Open311
endpoint (form-encoded, with the city's API key, as citizens' apps post) at
the shape of a day: an hourly profile of a city hotline (quiet at night,
peaks mid-morning and mid-afternoon), each request at a random place of the
metropolis (near a municipality's centre, weighted by population) and of a
service drawn from a summer day's mix (no snow).

The city runs on an accelerated clock (:class:`~runtime.clock.ScaledClock`,
``clock_speed`` ``86400 / day_s``, from midnight of a working Tuesday in
Europe/Paris): every request is posted when the city's clock reaches its time
of day, the simulated crews drive and work in the city's time, and the
dispatch coordinator stamps its interventions on it. The vehicles keep the
machine's cadence of reports (their transport), so the fleet the API shows is
up to ``FLEET_STALENESS_S`` of the machine's time old.

Figures:

* ``requests``: posted and answered 201; ``interventions``: those the API
  lists (each request must become one);
* ``assign_p50_s``/``assign_p99_s``: from the POST sent to the assignment
  (the intervention's ``assigned_ts``), queueing for a free vehicle included
  (``waited`` counts the requests that had no free suitable vehicle when
  posted), in seconds of the machine's time: the runtime's reaction, which the
  clock does not speed up (``assign_p99_city_s``: the same in the city's time);
* ``nearest_mismatches``: assignments whose vehicle is not the nearest one a
  brute-force search finds, written here apart from the runtime (its own
  haversine), over the vehicles ``GET /api/v1/fleet`` showed available at the
  assignment: the last fleet read before it (read every 0.25 s and before each
  post). The fleet the API shows is up to ~1.2 s old, so vehicles that other
  assignments took in that span are left out, and an assignment to a vehicle
  freed in that span (the API could not show it free yet) is ``unverified``,
  not a mismatch; a vehicle within 0.5 % + 1 m of the best counts as the best
  (sphere against ellipsoid);
* ``done``: interventions done when the day and its drain (``drain_s``) end.
"""

from __future__ import annotations

import bisect
import datetime
import http.client
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from runtime.bench.common import ApiClient, City, Say, machine, percentile
from runtime.clock import CITY_TZ, Clock
from runtime.errors import ProtocolError, RetryableError

DAY_S = 86_400.0
#: Requests per day at the reference scale (Dijon Métropole's hotline and apps).
REQUESTS_PER_DAY = 630
#: A city hotline's relative load per hour of the day (0 h to 23 h).
HOURLY_PROFILE = (0.3, 0.2, 0.15, 0.1, 0.1, 0.2, 0.6, 1.2, 2.0, 2.4, 2.4, 2.2,
                  1.6, 1.8, 2.2, 2.2, 2.0, 1.7, 1.3, 1.0, 0.8, 0.6, 0.5, 0.4)
#: A summer day's services (snow_ice left out: no snow in the day simulated).
SERVICE_MIX = {"bulky_waste": 0.24, "cleaning": 0.2, "pothole": 0.12, "illegal_dumping": 0.1,
               "graffiti": 0.08, "green_areas": 0.08, "lighting_fault": 0.07,
               "sign_damage": 0.06, "abandoned_vehicle": 0.05}
POLL_S = 0.25
#: The day simulated: a working Tuesday, no public holiday, local time.
DAY_START = datetime.datetime(2026, 6, 16, tzinfo=CITY_TZ)
#: How old the fleet the API shows may be: published once a second, written within 0.2 s.
FLEET_STALENESS_S = 1.5
_EARTH_RADIUS_M = 6_371_008.8


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres on the mean-radius sphere (the bench's own code)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def day_times(n: int, rng: random.Random) -> list[float]:
    """``n`` times of day (seconds, sorted) drawn from :data:`HOURLY_PROFILE`."""
    total = sum(HOURLY_PROFILE)
    cumulative = []
    acc = 0.0
    for w in HOURLY_PROFILE:
        acc += w / total
        cumulative.append(acc)
    out = []
    for _ in range(n):
        hour = min(bisect.bisect_left(cumulative, rng.random()), 23)
        out.append((hour + rng.random()) * 3600.0)
    return sorted(out)


@dataclass
class Posted:
    """One request as the bench posted it."""

    request_id: str
    code: str
    lat: float
    lon: float
    posted_ts: float
    free_at_post: bool


@dataclass
class Watch:
    """What the monitor thread saw: fleet snapshots (stamped on the city's ``clock``) and
    the interventions' latest records."""

    clock: Clock
    fleets: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    interventions: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _post_open311(base: str, api_key: str, form: dict[str, str]) -> tuple[int, Any]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=10)
    try:
        conn.request("POST", "/open311/v2/requests.json", body=urlencode(
            {"api_key": api_key, **form}), headers={
                "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise RetryableError(f"Open311 POST: {exc}") from exc
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw or b"null")
    except ValueError as exc:
        raise ProtocolError("Open311 POST answered non-JSON") from exc


def _places(city: City, n: int, rng: random.Random) -> list[tuple[float, float]]:
    """``n`` points of the metropolis, near municipalities' centres, by population."""
    from runtime.geo import Geography

    geography = Geography(city.inventory.municipalities)
    munis = list(city.inventory.municipalities)
    weights = [m.population for m in munis]
    out: list[tuple[float, float]] = []
    while len(out) < n:
        m = rng.choices(munis, weights)[0]
        lat = m.lat + rng.gauss(0.0, 0.008)
        lon = m.lon + rng.gauss(0.0, 0.011)
        if geography.municipality_at(lat, lon) is not None:
            out.append((round(lat, 6), round(lon, 6)))
    return out


def _monitor(api: ApiClient, watch: Watch, stop: threading.Event) -> None:
    while not stop.wait(POLL_S):
        snapshot(api, watch)
        try:
            code, items = api.call("GET", "/api/v1/interventions")
        except (RetryableError, ProtocolError):
            watch.errors += 1
            continue
        if code == 200:
            with watch.lock:
                for rec in items:
                    watch.interventions[str(rec["id"])] = rec


def snapshot(api: ApiClient, watch: Watch) -> list[dict[str, Any]]:
    """Read the fleet through the API now and keep it with the time it was read."""
    t = watch.clock.time()
    try:
        code, vehicles = api.call("GET", "/api/v1/fleet")
    except (RetryableError, ProtocolError):
        watch.errors += 1
        return []
    if code != 200:
        watch.errors += 1
        return []
    with watch.lock:
        watch.fleets.append((t, vehicles))
    return list(vehicles)


def _free(v: dict[str, Any], roles: tuple[str, ...], at: float) -> bool:
    until = v.get("excluded_until")
    return (v.get("role") in roles and v.get("status") == "available"
            and v.get("online") is True and not v.get("assigned")
            and (until is None or float(until) <= at))


def check_nearest(rec: dict[str, Any], roles: tuple[str, ...], watch: Watch,
                  records: list[dict[str, Any]]) -> str:
    """``match``, ``mismatch`` or ``unverified`` for one assignment (see the module doc)."""
    assigned_ts = float(rec["assigned_ts"])
    fleets = [f for f in watch.fleets if f[0] <= assigned_ts]
    if not fleets:
        return "unverified"
    read_ts, vehicles = fleets[-1]
    since = read_ts - FLEET_STALENESS_S * watch.clock.speed
    taken = {r["vehicle"] for r in records
             if r is not rec and r.get("assigned_ts") and r.get("vehicle")
             and since <= float(r["assigned_ts"]) < assigned_ts}
    freed = {r["vehicle"] for r in records
             if r.get("state") == "done" and r.get("vehicle")
             and since <= float(r["updated_ts"]) < assigned_ts}
    site = (float(rec["lat"]), float(rec["lon"]))
    candidates = {v["id"]: haversine_m(site, (float(v["lat"]), float(v["lon"])))
                  for v in vehicles if _free(v, roles, assigned_ts) and v["id"] not in taken}
    chosen = rec["vehicle"]
    if chosen not in candidates:
        return "unverified" if chosen in freed else "mismatch"
    best = min(candidates.values())
    return "match" if candidates[chosen] <= best * 1.005 + 1.0 else "mismatch"


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
        seconds: float | None = None, drain_s: float = 120.0, seed: int = 0,
        clock_speed: float | None = None, **_: Any) -> dict[str, Any]:
    """Post a day of requests through Open311 on an accelerated clock and follow them
    (module doc).

    ``seconds`` is how long the day lasts on the machine (default 240 s: the day in
    four minutes), or ``clock_speed`` how fast the city's clock runs.
    """
    from runtime.open311 import default_catalogue

    speedup = clock_speed or DAY_S / (seconds or 240.0)
    day_s = DAY_S / speedup
    rng = random.Random(seed)
    n = max(10, round(REQUESTS_PER_DAY * scale))
    catalogue = default_catalogue()
    codes = list(SERVICE_MIX)
    midnight = DAY_START.timestamp()
    # The city's clock starts a little before midnight: the fleet is reporting by then.
    with City(scale=scale, say=say, broker=broker, clock_speed=speedup,
              clock_start=midnight - 60.0 * speedup) as city:
        clock = city.city_clock
        api_key = city.creds["open311"]["api_key"]
        times = day_times(n, rng)
        places = _places(city, n, rng)
        kinds = rng.choices(codes, [SERVICE_MIX[c] for c in codes], k=n)
        watch = Watch(clock)
        api = ApiClient(city.admin_url, city.token("operator"))
        poster_api = ApiClient(city.admin_url, city.token("operator"))
        stop = threading.Event()
        monitor = threading.Thread(target=_monitor, args=(api, watch, stop),
                                   name="bench-dispatch.monitor", daemon=True)
        fleet_size = len(snapshot(poster_api, watch))
        say(f"{fleet_size} service vehicles; posting {n} requests over {day_s:.0f} s "
            f"(the city's clock at {speedup:g}x)")
        monitor.start()
        posted: list[Posted] = []
        refused: dict[str, int] = {}
        try:
            for i, (at, (lat, lon), code) in enumerate(zip(times, places, kinds, strict=True)):
                delay = (midnight + at - clock.time()) / speedup
                if delay > 0:
                    time.sleep(delay)
                roles = tuple(catalogue.get(code).vehicle_roles)
                fleet = snapshot(poster_api, watch)
                free = any(_free(v, roles, clock.time()) for v in fleet)
                sent = clock.time()
                status, body = _post_open311(city.admin_url, api_key, {
                    "service_code": code, "lat": str(lat), "long": str(lon),
                    "description": f"bench request {i}"})
                if status != 201:
                    refused[str(status)] = refused.get(str(status), 0) + 1
                    continue
                posted.append(Posted(str(body[0]["service_request_id"]), code, lat, lon, sent,
                                     free))
                if (i + 1) % 50 == 0:
                    say(f"{i + 1}/{n} requests posted")
            day_end = time.monotonic()
            ids = {p.request_id for p in posted}

            def all_done() -> bool:
                with watch.lock:
                    mine = [r for r in watch.interventions.values() if r.get("request_id") in ids]
                return len(mine) == len(ids) and all(r["state"] == "done" for r in mine)

            while time.monotonic() - day_end < drain_s and not all_done():
                time.sleep(POLL_S)
        finally:
            stop.set()
            monitor.join(5)
            api.close()
            poster_api.close()
        with watch.lock:
            records = list(watch.interventions.values())
        by_request = {str(r["request_id"]): r for r in records if r.get("request_id")}
        latencies: list[float] = []
        verdicts = {"match": 0, "mismatch": 0, "unverified": 0}
        for p in posted:
            rec = by_request.get(p.request_id)
            if rec is None or not rec.get("assigned_ts"):
                continue
            latencies.append(max(0.0, float(rec["assigned_ts"]) - p.posted_ts) / speedup)
            roles = tuple(catalogue.get(p.code).vehicle_roles)
            verdicts[check_nearest(rec, roles, watch, records)] += 1
        states: dict[str, int] = {}
        for p in posted:
            state = str(by_request.get(p.request_id, {}).get("state", "missing"))
            states[state] = states.get(state, 0) + 1
        return {
            "requests": len(posted),
            "interventions": sum(1 for p in posted if p.request_id in by_request),
            "nearest_mismatches": verdicts["mismatch"],
            "assign_p99_s": round(percentile(latencies, 99), 3) if latencies else None,
            "done": states.get("done", 0),
            "assign_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
            "assign_p99_city_s": (round(percentile(latencies, 99) * speedup, 1)
                                  if latencies else None),
            "assigned": len(latencies),
            "nearest_checked": verdicts["match"] + verdicts["mismatch"],
            "nearest_unverified": verdicts["unverified"],
            "waited": sum(1 for p in posted if not p.free_at_post),
            "states": states,
            "refused": refused,
            "api_errors": watch.errors,
            "vehicles": fleet_size,
            "day_s": round(day_s, 1),
            "clock_speed": speedup,
            "day": DAY_START.date().isoformat(),
            "scale": scale,
            "broker": city.broker_kind,
            "machine": machine(),
            "left_out": list(city.left_out),
        }
