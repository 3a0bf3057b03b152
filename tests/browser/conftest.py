"""Fixtures of the browser tests: one small city, one Chromium, a fresh tab per test.

``city`` is a whole runtime (Ray hosts over field simulators, whose control channel is
at ``city.svc.sim_control_url``, Redis, the broker, the admin web behind waitress, with
Open311) with the demo users ``admin``, ``operator`` and ``viewer``
(their passwords and tokens in ``city.creds``); it is shared by every test of this
folder and stopped after the last of them. ``browser`` is Debian's Chromium driven by
Playwright; ``web`` a tab of it in a context of its own (no cookies), logged in by
nobody (:meth:`tests.browser.web.Web.login`). Each page visited is shot into
``test-artifacts/screenshots``, whose path the run prints at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from runtime.demo_inventory import DemoPorts, generate_demo
from runtime.inventory import parse_inventory
from tests.browser.web import BrowserMissing, Screenshots, Web, artifacts_dir, find_chromium, launch
from tests.conftest import Cluster, kill_leftover_actors, poll, start_cluster

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: The smallest demo city that still has a host of every domain.
SCALE = 0.02

_screenshots: Screenshots | None = None


@pytest.fixture(scope="package")
def city(shared_ray: None) -> Iterator[Cluster]:
    kill_leftover_actors()
    inv = parse_inventory(generate_demo(scale=SCALE, seed=7, ports=DemoPorts.free()), "<browser>")
    yield from start_cluster(inv, {}, devices=True)


@pytest.fixture
def running_city(city: Cluster) -> Cluster:
    """``city`` with every host running and health ``ok`` (a kill before is over)."""
    poll(city.all_running, 60, what="every host running")
    poll(lambda: city.health() == "ok", 60, what="health ok")
    return city


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    try:
        executable = find_chromium()
        from playwright.sync_api import sync_playwright
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as playwright:
        chromium = launch(playwright, executable)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Screenshots:
    global _screenshots
    if _screenshots is None:
        _screenshots = Screenshots(artifacts_dir())
    return _screenshots


@pytest.fixture
def web(browser: Browser, city: Cluster, screenshots: Screenshots,
        request: pytest.FixtureRequest) -> Iterator[Web]:
    """A fresh tab on the city's admin web; its last state is shot when the test ends."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tab = Web(context.new_page(), city.http.base, request.node.name, screenshots,
                  city.creds)
        yield tab
        tab.shot("end")
        assert not tab.errors, tab.errors
    finally:
        context.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _screenshots is not None and _screenshots.taken:
        terminalreporter.write_line(
            f"browser screenshots: {len(_screenshots.taken)} in {_screenshots.folder}")
