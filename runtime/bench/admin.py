"""``commandpost bench admin``: the command post's fifty seats on the admin API, the city running.

With the city running as ``make demo`` runs it (:class:`~runtime.bench.common.City`:
the admin web served by waitress, its users in the service's Redis), an admin
adds :data:`OPERATORS` operators through ``POST /api/v1/users``, as the
reference command post seats fifty people: each gets desks
(:data:`SEATS`, cycled: traffic, urban supervision, security, municipal
police, citizen calls, snow) and municipalities (every fifth seat the whole
metropolis, the others one to three municipalities drawn by population, with
at least one equipment their desks command), and a password.

Each operator logs in as one does at the command post (the login form, its
CSRF token, then a page for the session's CSRF token) and works through his
login session, as the pages do: reads with the session cookie, commands with
the session's ``X-CSRF-Token`` too. The logins happen in the warm-up; an
operator whose login fails is counted in ``logins_failed`` and sends nothing.

A load generator in a process of its own (real HTTP over loopback, one
keep-alive connection per operator, one thread each) runs every operator's
loop: pick a route by :data:`ROUTE_MIX`, send it, wait for the whole answer,
think (exponential, mean ``think_s``, 1 s by default), again::

    equipment_list    20 %  GET /api/v1/equipment?kind=&municipality=&limit=
                            (a kind his desks command or read, one of his
                            municipalities or none, 20, 50 or 100 at a time)
    equipment_detail  20 %  GET /api/v1/equipment/ID, an id seen in his lists
    alarms            20 %  GET /api/v1/alarms
    tree              10 %  GET /api/v1/tree
    crisis            10 %  GET /api/v1/crisis (the panel read, no plan switched)
    interventions     10 %  GET /api/v1/interventions
    commands          10 %  POST /api/v1/equipment/ID/commands, a command his desks
                            own on equipment of his municipalities: a circuit
                            dimmed, a crossroad's plan overridden for 5 minutes,
                            a camera to a preset, a crew message

Latency is measured by the client (``time.perf_counter``, from the request
sent to the last byte of the answer). The first ``warmup_s`` (15 s) are not
counted; the next ``seconds`` (120 s) are. Figures: ``requests`` in the window,
``routes`` (per route: ``requests``, ``p50_ms``, ``p95_ms``, ``p99_ms``,
``max_ms`` of the 2xx answers, ``kb_mean`` their mean size, and ``errors``:
every answer that is not 2xx, or none at all, with ``error_codes``), the same
overall (``p95_ms``…), ``app_ms`` (per route, the p50 and p95 of the time the
app took to make its answers, measured in the server: the rest of a request's
time is the wire, waitress, and waiting for a thread),
``met`` (p95 at most :data:`TARGET_P95_MS` overall and on every route, and no
error). Both ends count: ``counted`` holds the requests the client sent and
those the server received (a WSGI counter in front of the app, all phases,
by the operators' seat header), and the commands sent against the
``command.submit`` entries of the audit trail. CPU in cores over the window:
``server_cpu`` is the process serving the admin web (it is also the Ray
driver, as in ``commandpost run``), ``redis_cpu`` the store's server, then
``runtime_cpu`` (both of those included), ``broker_cpu``, ``simulator_cpu``
by role, and ``client_cpu`` the load generator; ``machine_busy_cpu`` is every
core's busy time, and ``other_cpu`` what of it none of those used (a machine
shared with other work).
"""

from __future__ import annotations

import http.client
import http.cookies
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlencode, urlsplit

from admin_web.guards import CSRF_FIELD, CSRF_HEADER
from runtime.bench.common import ApiClient, City, CpuMeter, Say, machine, percentile
from runtime.errors import ConfigError, ProtocolError, RetryableError
from runtime.inventory import Inventory

__all__ = [
    "OPERATORS",
    "ROUTES",
    "ROUTE_MIX",
    "SEATS",
    "TARGET_P95_MS",
    "AccessCounter",
    "Seat",
    "load",
    "plan_seats",
    "route_of",
    "run",
    "summarize",
]

#: Seats of the reference command post.
OPERATORS: Final = 50
#: What the operators do, in shares of their requests.
ROUTE_MIX: Final[Mapping[str, float]] = {
    "equipment_list": 0.20, "equipment_detail": 0.20, "alarms": 0.20, "tree": 0.10,
    "crisis": 0.10, "interventions": 0.10, "commands": 0.10}
ROUTES: Final = tuple(ROUTE_MIX)
#: The p95 the admin API must keep, overall and on each route.
TARGET_P95_MS: Final = 200.0
THINK_S: Final = 1.0
WARMUP_S: Final = 15.0
DURATION_S: Final = 120.0
#: Each seat's desks (admin_web/desks.toml), cycled over the operators.
SEATS: Final = (("traffic",), ("urban_supervision",), ("security",), ("municipal_police",),
                ("urban_supervision",), ("citizen_calls",), ("snow",), ("traffic",),
                ("security", "municipal_police"), ("snow", "urban_supervision"))
#: Every this-many-th seat watches the whole metropolis; the others a few municipalities.
WHOLE_METROPOLIS_EVERY: Final = 5
LIST_LIMITS: Final = (20, 50, 100)
#: How long a crossroad override holds (``params.for_s``).
OVERRIDE_S: Final = 300.0
#: The kinds the operators command, and the action (each desk's ``set``).
COMMANDED: Final = ("lighting_circuit", "crossroad", "camera", "vehicle")
_SEEN_IDS: Final = 500
_HTTP_TIMEOUT_S: Final = 30.0
_API: Final = "/api/v1"
#: The header that names the seat a request comes from, so the server counts the
#: operators' requests apart from any other client's.
SEAT_HEADER: Final = "X-Bench-Seat"
#: How long an operator keeps trying to log in (a login refused while too many
#: password checks run at once says to retry).
_LOGIN_DEADLINE_S: Final = 60.0
_META_CSRF: Final = re.compile(rb'<meta name="csrf-token" content="([^"]+)"')
_FORM_CSRF: Final = re.compile(rb'name="' + CSRF_FIELD.encode() + rb'" value="([^"]+)"')


# -- the seats --------------------------------------------------------------------------
@dataclass(frozen=True)
class Seat:
    """One operator as the load generator drives him: his password, scope, what his desks
    read and command, and the equipment he commands (``{"id", "kind", "presets"?}``)."""

    name: str
    desks: tuple[str, ...]
    municipalities: tuple[str, ...]  # empty: the whole metropolis
    reads: tuple[str, ...]
    commands: tuple[str, ...]
    targets: tuple[dict[str, Any], ...]
    password: str = field(default="", repr=False)


def _target(eq: Any) -> dict[str, Any] | None:
    """What a command to ``eq`` needs, or None when the operators send it none."""
    if eq.kind not in COMMANDED:
        return None
    if eq.kind == "vehicle":
        from actors.vehicle import has_radio

        if not has_radio(eq.attrs):
            return None
    out: dict[str, Any] = {"id": eq.id, "kind": eq.kind}
    if eq.kind == "camera":
        presets = eq.attrs.get("presets")
        names = sorted(presets) if isinstance(presets, Mapping) else []
        if not names:
            return None
        out["presets"] = names
    return out


def plan_seats(inventory: Inventory, n: int, rng: random.Random) -> list[Seat]:
    """``n`` operators' seats over ``inventory`` (module doc); passwords are added later.

    Raises :class:`ConfigError` when no seat could command anything (an
    inventory without any equipment the desks command).
    """
    from admin_web.desks import builtin_desks

    book = builtin_desks()
    towns = [m.slug for m in inventory.municipalities]
    weights = [max(1, m.population) for m in inventory.municipalities]
    targets: dict[str, list[dict[str, Any]]] = {}
    for eq in sorted(inventory.equipment, key=lambda e: e.id):
        t = _target(eq)
        if t is not None:
            targets.setdefault(eq.municipality, []).append(t)
    seats: list[Seat] = []
    for i in range(n):
        desks = SEATS[i % len(SEATS)]
        views = {v for d in desks for v in book.desks[d].views}
        hidden = {k for name, view in book.views.items() if name not in views
                  for k in view.kinds}
        reads = tuple(k for k in ("lighting_circuit", "crossroad", "camera", "vehicle",
                                  "building", "access_terminal") if k not in hidden)
        commands = tuple(k for k in COMMANDED if k not in hidden and any(
            "set" in book.desks[d].commands.get(k, ()) for d in desks))
        if i % WHOLE_METROPOLIS_EVERY == 0:
            scope: list[str] = []
        else:
            scope = []
            for _ in range(1 + rng.randrange(3)):
                town = rng.choices(towns, weights)[0]
                if town not in scope:
                    scope.append(town)

        def mine(scope: Sequence[str], commands: Sequence[str] = commands
                 ) -> list[dict[str, Any]]:
            return [t for town in (scope or towns) for t in targets.get(town, ())
                    if t["kind"] in commands]

        if scope and not mine(scope):
            # A seat commands something: the most populous municipality that has it.
            extra = next((t for t, _ in sorted(zip(towns, weights, strict=True),
                                                key=lambda p: -p[1]) if mine([t])), None)
            if extra is not None:
                scope.append(extra)
        seats.append(Seat(name=f"seat-{i + 1:02d}", desks=desks, municipalities=tuple(scope),
                          reads=reads, commands=commands, targets=tuple(mine(scope))))
    if not any(s.targets for s in seats):
        raise ConfigError("no seat commands any equipment of this inventory")
    return seats


def add_operators(admin: ApiClient, seats: Sequence[Seat]) -> list[Seat]:
    """Add each seat's operator through ``POST /api/v1/users``; the seats with the
    passwords the service generated."""
    out = []
    for seat in seats:
        code, body = admin.call("POST", f"{_API}/users", {
            "name": seat.name, "role": "operator", "municipalities": list(seat.municipalities),
            "desks": list(seat.desks)})
        if code != 201 or not isinstance(body, dict) or not body.get("password"):
            raise ConfigError(f"POST /api/v1/users for {seat.name} answered {code}: {body}")
        out.append(Seat(**{**asdict(seat), "password": str(body["password"])}))
    return out


# -- both ends' counts ------------------------------------------------------------------
def route_of(method: str, path: str) -> str | None:
    """The bench's route of a request (None: not one of :data:`ROUTES`)."""
    prefix = f"{_API}/equipment/"
    if method == "POST":
        return "commands" if path.startswith(prefix) and path.endswith("/commands") else None
    if method != "GET":
        return None
    if path == f"{_API}/equipment":
        return "equipment_list"
    if path.startswith(prefix) and "/" not in path[len(prefix):]:
        return "equipment_detail"
    return {f"{_API}/alarms": "alarms", f"{_API}/tree": "tree", f"{_API}/crisis": "crisis",
            f"{_API}/interventions": "interventions"}.get(path)


class AccessCounter:
    """A WSGI middleware counting, by route (:func:`route_of`, else ``other``), the requests
    from one of ``seats`` (their :data:`SEAT_HEADER`), before the app answers them; and
    how long the app took to make each answer (``app_s``: the body made, not yet sent)."""

    def __init__(self, app: Callable[..., Any], seats: Collection[str]) -> None:
        self.app = app
        self._seats = frozenset(seats)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        # route -> [(at, seconds, CPU seconds of the thread that made the answer)]
        self.app_s: dict[str, list[tuple[float, float, float]]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("HTTP_" + SEAT_HEADER.upper().replace("-", "_")) not in self._seats:
            return self.app(environ, start_response)
        route = route_of(str(environ.get("REQUEST_METHOD", "")),
                         str(environ.get("PATH_INFO", ""))) or "other"
        with self._lock:
            self.counts[route] += 1
        at = time.monotonic()
        t0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            return self.app(environ, start_response)
        finally:
            took, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
            with self._lock:
                self.app_s.setdefault(route, []).append((at, took, cpu))

    def app_ms(self, start: float, end: float) -> dict[str, dict[str, float | None]]:
        """``{route: {"p50", "p95", "cpu_mean"}}`` in ms of the answers begun between the
        monotonic times ``start`` and ``end`` (``cpu_mean``: the CPU time of the thread
        that made each answer)."""
        with self._lock:
            spans = {r: [(s, c) for at, s, c in v if start <= at < end]
                     for r, v in self.app_s.items()}
        return {r: {"p50": _ms([s * 1000.0 for s, _ in v], 50),
                    "p95": _ms([s * 1000.0 for s, _ in v], 95),
                    "cpu_mean": round(sum(c for _, c in v) / len(v) * 1000.0, 2) if v else None}
                for r, v in spans.items() if r in ROUTES}


def audited_commands(store: Any, since: float, users: Collection[str]) -> int:
    """``command.submit`` entries of the audit trail by ``users`` since ``since``."""
    n = 0
    before: str | None = None
    while True:
        rows, before = store.page("audit", limit=1000, before=before, since=since,
                                  match={"action": "command.submit"})
        n += sum(1 for row in rows if row.get("user") in users)
        if before is None:
            return n


# -- the load generator (its own process) ---------------------------------------------
@dataclass
class _Tally:
    """One route's figures as the load generator keeps them."""

    sent: int = 0  # every phase
    window_ms: list[float] = field(default_factory=list)  # 2xx answers in the window
    window_bytes: int = 0  # their bodies
    errors: Counter[str] = field(default_factory=Counter)  # in the window, by status


class _Operator:
    """One operator's loop (module doc), on his own keep-alive connection."""

    def __init__(self, seat: Mapping[str, Any], plan: Mapping[str, Any], rng: random.Random,
                 tallies: dict[str, _Tally], lock: threading.Lock) -> None:
        parts = urlsplit(str(plan["base_url"]))
        self._where = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seat = seat
        self.plan = plan
        self.rng = rng
        self.tallies = tallies
        self.lock = lock
        self.seen: deque[str] = deque(maxlen=_SEEN_IDS)
        self.conn: http.client.HTTPConnection | None = None
        self.cookies: dict[str, str] = {}
        self.csrf = ""
        self.logged_in = False

    def headers(self, method: str, *, seat: bool = True) -> dict[str, str]:
        """The login session's headers: its cookie, and its CSRF token on a change."""
        out = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if method not in ("GET", "HEAD"):
            out[CSRF_HEADER] = self.csrf
            out["Content-Type"] = "application/json"
        if seat:
            out[SEAT_HEADER] = str(self.seat["name"])
        return out

    def login(self, deadline: float, stop: threading.Event) -> bool:
        """Log in through the form, then read the session's CSRF token from a page."""
        while not stop.is_set() and time.monotonic() < deadline:
            self.cookies.clear()
            status, raw, _ = self.send("GET", "/login", None, seat=False)
            form = _FORM_CSRF.search(raw) if status == 200 else None
            if form is not None:
                fields = urlencode({"name": self.seat["name"], "password": self.seat["password"],
                                    CSRF_FIELD: form.group(1).decode(), "next": "/"}).encode()
                status, raw, _ = self.send("POST", "/login", fields, seat=False,
                                           content_type="application/x-www-form-urlencoded")
                if status == 302:
                    status, raw, _ = self.send("GET", "/", None, seat=False)
                    meta = _META_CSRF.search(raw) if status == 200 else None
                    if meta is not None:
                        self.csrf = meta.group(1).decode()
                        self.logged_in = True
                        return True
            if status not in (0, 429, 503):
                return False  # refused for good (a wrong password, say)
            stop.wait(1.0)
        return False

    def request_for(self, route: str) -> tuple[str, str, bytes | None]:
        """``(method, path, body)`` of the next request on ``route``."""
        seat, rng = self.seat, self.rng
        if route == "equipment_detail" and self.seen:
            return "GET", f"{_API}/equipment/{rng.choice(self.seen)}", None
        if route == "commands" and seat["targets"]:
            target = rng.choice(seat["targets"])
            body = {"action": "set", "params": _params(target, self.plan, rng)}
            return ("POST", f"{_API}/equipment/{target['id']}/commands",
                    json.dumps(body).encode())
        if route in ("equipment_list", "equipment_detail", "commands"):
            # No id seen yet, or nothing to command: the list first.
            query: dict[str, Any] = {"limit": rng.choice(LIST_LIMITS)}
            kinds = seat["commands"] if seat["commands"] and rng.random() < 0.6 else seat["reads"]
            if kinds:
                query["kind"] = rng.choice(kinds)
            towns = seat["municipalities"]
            if towns and rng.random() < 0.8:
                query["municipality"] = rng.choice(towns)
            elif not towns and rng.random() < 0.5:
                query["municipality"] = rng.choice(self.plan["municipalities"])
            return "GET", f"{_API}/equipment?{urlencode(query)}", None
        return "GET", f"{_API}/{route}", None

    def send(self, method: str, path: str, body: bytes | None, *, seat: bool = True,
             content_type: str | None = None) -> tuple[int, bytes, float]:
        """``(status, body, seconds)``; status 0 when no answer came. The session's cookie
        is kept up to date with what the answer sets."""
        headers = self.headers(method, seat=seat)
        if content_type is not None:
            headers["Content-Type"] = content_type
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(*self._where, timeout=_HTTP_TIMEOUT_S)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
            status = resp.status
            for header in resp.headers.get_all("Set-Cookie") or ():
                jar = http.cookies.SimpleCookie()
                jar.load(header)
                for name, morsel in jar.items():
                    if morsel["max-age"] == "0" or not morsel.value:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b"", time.perf_counter() - t0
        return status, raw, time.perf_counter() - t0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def loop(self, t0: float, window: tuple[float, float], stop: threading.Event) -> None:
        routes = list(ROUTE_MIX)
        weights = [ROUTE_MIX[r] for r in routes]
        think = float(self.plan["think_s"])
        # Operators sit down one after the other, not all in the same millisecond.
        if stop.wait(self.rng.uniform(0.0, think)):
            return
        if not self.login(time.monotonic() + _LOGIN_DEADLINE_S, stop):
            self.close()
            return
        while not stop.is_set():
            route = self.rng.choices(routes, weights)[0]
            method, path, body = self.request_for(route)
            actual = route_of(method, path.partition("?")[0]) or route
            started = time.monotonic() - t0
            status, raw, seconds = self.send(method, path, body)
            counted = window[0] <= started < window[1]
            with self.lock:
                tally = self.tallies[actual]
                tally.sent += 1
                if counted and 200 <= status < 300:
                    tally.window_ms.append(seconds * 1000.0)
                    tally.window_bytes += len(raw)
                elif counted:
                    tally.errors[str(status)] += 1
            if actual == "equipment_list" and status == 200:
                self._remember(raw)
            stop.wait(self.rng.expovariate(1.0 / think))
        self.close()

    def _remember(self, raw: bytes) -> None:
        try:
            items = json.loads(raw)
        except ValueError:
            return
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self.seen.append(item["id"])


def _params(target: Mapping[str, Any], plan: Mapping[str, Any], rng: random.Random
            ) -> dict[str, Any]:
    """A command ``target``'s kind accepts, as an operator sends it."""
    kind = target["kind"]
    if kind == "lighting_circuit":
        return {"dim": rng.randrange(10, 101)}
    if kind == "crossroad":
        return {"plan": rng.choice(plan["signal_plans"]), "for_s": OVERRIDE_S,
                "reason": "operator override from the command post"}
    if kind == "camera":
        return {"preset": rng.choice(target["presets"])}
    return {"message": "Call the command post on channel 2"}


def load(plan: Mapping[str, Any], out: IO[str]) -> dict[str, Any]:
    """Run every seat's operator for ``warmup_s + seconds`` (module doc); write
    ``{"event": "window_start"}`` and ``{"event": "window_end"}`` lines to ``out`` as the
    counted window opens and closes, and return the tallies by route."""
    rng = random.Random(int(plan["seed"]))
    tallies = {route: _Tally() for route in ROUTES}
    lock = threading.Lock()
    stop = threading.Event()
    warmup, seconds = float(plan["warmup_s"]), float(plan["seconds"])
    t0 = time.monotonic()
    operators = [_Operator(seat, plan, random.Random(rng.random()), tallies, lock)
                 for seat in plan["seats"]]
    threads = [threading.Thread(target=op.loop, args=(t0, (warmup, warmup + seconds), stop),
                                name=f"operator-{op.seat['name']}", daemon=True)
               for op in operators]
    for t in threads:
        t.start()
    for event, at in (("window_start", warmup), ("window_end", warmup + seconds)):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        out.write(json.dumps({"event": event}) + "\n")
        out.flush()
    stop.set()
    for t in threads:
        t.join(_HTTP_TIMEOUT_S + 5.0)
    return {"routes": {route: {"sent": t.sent, "window_ms": t.window_ms,
                               "bytes": t.window_bytes, "errors": dict(t.errors)}
                       for route, t in tallies.items()},
            "logins": {"ok": sum(1 for op in operators if op.logged_in),
                       "failed": sum(1 for op in operators if not op.logged_in)}}


def _main() -> int:
    """The load generator's process: the plan as JSON on stdin, event lines then
    ``{"event": "result", "routes": …, "logins": …}`` on stdout."""
    plan = json.loads(sys.stdin.read())
    result = load(plan, sys.stdout)
    sys.stdout.write(json.dumps({"event": "result", **result}) + "\n")
    sys.stdout.flush()
    return 0


# -- figures ----------------------------------------------------------------------------
def _ms(values: Sequence[float], q: float) -> float | None:
    return round(percentile(values, q), 2) if values else None


def summarize(routes: Mapping[str, Mapping[str, Any]], window_s: float) -> dict[str, Any]:
    """Per route and overall figures from the load generator's tallies."""
    out: dict[str, Any] = {}
    everything: list[float] = []
    errors = 0
    for route in ROUTES:
        tally = routes.get(route) or {}
        ms = [float(v) for v in tally.get("window_ms", ())]
        codes = {str(k): int(v) for k, v in (tally.get("errors") or {}).items()}
        everything += ms
        errors += sum(codes.values())
        out[route] = {"requests": len(ms) + sum(codes.values()), "p50_ms": _ms(ms, 50),
                      "p95_ms": _ms(ms, 95), "p99_ms": _ms(ms, 99),
                      "max_ms": round(max(ms), 2) if ms else None,
                      "errors": sum(codes.values()), "error_codes": codes,
                      "kb_mean": (round(int(tally.get("bytes", 0)) / len(ms) / 1024, 1)
                                  if ms else None)}
    requests = len(everything) + errors
    p95 = _ms(everything, 95)
    met = (p95 is not None and p95 <= TARGET_P95_MS and errors == 0
           and all(r["p95_ms"] is not None and r["p95_ms"] <= TARGET_P95_MS
                   for r in out.values()))
    return {"requests": requests, "routes": out, "p50_ms": _ms(everything, 50), "p95_ms": p95,
            "p99_ms": _ms(everything, 99), "errors": errors,
            "requests_per_s": round(requests / window_s, 1) if window_s > 0 else None,
            "met": met}


def _read_event(proc: subprocess.Popen[str], want: str) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RetryableError(f"the load generator ended before {want} (exit "
                             f"{proc.wait(10)})")
    try:
        doc = json.loads(line)
    except ValueError:
        raise ProtocolError(f"the load generator wrote {line[:200]!r}") from None
    if not isinstance(doc, dict) or doc.get("event") != want:
        raise ProtocolError(f"the load generator wrote {line[:200]!r}, not {want}")
    return doc


def _load_process() -> subprocess.Popen[str]:
    """The load generator, this module run apart, importing this very code."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "runtime.bench.admin"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _busy_cpu_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (not idle or waiting)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.system + sum(getattr(t, name, 0.0)
                                         for name in ("nice", "irq", "softirq")))


def _cores(values: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
        seconds: float = DURATION_S, warmup_s: float = WARMUP_S, operators: int = OPERATORS,
        think_s: float = THINK_S, seed: int = 0, devices: bool = True, spares: int = 1,
        **_: Any) -> dict[str, Any]:
    """The figures of this bench (module doc). ``devices`` and ``spares`` make a lighter
    city (tests: no simulators nor device sessions, no warm spare), listed in
    ``left_out``."""
    from actors.signal_plan import builtin_signal_plans

    if operators < 1 or seconds <= 0 or warmup_s < 0 or think_s <= 0:
        raise ConfigError("the admin bench needs operators >= 1, seconds > 0, warmup_s >= 0 "
                          "and think_s > 0")
    rng = random.Random(seed)
    with City(scale=scale, say=say, broker=broker, devices=devices, spares=spares) as city:
        admin = ApiClient(city.admin_url, city.token("admin"))
        try:
            seats = add_operators(admin, plan_seats(city.inventory, operators, rng))
        finally:
            admin.close()
        counter = AccessCounter(city.app.wsgi_app, {s.name for s in seats})
        city.app.wsgi_app = counter
        redis_server = city.svc.redis
        groups = {"server": {os.getpid()},
                  "redis": {redis_server.pid} if redis_server is not None else set(),
                  **city.process_groups()}
        say(f"{len(seats)} operators added ({sum(1 for s in seats if not s.municipalities)} "
            f"over the whole metropolis); {warmup_s:g} s of warm-up, {seconds:g} s counted, "
            f"think time {think_s:g} s; {machine()}")
        plan = {"base_url": city.admin_url, "think_s": think_s, "warmup_s": warmup_s,
                "seconds": seconds, "seed": seed,
                "municipalities": [m.slug for m in city.inventory.municipalities],
                "signal_plans": builtin_signal_plans().numbers(),
                "seats": [asdict(s) for s in seats]}
        since = time.time()
        proc = _load_process()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(plan))
            proc.stdin.close()
            _read_event(proc, "window_start")
            opened = time.monotonic()
            meter = CpuMeter({**groups, "client": {proc.pid}})
            busy0 = _busy_cpu_s()
            meter.start()
            _read_event(proc, "window_end")
            cores = meter.stop()
            busy = (_busy_cpu_s() - busy0) / meter.window_s
            closed = time.monotonic()
            result = _read_event(proc, "result")
            routes, logins = result["routes"], result["logins"]
            if proc.wait(30) != 0:
                raise RetryableError(f"the load generator exited {proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        figures = summarize(routes, meter.window_s)
        figures["met"] = figures["met"] and logins["failed"] == 0
        sent = {route: int(routes[route]["sent"]) for route in ROUTES}
        received = dict(counter.counts)
        commands_audited = audited_commands(city.svc.store, since, {s.name for s in seats})
        counted = {"client_sent": sum(sent.values()), "server_received": sum(received.values()),
                   "by_route": {r: {"client": sent[r], "server": received.get(r, 0)}
                                for r in ROUTES},
                   "commands_sent": sent["commands"], "commands_audited": commands_audited}
        say(f"{figures['requests']} requests counted, p95 {figures['p95_ms']} ms, "
            f"{figures['errors']} errors"
            + (" (" + ", ".join(f"{r}: {v['error_codes']}" for r, v in
                                figures["routes"].items() if v["errors"]) + ")"
               if figures["errors"] else "")
            + f"; target p95 <= {TARGET_P95_MS:g} ms {'met' if figures['met'] else 'NOT met'}")
        return {
            "operators": len(seats),
            **figures,
            "logins": logins,
            "target_p95_ms": TARGET_P95_MS,
            "counted": counted,
            "app_ms": counter.app_ms(opened, closed),
            **{f"{role}_cpu": value for role, value in _cores(cores).items()},
            "machine_busy_cpu": round(busy, 3),
            # What ran on the machine besides the city and this bench (others' work).
            "other_cpu": round(max(0.0, busy - sum(v for k, v in cores.items()
                                                   if k not in ("server", "redis"))), 3),
            "window_s": round(meter.window_s, 1),
            "warmup_s": warmup_s,
            "think_s": think_s,
            "mix": dict(ROUTE_MIX),
            "whole_metropolis_seats": sum(1 for s in seats if not s.municipalities),
            "scale": scale,
            "broker": city.broker_kind,
            "machine": machine(),
            "left_out": list(city.left_out),
        }


if __name__ == "__main__":
    sys.exit(_main())
