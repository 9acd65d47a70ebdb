"""The txt2img tab's X/Y/Z plot panel in a real browser (Debian's Chromium through Playwright), on the toy model:
a training run's 3 snapshots x 3 strengths x 2 seeds, every cell equal to a single generation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hypernet.engine.generate import Generator
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.state import ServerConfig
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT

pytestmark = pytest.mark.slow  # every test here builds models, servers or browsers

WAIT_MS = 180_000

from ui_browser import ARTIFACTS, launch, sync_api  # noqa: E402 - skips this module where Chromium is missing


@pytest.fixture(scope="module")
def server(toy_run: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("grid-ui")
    config = ServerConfig(ckpt=CHECKPOINT, models_dir=CHECKPOINT.parent, hypernetwork_dir=toy_run / "hypernetworks",
                          data_dir=root, log_dir=root, outputs_dir=root / "outputs", ui=True)
    with BackgroundServer(create_app(ServerState.start(config))) as running:
        yield running


def test_xyz_plot_panel(server, toy, toy_run: Path, single_image) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.url + "/")
        page.fill("#txt2img_prompt textarea", "a red circle on a white background, top left")
        for elem_id, value in (("txt2img_steps", "4"), ("txt2img_width", "64"), ("txt2img_height", "64"),
                               ("txt2img_cfg", "5")):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(value)
            box.press("Enter")
        page.get_by_text("Script: X/Y/Z plot").click()
        for which, label, values in (("x", "Hypernetwork", "style-1, style-2, style-3"),
                                     ("y", "Hypernet str.", "0.5, 1, 1.5"), ("z", "Seed", "11, 12")):
            page.locator(f"#xyz_{which}_type input").click()
            page.get_by_role("option", name=label, exact=True).filter(visible=True).last.click()  # earlier axes' lists may still be open
            page.fill(f"#xyz_{which}_values textarea", values)
        page.locator("#xyz_lone input").check()
        page.click("#txt2img_generate")
        page.wait_for_function("document.querySelector('#txt2img_status').innerText.includes('19 image(s)')")
        texts = page.input_value("#txt2img_info textarea").split("\n\n")
        sources = [img.get_attribute("src") for img in page.locator("#txt2img_gallery img").all()]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "xyz-plot.png"), full_page=True)
        images = [Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB") for src in sources]
        browser.close()
    assert len(texts) == 19 and "Script: X/Y/Z plot" in texts[0] and len(images) == 19
    assert images[0].width > 6 * 64  # the grid first, then the cells
    generator = Generator(*toy, hypernetwork_dir=toy_run / "hypernetworks")
    for image, text in zip(images[1:], texts[1:]):
        assert np.array_equal(np.asarray(image), single_image(generator, text))
