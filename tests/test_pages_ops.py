"""The operators' pages (alarms, crisis, interventions, priority, energy, audit) as shells.

Each page is served to a logged-in user only, the audit page to admins only; its
markup carries the hooks its script and the browser tests rely on, names the
page's own script, and holds nothing the Content-Security-Policy would refuse
(no inline script, handler or style). The audit API's filters the audit page
uses (action and its family, outcome, a time range) are checked here on the
StaticBackend; tests/test_admin_history.py checks them on Redis.
"""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from typing import Any

import pytest
from flask.testing import FlaskClient

from admin_web import Role, StaticBackend, UserRegistry, create_app
from admin_web.api import ALARM_PRIORITIES, ALARM_STATES
from admin_web.backend import CRISIS_MODES
from admin_web.interventions import INTERVENTION_STATES
from admin_web.ops_pages import ALARM_STATE_LABELS, PRIORITY_ORDER
from runtime.audit import AuditRecord

PASSWORD = "correct horse battery"

#: Each page, the role it needs, its script, and the ids its script and tests rely on.
PAGES: dict[str, tuple[Role, str, tuple[str, ...]]] = {
    "/alarms": (Role.VIEWER, "ops-alarms.js", (
        "alarms-page", "alarm-counts", "alarm-filters", "alarm-table", "alarm-rows",
        "ack-selected", "select-all", "alarm-error", "shelve-dialog", "shelve-form",
        "shelve-minutes", "shelve-reason")),
    "/crisis": (Role.VIEWER, "ops-crisis.js", (
        "crisis-page", "crisis-form", "crisis-mode", "crisis-activate", "crisis-normal",
        "crisis-table", "crisis-rows", "crisis-error", "crisis-select-all")),
    "/interventions": (Role.VIEWER, "ops-interventions.js", (
        "interventions-page", "intervention-filters", "intervention-table",
        "intervention-rows", "intervention-detail", "detail-timeline", "request-table",
        "request-rows", "call-desk", "request-form", "request-category", "request-lat",
        "request-lon", "request-error")),
    "/priority": (Role.VIEWER, "ops-priority.js", (
        "priority-page", "priority-granted", "priority-refused", "priority-p50",
        "priority-p99", "latency-chart", "priority-members")),
    "/energy": (Role.VIEWER, "ops-energy.js", (
        "energy-page", "energy-filters", "energy-municipality", "energy-night-savings",
        "energy-nights", "energy-muni-savings", "energy-municipalities", "energy-error")),
    "/audit": (Role.ADMIN, "ops-audit.js", (
        "audit-page", "audit-filters", "audit-table", "audit-rows", "audit-older",
        "audit-newer", "audit-error")),
}


@pytest.fixture(scope="module")
def users() -> UserRegistry:
    registry = UserRegistry()
    registry.add("admin", Role.ADMIN, password=PASSWORD)
    registry.add("operator", Role.OPERATOR, municipalities=["dijon", "talant"],
                 password=PASSWORD)
    registry.add("viewer", Role.VIEWER, password=PASSWORD)
    return registry


def make_client(users: UserRegistry, backend: StaticBackend | None = None) -> FlaskClient:
    backend = backend or StaticBackend(equipment={"lc-dijon-1": "dijon",
                                                  "lc-talant-1": "talant"})
    return create_app(backend, users, secret_key=b"p" * 32).test_client()


def login(client: FlaskClient, name: str) -> FlaskClient:
    html = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None
    response = client.post("/login", data={"name": name, "password": PASSWORD,
                                           "csrf_token": match.group(1), "next": "/"})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


class _Markup(HTMLParser):
    """The ids, script sources, style sheets and CSP offences of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.scripts: list[str | None] = []
        self.sheets: list[str] = []
        self.offences: list[str] = []
        self.attrs: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
            self.attrs[str(found["id"])] = found
        if tag == "script":
            self.scripts.append(found.get("src"))
        if tag == "link" and found.get("rel") == "stylesheet":
            self.sheets.append(str(found.get("href")))
        if tag == "style":
            self.offences.append("<style>")
        for name in found:
            if name == "style" or name.startswith("on"):
                self.offences.append(f"<{tag} {name}>")


def markup(html: str) -> _Markup:
    parser = _Markup()
    parser.feed(html)
    return parser


# -- who gets the pages --------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PAGES))
def test_an_anonymous_visitor_is_sent_to_the_login_form(users: UserRegistry,
                                                         path: str) -> None:
    response = make_client(users).get(f"{path}?state=all")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert path in response.headers["Location"]


@pytest.mark.parametrize("path", sorted(p for p, (role, _, _) in PAGES.items()
                                        if role is Role.VIEWER))
@pytest.mark.parametrize("who", ["viewer", "operator", "admin"])
def test_every_user_gets_the_operators_pages(users: UserRegistry, path: str, who: str) -> None:
    client = login(make_client(users), who)
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    page = markup(response.get_data(as_text=True))
    root = next(i for i in PAGES[path][2] if i.endswith("-page"))
    assert page.attrs[root]["data-role"] == who


@pytest.mark.parametrize("who", ["viewer", "operator"])
def test_the_audit_page_is_for_admins_only(users: UserRegistry, who: str) -> None:
    client = login(make_client(users), who)
    response = client.get("/audit")
    assert response.status_code == 403
    assert "admin" in response.get_data(as_text=True)
    # Nor is it linked in his bar.
    assert 'href="/audit"' not in client.get("/alarms").get_data(as_text=True)


def test_an_admin_gets_the_audit_page(users: UserRegistry) -> None:
    client = login(make_client(users), "admin")
    response = client.get("/audit")
    assert response.status_code == 200
    assert 'href="/audit" aria-current="page"' in response.get_data(as_text=True)


# -- what the shells hold ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PAGES))
def test_each_shell_has_its_hooks_and_scripts_and_nothing_inline(users: UserRegistry,
                                                                 path: str) -> None:
    _, script, ids = PAGES[path]
    client = login(make_client(users), "admin")
    html = client.get(path).get_data(as_text=True)
    page = markup(html)
    assert set(ids) <= page.ids, set(ids) - page.ids
    assert page.offences == []
    # Scripts by source only: app.js first (cp), then the shared one, then the page's own.
    assert page.scripts == ["/static/app.js", "/static/ops-common.js", f"/static/{script}"]
    assert "/static/ops.css" in page.sheets
    assert f'href="{path}" aria-current="page"' in html
    # The page's script and style sheet are served, as this policy allows: from here.
    for asset in (script, "ops-common.js", "ops.css"):
        served = client.get(f"/static/{asset}")
        assert served.status_code == 200, asset
        assert served.data
        served.close()


def test_the_operator_shell_names_his_municipalities(users: UserRegistry) -> None:
    client = login(make_client(users), "operator")
    page = markup(client.get("/crisis").get_data(as_text=True))
    assert page.attrs["crisis-page"]["data-municipalities"] == "dijon talant"
    admin = login(make_client(users), "admin")
    page = markup(admin.get("/crisis").get_data(as_text=True))
    assert page.attrs["crisis-page"]["data-municipalities"] == ""  # every one


def test_the_alarm_page_offers_every_state_and_priority_of_the_api(users: UserRegistry) -> None:
    assert set(ALARM_STATE_LABELS) == ALARM_STATES
    assert set(PRIORITY_ORDER) == ALARM_PRIORITIES
    html = login(make_client(users), "viewer").get("/alarms").get_data(as_text=True)
    for state in ALARM_STATES:
        assert f'<option value="{state}">' in html
    for priority in ALARM_PRIORITIES:
        assert f'data-priority="{priority}"' in html
    assert "Suppressed by design" in html and "Returned to normal, unacknowledged" in html
    # The shelving dialog holds the API's bound on minutes.
    assert 'max="10080"' in html


def test_the_crisis_page_offers_the_documented_modes(users: UserRegistry) -> None:
    html = login(make_client(users), "operator").get("/crisis").get_data(as_text=True)
    offered = re.findall(r'<option value="([a-z_]+)">', html)
    assert offered == [m for m in CRISIS_MODES if m != "normal"]
    assert 'id="crisis-normal"' in html


def test_the_interventions_page_filters_by_every_state(users: UserRegistry) -> None:
    html = login(make_client(users), "viewer").get("/interventions").get_data(as_text=True)
    for state in INTERVENTION_STATES:
        assert f'<option value="{state}">{state}</option>' in html


def test_the_scripts_act_through_the_documented_routes() -> None:
    """Every API path a page's script calls is one the app serves (a renamed route would
    otherwise leave a page silently empty)."""
    from pathlib import Path

    static = Path(__file__).resolve().parents[1] / "admin_web" / "static"
    calls = {
        "ops-alarms.js": ["/alarms", "/alarms/${", "/crisis"],
        "ops-crisis.js": ['"/crisis"'],
        "ops-interventions.js": ["/interventions", "/requests", "/open311/v2/requests.json",
                                 "/open311/v2/services.json"],
        "ops-priority.js": ['"/priority"'],
        "ops-energy.js": ["/energy"],
        "ops-audit.js": ['"/audit"', "X-Next-Before"],
    }
    for script, needles in calls.items():
        text = (static / script).read_text()
        for needle in needles:
            assert needle in text, (script, needle)
    alarms = (static / "ops-alarms.js").read_text()
    for action in ("ack", "shelve", "unshelve", "out-of-service", "return-to-service"):
        assert f'"{action}"' in alarms
    # No inline style by attribute from a script either: the policy would refuse it.
    for script in static.glob("ops-*.js"):
        assert 'setAttribute("style"' not in script.read_text()
        assert "innerHTML" not in script.read_text()


# -- the pages' reads with the session -----------------------------------------------------


def _alarm(aid: str, town: str, state: str, priority: str = "high",
           **extra: Any) -> dict[str, Any]:
    source, condition = aid.split(".")
    return {"id": aid, "source": source, "condition": condition, "priority": priority,
            "state": state, "active": True, "municipality": town, "raised_ts": 1.7e9,
            "acked_by": None, "acked_ts": None, "shelved_until": None, "suppressed_by": None,
            "group": None, "count": 1, "message": f"{condition} at {source}", **extra}


def test_the_alarm_page_reads_and_acts_with_its_session(users: UserRegistry) -> None:
    backend = StaticBackend(
        equipment={"bld-dijon-1": "dijon", "lc-talant-1": "talant", "lc-quetigny-1": "quetigny"},
        alarms=[_alarm("bld-dijon-1.fire", "dijon", "unacknowledged", "critical"),
                _alarm("lc-quetigny-1.lamp_failure", "quetigny", "unacknowledged"),
                _alarm("path-a.flood_summary", "talant", "unacknowledged", count=2),
                _alarm("lc-talant-1.device_offline", "talant", "unacknowledged",
                       group="path-a.flood_summary")])
    client = login(make_client(users, backend), "operator")
    html = client.get("/alarms").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert token is not None
    # What the page polls: its municipalities' alarms, summaries without their children.
    listed = client.get("/api/v1/alarms")
    assert [a["id"] for a in listed.get_json()] == ["bld-dijon-1.fire",
                                                    "path-a.flood_summary"]
    etag = listed.headers["ETag"]
    assert client.get("/api/v1/alarms", headers={"If-None-Match": etag}).status_code == 304
    children = client.get("/api/v1/alarms?group=path-a.flood_summary").get_json()
    assert [a["id"] for a in children] == ["lc-talant-1.device_offline"]
    # Its buttons: with the page's CSRF token the action is taken, without it refused.
    assert client.post("/api/v1/alarms/bld-dijon-1.fire/ack", json={}).status_code == 403
    ack = client.post("/api/v1/alarms/bld-dijon-1.fire/ack", json={},
                      headers={"X-CSRF-Token": token.group(1)})
    assert ack.status_code == 202
    shelve = client.post("/api/v1/alarms/bld-dijon-1.fire/shelve",
                         json={"minutes": 30, "reason": "crew on site"},
                         headers={"X-CSRF-Token": token.group(1)})
    assert shelve.status_code == 202
    # Out of service is an admin's: the page shows the API's refusal.
    oos = client.post("/api/v1/alarms/bld-dijon-1.fire/out-of-service", json={},
                      headers={"X-CSRF-Token": token.group(1)})
    assert oos.status_code == 403 and "admin" in oos.get_json()["error"]


# -- the audit filters the audit page uses -------------------------------------------------


@pytest.fixture
def audited() -> tuple[FlaskClient, StaticBackend, float]:
    users = UserRegistry()
    users.add("admin", Role.ADMIN, password=PASSWORD, token="admin-token-" + "a" * 20)
    backend = StaticBackend()
    t0 = time.time() - 100
    for n, (who, action, outcome) in enumerate([
            ("ana", "alarm.ack", "ok"), ("ana", "alarm.shelve", "refused"),
            ("bob", "alarms.export", "ok"), ("bob", "crisis.activate", "ok"),
            ("ana", "alarm", "ok")]):
        backend.audit(AuditRecord(user=who, action=action, outcome=outcome, ts=t0 + 10 * n,
                                  code="" if outcome == "ok" else "403"))
    client = create_app(backend, users, secret_key=b"p" * 32).test_client()
    return client, backend, t0


def _audit(client: FlaskClient, query: str) -> tuple[int, Any]:
    response = client.get(f"/api/v1/audit?{query}",
                          headers={"Authorization": "Bearer admin-token-" + "a" * 20})
    return response.status_code, response.get_json()


def test_the_audit_filters_by_action_family_outcome_and_time(
        audited: tuple[FlaskClient, StaticBackend, float]) -> None:
    client, _, t0 = audited
    status, body = _audit(client, "action=alarm")
    assert status == 200
    assert [e["action"] for e in body] == ["alarm", "alarm.shelve", "alarm.ack"]
    assert [e["action"] for e in _audit(client, "action=alarm.ack")[1]] == ["alarm.ack"]
    assert [e["action"] for e in _audit(client, "outcome=refused")[1]] == ["alarm.shelve"]
    assert [e["action"] for e in _audit(client, "user=bob&outcome=ok")[1]] == [
        "crisis.activate", "alarms.export"]
    window = _audit(client, f"since={t0 + 5}&until={t0 + 30}")[1]
    assert [e["action"] for e in window] == ["alarms.export", "alarm.shelve"]
    assert _audit(client, "outcome=&until=&action=")[1] == _audit(client, "")[1]


@pytest.mark.parametrize(("query", "field"), [
    ("outcome=maybe", "outcome"), ("until=soon", "until"), ("until=-1", "until"),
    ("since=100&until=100", "until"), ("action=" + "a" * 201, "action")])
def test_bad_audit_filters_are_422(audited: tuple[FlaskClient, StaticBackend, float],
                                   query: str, field: str) -> None:
    status, body = _audit(audited[0], query)
    assert status == 422 and body["field"] == field
