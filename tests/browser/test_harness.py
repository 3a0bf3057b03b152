"""The browser harness itself: which Chromium it drives, and what it says without one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import web
from tests.browser.web import BrowserMissing, Screenshots, find_chromium


def test_without_chromium_the_failure_names_debians_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(web, "_CHROMIUM_PATHS", ("/nonexistent/chromium",))
    with pytest.raises(BrowserMissing, match=r"Debian's package 'chromium'.*apt-get install "
                                             r"chromium"):
        find_chromium()


def test_chromium_on_path_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which",
                        lambda name: "/opt/chromium/chromium" if name == "chromium" else None)
    assert find_chromium() == "/opt/chromium/chromium"


def test_a_run_starts_from_an_empty_screenshots_folder(tmp_path: Path) -> None:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    (folder / "001-old-run.png").write_bytes(b"png")
    (folder / "notes.txt").write_text("kept")
    Screenshots(folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
