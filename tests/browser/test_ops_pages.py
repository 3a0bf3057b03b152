"""The operators' pages in Chromium, on the small city.

A fire raised at a building's BMS simulator shows on the alarm page already open (it
reads the alarms every second) and is acknowledged there; snow is switched on for a
municipality on the crisis panel and back to normal, each activation followed to its
end; a citizen's call filed at the call desk is followed from its request's row to its
intervention. The bus-priority, energy and audit pages are read and shot too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from devices.sim.control import SimControl
from tests.browser.web import Web
from tests.conftest import Cluster, poll

pytestmark = pytest.mark.timeout(300)

#: How long the page may take to show an alarm the API lists: its poll is every second.
ALARM_ON_PAGE_MS = 2_000
#: Long enough for the runtime to take an action or run an activation on a loaded machine.
LIVE_MS = 30_000


def _api(city: Cluster, who: str, method: str, path: str, body: Any = None) -> Any:
    status, answer = city.http.call(method, path, body, token=city.creds[who]["token"])
    assert status < 300, (method, path, status, answer)
    return answer


@pytest.fixture
def fire(running_city: Cluster) -> Iterator[tuple[str, SimControl]]:
    """A building whose fire the test raises at its simulator; put out and reset after."""
    building = next(eq.id for eq in running_city.inventory.equipment if eq.kind == "building")
    control = SimControl(running_city.svc.sim_control_url)
    try:
        yield building, control
    finally:
        control.fault(building, "fire", False)
        running_city.http.call("POST", f"/api/v1/equipment/{building}/commands",
                               {"action": "fire_reset",
                                "params": {"reason": "browser test: fire put out"}},
                               token=running_city.creds["operator"]["token"])


def test_a_fire_at_the_simulator_shows_on_the_open_alarm_page_and_is_acknowledged_there(
        web: Web, running_city: Cluster, fire: tuple[str, SimControl]) -> None:
    building, control = fire
    alarm = f"{building}.fire"
    web.login("operator")
    web.goto("/alarms", "alarms-before-the-fire")
    row = web.page.locator(f'tr[data-alarm-id="{alarm}"]')
    expect(row).to_have_count(0)
    marker = web.page.evaluate("window.__marker = Math.random()")

    raised = time.monotonic()
    control.fault(building, "fire", True)
    poll(lambda: any(a["id"] == alarm for a in _api(running_city, "viewer", "GET",
                                                      "/api/v1/alarms")),
         LIVE_MS / 1000, interval=0.02, what="the fire alarm in the API")
    listed = time.monotonic()
    expect(row).to_be_visible(timeout=ALARM_ON_PAGE_MS)
    shown = time.monotonic()
    print(f"fire alarm: in the API {listed - raised:.2f} s after the fault, on the page "
          f"{shown - listed:.2f} s later")
    expect(row.locator(".state")).to_have_text("unacknowledged")
    expect(row).to_have_attribute("data-priority", "critical")
    expect(web.page.locator('#alarm-counts [data-priority="critical"] .n')).not_to_have_text("0")
    web.shot("fire-alarm-shown")

    row.locator('button[data-action="ack"]').click()
    expect(row.locator(".state")).to_have_text("acknowledged", timeout=LIVE_MS)
    expect(row.locator('button[data-action="ack"]')).to_have_count(0)
    acked = next(a for a in _api(running_city, "viewer", "GET", "/api/v1/alarms?state=all")
                 if a["id"] == alarm)
    assert acked["acked_by"] == "operator"
    web.shot("fire-alarm-acknowledged")
    # The same document all along: the alarm came by the page's own reads.
    assert web.page.evaluate("window.__marker") == marker


def test_snow_switched_on_and_back_on_the_crisis_panel(web: Web, running_city: Cluster) -> None:
    town = "dijon"
    web.login("operator")
    web.goto("/crisis")
    row = web.page.locator(f'#crisis-rows tr[data-municipality="{town}"]')
    expect(row).to_have_attribute("data-mode", "normal")
    web.page.check(f'#crisis-rows input[name="municipality"][value="{town}"]')
    web.page.select_option("#crisis-mode", "snow")
    web.page.click("#crisis-activate")
    expect(row).to_have_attribute("data-mode", "snow", timeout=LIVE_MS)
    progress = row.locator(".progress")
    expect(progress).to_have_attribute("data-pending", "0", timeout=LIVE_MS)
    expect(progress).to_have_attribute("data-failed", "0")
    assert int(progress.get_attribute("data-done") or 0) > 0
    expect(web.page.locator("#crisis-notice")).to_contain_text("done in dijon", timeout=LIVE_MS)
    assert _api(running_city, "viewer", "GET", "/api/v1/crisis")[town]["mode"] == "snow"
    web.shot("snow-on")

    web.page.click("#crisis-normal")
    expect(row).to_have_attribute("data-mode", "normal", timeout=LIVE_MS)
    expect(progress).to_have_attribute("data-pending", "0", timeout=LIVE_MS)
    expect(web.page.locator("#crisis-notice")).to_contain_text("done in dijon", timeout=LIVE_MS)
    assert _api(running_city, "viewer", "GET", "/api/v1/crisis")[town]["mode"] == "normal"
    web.shot("back-to-normal")


def test_a_citizen_request_is_followed_to_its_intervention(web: Web,
                                                           running_city: Cluster) -> None:
    web.login("operator")
    web.goto("/interventions", "call-desk")
    dijon = next(m for m in running_city.inventory.municipalities if m.slug == "dijon")
    web.page.select_option("#request-category", "cleaning")
    web.page.fill("#request-description", "Broken glass all over the pavement")
    web.page.fill("#request-lat", str(dijon.lat))
    web.page.fill("#request-lon", str(dijon.lon))
    web.page.click("#request-submit")
    notice = web.page.locator("#request-notice")
    expect(notice).to_contain_text("filed", timeout=LIVE_MS)
    request_id = notice.inner_text().split()[1]
    web.shot("request-filed")

    # From a fresh page: the request's row, from the public Open311 list, to its intervention.
    web.goto("/interventions", "interventions")
    request_row = web.page.locator(f'#request-rows tr[data-request-id="{request_id}"]')
    expect(request_row).to_be_visible(timeout=LIVE_MS)
    link = request_row.locator('a[data-action="select-intervention"]')
    intervention = link.get_attribute("data-intervention-id")
    assert intervention is not None
    link.click()
    detail = web.page.locator("#intervention-detail")
    expect(detail).to_have_attribute("data-intervention-id", intervention, timeout=LIVE_MS)
    expect(detail.locator('[data-field="origin"]')).to_have_text(
        f"citizen request {request_id}")
    expect(web.page.locator("#detail-timeline li").first).to_have_attribute("data-state", "new")
    assert f"intervention={intervention}" in web.page.url
    listed = web.page.locator(f'#intervention-rows tr[data-intervention-id="{intervention}"]')
    expect(listed).to_have_attribute("data-request-id", request_id)
    record = _api(running_city, "viewer", "GET", f"/api/v1/interventions/{intervention}")
    assert record["request_id"] == request_id
    web.shot("intervention-followed")


def test_priority_and_energy_pages_read_their_reports(web: Web, running_city: Cluster) -> None:
    web.login("viewer")
    web.goto("/priority")
    expect(web.page.locator("#priority-granted")).to_have_text(re.compile(r"\d"), timeout=LIVE_MS)
    members = _api(running_city, "viewer", "GET", "/api/v1/priority")["members"]
    expect(web.page.locator("#priority-members tbody tr")).to_have_count(len(members))
    # Each member's scheduling class, as the member itself reads it.
    for m in members:
        row = web.page.locator(f'#priority-members tr[data-member-id="{m["id"]}"]')
        expect(row.locator("td").last).to_have_text(
            f"real-time {m['realtime']}" if m["realtime"] else "normal")
    web.shot("priority")
    web.goto("/energy")
    expect(web.page.locator("#energy-range")).to_contain_text("nights", timeout=LIVE_MS)
    towns = web.page.locator("#energy-municipalities tbody tr")
    expect(towns).to_have_count(len(running_city.inventory.municipalities), timeout=LIVE_MS)
    expect(web.page.locator("#energy-error")).to_be_hidden()
    web.shot("energy")


def test_the_audit_page_is_an_admins(web: Web, running_city: Cluster) -> None:
    web.login("viewer")
    expect(web.page.locator('.nav a[href="/audit"]')).to_have_count(0)
    response = web.goto("/audit", "audit-refused-to-a-viewer")
    assert response is not None and response.status == 403
    web.submit(".logout button[type=submit]", "logged-out")
    web.login("admin")
    web.goto("/audit?action=login&outcome=ok")
    rows = web.page.locator("#audit-rows tr[data-audit-id]")
    expect(rows.first).to_be_visible(timeout=LIVE_MS)
    for action in rows.evaluate_all("rs => rs.map(r => r.dataset.auditAction)"):
        assert action == "login"
    expect(web.page.locator('#audit-rows tr[data-audit-id] td.mono',
                            has_text="admin").first).to_be_visible()
    web.shot("audit")
