"""Chromium for the browser tests: where it is, how it is started, and one launch every test module shares.

Each browser test module keeps its own ``browser`` fixture (module scope, so one Chromium per module) and
fills it with :func:`launched_chromium`; a missing Chromium or Playwright skips the module with the reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
# Headless without the sandbox (containers run as root) and without the background traffic a first run
# starts (component updates, sync), which would compete for the two shared cores.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launched_chromium(needed_by: str = "the browser test") -> Iterator[Any]:
    """Yield a launched Playwright Chromium browser and close it afterwards; skip when it cannot run here."""
    if CHROMIUM is None:
        pytest.skip(f"Chromium is not installed (apt-get install chromium); {needed_by} needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip install playwright) drives Chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
