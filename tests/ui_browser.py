"""What the web-UI test modules share: Debian's Chromium (required where HYPERNET_REQUIRE_BROWSER=1, as in CI; the
importing module is skipped elsewhere), Playwright, and the screenshot folder."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("HYPERNET_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("HYPERNET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")) / "ui"

if not Path(CHROMIUM).is_file():
    if os.environ.get("HYPERNET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def launch(playwright):  # noqa: ANN001, ANN201 - playwright's own types
    """Chromium as every UI test runs it (no sandbox or GPU in containers)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    """One Chromium per test module (import this fixture); each test opens its own page with :func:`open_page`."""
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def open_page(browser, url: str, timeout_ms: int, **context: Any) -> Iterator[Any]:  # noqa: ANN001
    """The web UI at ``url``, loaded, in a browser context of its own: no tab, field or selection left over from
    another test (tests run alone, in any order, or spread over pytest-xdist workers)."""
    own = browser.new_context(viewport={"width": 1400, "height": 1000}, **context)
    own.set_default_timeout(timeout_ms)
    page = own.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#txt2img_prompt textarea")
    try:
        yield page
    finally:
        own.close()


def wait_for_text(page, selector: str, text: str, **options: Any) -> None:  # noqa: ANN001
    """Wait until the element ``selector`` exists (Gradio renders some late) and its text contains ``text``."""
    page.wait_for_function(f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}})"
                           f".innerText.includes({json.dumps(text)})", **options)
