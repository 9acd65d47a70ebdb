"""The web UI's export button in a real browser (Debian's headless Chromium through Playwright), on a tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hypernet.network import Hypernetwork
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.testing import TEXT_WIDTHS, UNET_CHANNELS

pytestmark = pytest.mark.slow  # every test here builds models, servers or browsers

CHROMIUM = os.environ.get("HYPERNET_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    if os.environ.get("HYPERNET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def test_export_button_writes_a_lora_and_bake_button_a_checkpoint(tmp_path) -> None:
    config = tiny_server_config(tmp_path, ui=True)
    Hypernetwork.create("flat", [*TEXT_WIDTHS["sd1"], *UNET_CHANNELS], weight_init="XavierNormal", seed=3).save(
        config.hypernetwork_dir / "flat.pt")
    state = ServerState.start(config)
    with BackgroundServer(create_app(state)) as running, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(running.url + "/")
        page.get_by_role("tab", name="Hypernetworks", exact=True).last.click()
        page.get_by_text("Export as LoRA / bake into the checkpoint").click()
        page.click("#export_network input")
        page.locator("ul[role=listbox] li", has_text="flat").first.click()
        page.click("#export_lora_button")
        page.wait_for_function("document.querySelector('#export_status').innerText.includes('Wrote')")
        assert "exact" in page.inner_text("#export_status")
        assert (config.lora_dir / "flat.safetensors").is_file()
        page.click("#export_bake_button")
        page.wait_for_function("document.querySelector('#export_status').innerText.includes('tiny-sd1+flat')")
        assert (config.models_dir / "tiny-sd1+flat.safetensors").is_file()
        browser.close()
