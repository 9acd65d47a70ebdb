"""What the web-UI test modules share: Debian's Chromium (required where HYPERNET_REQUIRE_BROWSER=1, as in CI; the
importing module is skipped elsewhere), Playwright, and the screenshot folder."""

from __future__ import annotations

import os
from pathlib import Path

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
