"""The overview in Chromium: the supervision tree, kept live while hosts die and return."""

from __future__ import annotations

import os
import signal

import pytest
from playwright.sync_api import Locator, expect

from tests.browser.web import Web
from tests.conftest import Cluster, poll

pytestmark = pytest.mark.timeout(180)

#: Long enough for a host to be replaced and the page's next poll (every 2 s) to see it.
LIVE_MS = 30_000


def restarts_of(web: Web, node_id: str) -> Locator:
    """The restart count the page shows for node ``node_id`` (not its children's)."""
    return web.page.locator(f'li[data-node-id="{node_id}"] > .meta > .restarts')


def test_overview_shows_the_supervision_tree(web: Web, running_city: Cluster) -> None:
    web.login("viewer")
    tree, hosts = running_city.tree(), running_city.hosts()
    expect(web.page.locator("#health-status")).to_have_text("ok")
    root = web.page.locator('li[data-node-id="root"]')
    expect(root).to_have_attribute("data-status", "running")
    for domain in tree["children"]:
        expect(root.locator(f':scope > ul > li[data-node-id="{domain["id"]}"]')).to_be_visible()
    for host_id, host in hosts.items():
        item = web.page.locator(f'li[data-node-id="{host_id}"]')
        expect(item.locator(":scope > .kind")).to_contain_text("host")
        expect(item.locator(":scope > .meta > .pid")).to_have_text(str(host["pid"]))
        expect(item.locator(":scope > .meta > .entities")).to_have_text(str(host["entities"]))
        expect(restarts_of(web, host_id)).to_have_text(str(host["restarts"]))
    # The page keeps asking with the answer's ETag; an unchanged tree costs a bodyless 304.
    with web.page.expect_response(lambda r: r.url.endswith("/api/v1/tree") and r.status == 304,
                                  timeout=LIVE_MS):
        pass
    web.shot("tree")


def test_a_killed_host_restarts_on_the_page_without_a_reload(
        web: Web, running_city: Cluster) -> None:
    web.login("operator")
    marker = web.page.evaluate("window.__marker = Math.random()")
    target = next(h.host_id for h in running_city.svc.plan.hosts if h.domain == "lighting")
    before = running_city.hosts()[target]
    restarts = restarts_of(web, target)
    expect(restarts).to_have_text(str(before["restarts"]))

    os.kill(before["pid"], signal.SIGKILL)

    expect(restarts).to_have_text(str(before["restarts"] + 1), timeout=LIVE_MS)
    poll(lambda: running_city.hosts()[target]["status"] == "running"
         and running_city.hosts()[target]["pid"] != before["pid"], 60,
         what=f"{target} replaced")
    after = running_city.hosts()[target]
    host = web.page.locator(f'li[data-node-id="{target}"]')
    expect(host.locator(":scope > .meta > .pid")).to_have_text(str(after["pid"]),
                                                               timeout=LIVE_MS)
    expect(host).to_have_attribute("data-status", "running", timeout=LIVE_MS)
    expect(host.locator(":scope > .last-exit")).to_be_visible()
    web.shot(f"{target}-restarted")
    # The same document all along: the script's marker is still there.
    assert web.page.evaluate("window.__marker") == marker
