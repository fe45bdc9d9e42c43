"""
A real browser for the UI checks: the system's Chromium (Debian's ``chromium`` package) driven by
Playwright. ``playwright install`` downloads a browser build of its own, which cannot work offline, so
Playwright is pointed at the installed binary (``executable_path``); without one the tests skip, naming
what to install. ``scripts/test`` installs the package with apt-get when it runs as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Browser, Page

#: Where Debian and Ubuntu put the browser; ``CEREBRAFORM_CHROMIUM`` names another binary.
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Screenshots of the UI checks land here (default: the test's temporary directory).
SCREENSHOTS_ENV = "CEREBRAFORM_SCREENSHOTS"
#: The copies the docs show (docs/connection.md, docs/operators.md).
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``$CEREBRAFORM_CHROMIUM`` or the first one on ``PATH``."""
    named = os.environ.get("CEREBRAFORM_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium binary, or skip the test with the reason and the fix."""
    pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium found (looked for $CEREBRAFORM_CHROMIUM and "
            f"{', '.join(CHROMIUM_CANDIDATES)} on PATH): apt-get install chromium; "
            "`playwright install` downloads a browser and does not work offline"
        )
    return binary


@contextlib.contextmanager
def chromium(binary: str) -> Iterator[Browser]:
    """A headless Chromium from ``binary``, closed (and its processes stopped by Playwright) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to start its sandbox as root (CI runs as root).
        browser = playwright.chromium.launch(
            executable_path=binary, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """Save a full-page screenshot as ``<folder>/<name>.png``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
