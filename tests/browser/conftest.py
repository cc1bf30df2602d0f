"""A real Chromium for the dashboard's tests: Debian's (``/usr/bin/chromium``, or
``EDGEWIRE_CHROMIUM``) driven by Playwright's sync API, with a fake camera that plays a
``.y4m`` file (see ``y4m.py``). Without Chromium or Playwright the tests skip, and the
summary says how to get them; it also says where the screenshots went."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

MISSING = "browser tests skipped: no Chromium; install it with: sudo apt-get install -y chromium"
#: What the terminal summary says (filled in by the fixtures that ran).
_NOTES: dict[str, str] = {}

Launch = Callable[[Path], "Browser"]


def find_chromium() -> str | None:
    given = os.environ.get("EDGEWIRE_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Chromium's executable; the test skips (and the summary says why) without it or
    without Playwright's Python package."""
    path = find_chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        _NOTES["missing"] = MISSING
        pytest.skip(MISSING)
    return path


@pytest.fixture(scope="session")
def screenshots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests put their screenshots (EDGEWIRE_SCREENSHOTS, else a
    ``screenshots`` folder under pytest's base temp)."""
    given = os.environ.get("EDGEWIRE_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    _NOTES["screenshots"] = f"browser screenshots: {folder}"
    return folder


def chromium_args(y4m: Path) -> list[str]:
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
        "--no-sandbox",
    ]


@pytest.fixture
def launch_browser(chromium_path: str) -> Iterator[Launch]:
    """``launch(y4m)``: a headless Chromium whose camera plays ``y4m``. Every browser
    launched, and Playwright itself, is closed when the test ends."""
    from playwright.sync_api import sync_playwright

    manager = sync_playwright()
    playwright = manager.start()
    browsers: list[Any] = []

    def launch(y4m: Path) -> Browser:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=chromium_args(y4m)
        )
        browsers.append(browser)
        return browser

    try:
        yield launch
    finally:
        try:
            for browser in browsers:
                browser.close()
        finally:
            playwright.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Called from here: pytest registers this conftest as a plugin once it collects a
    # test of this folder, and this hook goes to every registered plugin.
    note = _NOTES.get("missing") or _NOTES.get("screenshots")
    if note is not None:
        terminalreporter.write_line(note)
