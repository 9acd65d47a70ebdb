"""The web UI as a newcomer first meets it: a fresh install serving the embedded toy model, nothing touched.
Playwright + Debian's Chromium, as tests/test_server_ui.py; screenshots in $HYPERNET_TEST_ARTIFACTS/ui."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.state import ServerConfig
from hypernet.toy.world import detect_colour, detect_shape

CHROMIUM = os.environ.get("HYPERNET_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("HYPERNET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")) / "ui"
WAIT_MS = 90_000

if not Path(CHROMIUM).is_file():
    if os.environ.get("HYPERNET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """``hypernet serve`` with nothing of the user's: no checkpoint, so the toy model."""
    root = tmp_path_factory.mktemp("fresh")
    config = ServerConfig(models_dir=root / "models", hypernetwork_dir=root / "hypernetworks", data_dir=root / "data",
                          log_dir=root / "logs", outputs_dir=root / "outputs")
    state = ServerState.start(config)
    with BackgroundServer(create_app(state)) as running:
        yield running, state
    state.close()


@pytest.fixture(scope="module")
def page(fresh):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(fresh[0].url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        yield page
        browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_first_generation_with_no_setting_touched_is_the_models_size_and_shown_whole(page, fresh) -> None:
    running, state = fresh
    assert state.model.checkpoint.name == "toy-sd1.safetensors"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "64"
    assert page.locator("#txt2img_cfg input[type=number]").input_value() == "5"
    page.fill("#txt2img_prompt textarea", "a red circle on a white background, center")
    start = time.monotonic()
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_status').innerText.includes('image(s)')")
    seconds = time.monotonic() - start
    img = page.locator("#txt2img_gallery img").first
    img.wait_for()
    shown = img.evaluate("e => ({w: e.naturalWidth, h: e.naturalHeight, fit: getComputedStyle(e).objectFit,"
                         " rendering: getComputedStyle(e).imageRendering, box: e.getBoundingClientRect().toJSON(),"
                         " view: e.closest('.grid-wrap').getBoundingClientRect().toJSON()})")
    assert (shown["w"], shown["h"]) == (64, 64) and shown["fit"] == "contain" and shown["rendering"] == "pixelated"
    box, view = shown["box"], shown["view"]  # the whole image is inside the gallery's visible area: nothing cropped
    assert view["top"] <= box["top"] and box["bottom"] <= view["bottom"] + 1 and box["height"] >= 4 * 64, shown
    image = Image.open(io.BytesIO(page.request.get(img.get_attribute("src")).body())).convert("RGB")
    assert image.size == (64, 64) and (detect_colour(image), detect_shape(image)) == ("red", "circle")
    shot(page, "toy-1-first-generation")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "toy-first-generation.json").write_text(json.dumps({"seconds_click_to_image": round(seconds, 2)}))
    print(f"first generation: {seconds:.2f} s from click to image")
