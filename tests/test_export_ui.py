"""The web UI's export button in a real browser (Debian's headless Chromium through Playwright), on a tiny model."""

from __future__ import annotations


import pytest

from hypernet.network import Hypernetwork
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.testing import TEXT_WIDTHS, UNET_CHANNELS

pytestmark = pytest.mark.slow  # every test here builds models, servers or browsers

from ui_browser import launch, sync_api  # noqa: E402 - skips this module where Chromium is missing


def test_export_button_writes_a_lora_and_bake_button_a_checkpoint(tmp_path) -> None:
    config = tiny_server_config(tmp_path, ui=True)
    Hypernetwork.create("flat", [*TEXT_WIDTHS["sd1"], *UNET_CHANNELS], weight_init="XavierNormal", seed=3).save(
        config.hypernetwork_dir / "flat.pt")
    state = ServerState.start(config)
    with BackgroundServer(create_app(state)) as running, sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
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
