"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium.

Without the browser (or the UI's layout library, which `make ui` builds with npm) the tests skip,
saying why; with ``LINKFLOW_REQUIRE_BROWSER=1`` (CI) they
fail instead. Each test leaves a screenshot of where it ended (pass or fail) under
``artifacts/browser/`` (gitignored), for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkflow_stream.http.ui import LAYOUT_LIBRARY, assets_dir

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def _missing(reason: str) -> None:
    if os.environ.get("LINKFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LINKFLOW_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def chromium() -> tuple[str, str]:
    """Paths of the browser and its driver (skip, or fail under LINKFLOW_REQUIRE_BROWSER=1).
    Autouse and session-scoped, so a machine without them skips before any engine starts."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    if browser is None or driver is None:
        _missing(
            "Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver)"
        )
    assert browser is not None and driver is not None
    if not assets_dir().joinpath(LAYOUT_LIBRARY).is_file():
        _missing(f"the UI's layout library {LAYOUT_LIBRARY} is not built: run `make ui` (needs npm)")
    return browser, driver


@pytest.fixture
def browser(chromium: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh headless Chromium per test (its own storage: no key left from another test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromium[1]))
    entries: list[dict[str, object]] = []
    try:
        yield driver
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
        entries = driver.get_log("browser")
        (ARTIFACTS / f"{request.node.name}.console.txt").write_text("\n".join(map(str, entries)))
        driver.quit()
    # an uncaught error in the page's scripts fails the test, whatever it asserted
    thrown = [e["message"] for e in entries if e.get("level") == "SEVERE" and e.get("source") == "javascript"]
    assert not thrown, f"the page's scripts threw: {thrown}"
