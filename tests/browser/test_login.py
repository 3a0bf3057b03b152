"""Logging in to the admin web through its form, in Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.web import Web
from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(180)


def test_login_form_logs_in_and_shows_who(web: Web, city: Cluster) -> None:
    web.goto("/", "overview-before-login")
    # Not logged in: the overview sends the browser to the form, and back after it.
    assert web.page.url.startswith(web.url("/login"))
    web.page.fill("#name", "operator")
    web.page.fill("#password", city.creds["operator"]["password"])
    web.submit("form button[type=submit]", "after-login")
    assert web.page.url == web.url("/")
    expect(web.page.locator(".who")).to_contain_text("operator")
    expect(web.page.locator(".who .role")).to_have_text("operator")
    expect(web.page.locator("h1", has_text="Supervision tree")).to_be_visible()


def test_wrong_password_shows_the_error_and_keeps_the_name(web: Web) -> None:
    web.login("viewer", password="not-the-password")
    assert web.page.url == web.url("/login")
    expect(web.page.get_by_role("alert")).to_have_text("Wrong name or password.")
    expect(web.page.locator("#name")).to_have_value("viewer")
    expect(web.page.locator(".who")).to_have_count(0)
    # The right password still works after a wrong one.
    web.login("viewer")
    assert web.page.url == web.url("/")
    expect(web.page.locator(".who .role")).to_have_text("viewer")
