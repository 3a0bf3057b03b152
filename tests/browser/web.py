"""A tab of a real Chromium on the admin web, and the screenshots it leaves behind.

The browser tests drive Debian's ``chromium`` through Playwright, never a browser
Playwright downloads. :func:`find_chromium` says where it is (or fails naming the
package to install), :func:`launch` starts it headless with an empty profile, and a
:class:`Web` is one tab in a fresh context (no cookies) whose page visits are shot into
:class:`Screenshots`::

    web.login("operator")                    # through the login form
    web.goto("/")                            # and a screenshot of the overview
    web.page.locator("[data-node-id=root]")  # Playwright's own API for the rest
    web.shot("after-kill")                   # a screenshot of the page as it is now
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Response

#: Debian's package of the browser, named when it is missing.
CHROMIUM_PACKAGE: Final = "chromium"
_CHROMIUM_PATHS: Final = ("/usr/bin/chromium",)

#: What this machine needs of a headless Chromium: no sandbox (tests may run as root),
#: no GPU, and nothing that reaches out to the internet on its own.
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

#: Where screenshots go (git-ignored), unless ``COMMANDPOST_ARTIFACTS`` names another
#: directory; they are in its ``screenshots`` folder.
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts"

#: How long a page may take to answer or an expectation to come true, in ms.
TIMEOUT_MS: Final = 15_000


class BrowserMissing(RuntimeError):
    """No Chromium (or no Playwright) to run the browser tests with."""


def find_chromium() -> str:
    """Path of Debian's ``chromium`` (on PATH, then /usr/bin); :class:`BrowserMissing`
    naming the package when there is none."""
    on_path = shutil.which("chromium")
    if on_path:
        return on_path
    for candidate in _CHROMIUM_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrowserMissing(
        f"the browser tests need Chromium: install Debian's package {CHROMIUM_PACKAGE!r} "
        f"(apt-get install {CHROMIUM_PACKAGE}; `make test` does it when run as root)")


def launch(playwright: Playwright, executable: str) -> Browser:
    """Debian's Chromium, headless, on a temporary empty profile of Playwright's own."""
    return playwright.chromium.launch(
        executable_path=executable, headless=True, args=list(CHROMIUM_ARGS),
        timeout=60_000)


def artifacts_dir() -> Path:
    """The screenshots folder of this run."""
    root = os.environ.get("COMMANDPOST_ARTIFACTS")
    return (Path(root) if root else ARTIFACTS) / "screenshots"


class Screenshots:
    """Numbered PNG files in one folder, emptied of an earlier run's when first made."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        self.taken: list[Path] = []

    def take(self, page: Page, test: str, label: str) -> Path:
        """Shoot the whole of ``page`` as ``<n>-<test>-<label>.png``."""
        name = f"{len(self.taken) + 1:03d}-{_slug(test)}-{_slug(label)}.png"
        path = self.folder / name
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80] or "page"


@dataclass
class Web:
    """One tab on the admin web at ``base``, in a context of its own.

    Navigate with :meth:`goto`, :meth:`login` or :meth:`submit` and every page reached
    is shot; :meth:`shot` shoots the page as it is. Uncaught script errors and
    Content-Security-Policy refusals are kept in :attr:`errors`, which the fixture
    checks is empty after the test.
    """

    page: Page
    base: str
    test: str
    screenshots: Screenshots
    credentials: Mapping[str, Mapping[str, str]]
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("pageerror", lambda exc: self.errors.append(f"script error: {exc}"))
        self.page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(f"CSP: {message.text}")

    def url(self, path: str) -> str:
        return self.base + path

    def shot(self, label: str) -> Path:
        """A screenshot of the page as it is now."""
        return self.screenshots.take(self.page, self.test, label)

    def goto(self, path: str, label: str | None = None) -> Response | None:
        """Open ``path`` of the admin web, then shoot it."""
        response = self.page.goto(self.url(path), wait_until="load")
        self.shot(label or path)
        return response

    def submit(self, button: str, label: str) -> None:
        """Click ``button`` (a selector) of a form, wait for the page it leads to, shoot it."""
        with self.page.expect_navigation(wait_until="load"):
            self.page.click(button)
        self.shot(label)

    def login(self, name: str, password: str | None = None) -> None:
        """Log in as ``name`` through the login form (his own password unless given)."""
        self.goto("/login", f"login-{name}")
        self.page.fill("#name", name)
        self.page.fill("#password", password if password is not None
                       else self.credentials[name]["password"])
        self.submit("form button[type=submit]", f"after-login-{name}")


__all__ = [
    "ARTIFACTS", "CHROMIUM_ARGS", "CHROMIUM_PACKAGE", "BrowserMissing", "Screenshots", "Web",
    "artifacts_dir", "find_chromium", "launch",
]
