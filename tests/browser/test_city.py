"""The city's pages in Chromium: the overview's map with its counts, the equipment list's
filters and pages, and a lighting circuit's page sending a dim the cabinet acknowledges."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from playwright.sync_api import expect

from tests.browser.web import Web
from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(180)

#: How long the device may take to acknowledge a command, in ms.
ACK_MS = 30_000


def test_the_overview_maps_the_city_with_its_counts(web: Web, running_city: Cluster) -> None:
    web.login("viewer")
    page, equipment = web.page, running_city.inventory.equipment
    expect(page.locator("#city-total")).to_have_text(str(len(equipment)))
    # Each piece of fixed equipment is a dot; vehicles are counted, not drawn.
    drawn = [eq for eq in equipment if eq.kind != "vehicle"]
    expect(page.locator("#city-map circle")).to_have_count(len(drawn))
    for town, n in Counter(eq.municipality for eq in equipment).items():
        expect(page.locator(f'#city-rows tr[data-municipality="{town}"] .count-total')
               ).to_have_text(str(n))
    online = int(page.inner_text("#city-online"))
    offline = int(page.inner_text("#city-offline"))
    assert online + offline == len(equipment)
    web.shot("map")
    # A municipality leads to its equipment.
    town = equipment[0].municipality
    page.click(f'#city-rows tr[data-municipality="{town}"] a')
    page.wait_for_url(re.compile(rf"/equipment\?municipality={town}$"))
    rows = page.locator("#equipment-rows tr[data-entity-id]")
    expect(rows.first).to_be_visible()
    expect(page.locator("#equipment-rows td.municipality")).to_have_text(
        [town] * rows.count())
    web.shot("municipality")


def test_the_equipment_list_filters_and_pages(web: Web, running_city: Cluster) -> None:
    web.login("viewer")
    page = web.page
    circuits = sorted(eq.id for eq in running_city.inventory.equipment
                      if eq.kind == "lighting_circuit")
    web.goto("/equipment")
    page.select_option("#filter-kind", "lighting_circuit")
    page.wait_for_url(re.compile(r"kind=lighting_circuit"))
    expect(page.locator("#equipment-rows tr[data-entity-id]")).to_have_count(len(circuits))
    expect(page.locator("#equipment-rows td.kind")).to_have_text(
        ["lighting_circuit"] * len(circuits))
    web.shot("circuits")
    # Two at a time: the next page starts after the last id shown.
    web.goto("/equipment?kind=lighting_circuit&limit=2")
    expect(page.locator("#equipment-rows tr[data-entity-id]")).to_have_count(2)
    page.click("#next-page")
    page.wait_for_url(re.compile(rf"after={circuits[1]}"))
    expect(page.locator("#equipment-rows tr[data-entity-id]").first).to_have_attribute(
        "data-entity-id", circuits[2])
    expect(page.locator("#first-page")).to_be_visible()
    web.shot("next-page")


def test_a_dim_sent_from_a_circuits_page_is_acked_by_the_device(
        web: Web, running_city: Cluster) -> None:
    web.login("operator")
    page = web.page
    circuit = next(eq.id for eq in running_city.inventory.equipment
                   if eq.kind == "lighting_circuit")
    web.goto(f"/equipment/{circuit}")
    expect(page.locator("#twin-rows tr[data-field]").first).to_be_visible()
    form = page.locator('form[data-action="set"]')
    dim = form.locator('[data-param="dim"]')
    expect(dim).to_have_attribute("max", "100")
    dim.fill("37")
    form.locator("button[type=submit]").click()
    expect(form.locator(".outcome")).to_have_attribute("data-status", "acked", timeout=ACK_MS)
    command = form.locator(".outcome").get_attribute("data-command-id")
    expect(page.locator(f'#command-rows tr[data-command-id="{command}"] .command-status')
           ).to_have_text(re.compile("^acked"))
    web.shot("acked")
    # Out of the kind's range: refused before it is queued, on the field it names.
    dim.fill("300")
    form.locator("button[type=submit]").click()
    expect(form.locator(".form-error")).to_contain_text("outside")
    expect(dim).to_have_attribute("aria-invalid", "true")
    web.shot("refused")


def test_a_viewer_gets_no_command_form(web: Web, running_city: Cluster) -> None:
    web.login("viewer")
    circuit = next(eq.id for eq in running_city.inventory.equipment
                   if eq.kind == "lighting_circuit")
    web.goto(f"/equipment/{circuit}")
    expect(web.page.locator("#actions-note")).to_contain_text("operator role")
    expect(web.page.locator("form.action-form")).to_have_count(0)
