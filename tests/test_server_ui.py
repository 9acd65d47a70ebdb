"""The web UI in a real browser: Playwright driving Debian's headless Chromium (no browser download) against a
server with --api-auth on a tiny model. Screenshots go to $HYPERNET_TEST_ARTIFACTS (default test-artifacts/ui).

Needs /usr/bin/chromium (``apt-get install chromium``); without it the tests skip, unless
HYPERNET_REQUIRE_BROWSER=1 (CI) turns that into a failure.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests
import torch

from hypernet.engine.infotext import parse_infotext
from hypernet.network import Hypernetwork
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.testing import TEXT_WIDTHS, UNET_CHANNELS, save_tensors

USER, PASSWORD = "ui-user", "ui-pass"
WAIT_MS = 90_000  # every browser wait is bounded

from ui_browser import ARTIFACTS, browser, open_page, sync_api  # noqa: E402, F401 - skips this module where Chromium is missing; browser: the fixture

pytestmark = pytest.mark.slow  # a real Chromium per module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(tiny_server_config(tmp_path_factory.mktemp("ui"), ui=True, api_auth=((USER, PASSWORD),)))
    with BackgroundServer(create_app(state)) as running:
        yield running, state


@pytest.fixture
def page(server, browser):
    with open_page(browser, server[0].url, WAIT_MS, http_credentials={"username": USER, "password": PASSWORD}) as page:
        yield page


@pytest.fixture(scope="module")
def trainable(server) -> str:
    """A network of its own for the training test (the one the create test makes may not exist yet)."""
    _, state = server
    Hypernetwork.create("browsertrain", [*TEXT_WIDTHS["sd1"], *UNET_CHANNELS], layer_structure=(1, 1.5, 1), seed=3).save(
        state.config.hypernetwork_dir / "browsertrain.pt")
    return "browsertrain"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def open_tab(page, *names: str) -> None:
    for name in names:
        page.get_by_role("tab", name=name, exact=True).last.click()


def test_ui_needs_credentials(server, browser) -> None:
    running, state = server
    context = browser.new_context()  # no credentials: the browser gets the 401 and gives up
    with pytest.raises(sync_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        context.new_page().goto(running.url + "/")
    assert context.request.get(running.url + "/").status == 401
    context.close()
    # the UI's file route serves its own cache only, never the model or the project
    for path in (state.config.ckpt, Path("/etc/passwd")):
        r = requests.get(f"{running.url}/gradio_api/file={path}", auth=(USER, PASSWORD), timeout=10)
        assert r.status_code in (403, 404), path


def test_generate_with_a_hypernetwork_tag(page) -> None:
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a castle <hypernet:style:0.8>")
    for elem_id, value in (("txt2img_steps", "3"), ("txt2img_width", "64"), ("txt2img_height", "64")):
        set_number(page, elem_id, value)
    page.fill("#txt2img_seed input", "7")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img")
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: 7')")
    info = parse_infotext(page.input_value("#txt2img_info textarea"))
    assert info["Prompt"] == "a castle <hypernet:style:0.8>" and info["Steps"] == "3" and info["Size-1"] == "64"
    assert "1 image(s)" in page.inner_text("#txt2img_status")
    shot(page, "1-txt2img-with-hypernetwork")


def test_img2img_tab(page, tmp_path) -> None:
    from PIL import Image

    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), "orange").save(source)
    open_tab(page, "img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.fill("#img2img_prompt textarea", "an orange <hypernet:style:0.5>")
    for elem_id, value in (("img2img_steps", "4"), ("img2img_width", "64"), ("img2img_height", "64")):
        set_number(page, elem_id, value)
    page.click("#img2img_generate")
    page.wait_for_function("document.querySelector('#img2img_info textarea').value.includes('Denoising strength')")
    info = parse_infotext(page.input_value("#img2img_info textarea"))
    assert info["Prompt"] == "an orange <hypernet:style:0.5>" and info["Denoising strength"] == "0.75"
    shot(page, "1b-img2img")


def test_create_hypernetwork_shows_a_card_that_inserts_its_tag(page, server) -> None:
    _, state = server
    open_tab(page, "Train", "Create hypernetwork")
    page.fill("#create_name textarea", "browsercard")
    page.fill("#create_layers textarea", "1, 1.5, 1")
    page.click("#create_button")
    page.wait_for_function("document.querySelector('#create_status').innerText.includes('Created')")
    assert (state.config.hypernetwork_dir / "browsercard.pt").is_file()
    shot(page, "2-create-hypernetwork")

    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a tower")
    open_tab(page, "Hypernetworks")
    card = page.locator("#hn_cards img[alt^='browsercard']")
    card.wait_for()
    assert "1-1.5-1 linear · step 0" in card.get_attribute("alt")
    assert "browsercard" in page.inner_text("#hn_table")
    shot(page, "3-hypernetwork-cards")
    card.click()
    open_tab(page, "txt2img")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('<hypernet:browsercard:1>')")
    assert page.input_value("#txt2img_prompt textarea") == "a tower <hypernet:browsercard:1>"


def test_training_shows_a_live_loss_chart_and_preview(page, server, trainable) -> None:
    _, state = server
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a preview")  # previews are read from txt2img: 3 steps at 64x64
    open_tab(page, "Train", "Train")
    page.click("#train_refresh")
    page.click("#train_hypernetwork input")
    page.locator("ul[role=listbox] li", has_text=trainable).first.click()
    page.fill("#train_data textarea", "set")
    page.fill("#train_lr textarea", "0.0005")
    set_number(page, "train_width", "64")
    set_number(page, "train_height", "64")
    page.fill("#train_steps input", "100000")
    page.fill("#train_save_every input", "0")
    page.fill("#train_image_every input", "2")
    page.check("#train_from_txt2img input")
    page.click("#train_button")

    def chart_line() -> str:
        page.wait_for_function("(() => { const p = document.querySelector('#train_loss .mark-line path');"
                               " return p && p.getAttribute('d') && p.getAttribute('d').length > 0; })()")
        return page.locator("#train_loss .mark-line path").first.get_attribute("d")

    def step_shown() -> int:
        match = re.search(r"step (\d+) of ", page.inner_text("#train_status"))
        return int(match.group(1)) if match else 0

    first_line = chart_line()
    first_step = step_shown()
    deadline = time.monotonic() + WAIT_MS / 1000
    while (step_shown() < first_step + 2 or chart_line() == first_line) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert step_shown() >= first_step + 2 and chart_line() != first_line, "the loss chart did not update"
    page.locator("#train_preview img").wait_for()
    shot(page, "4-training-live")
    page.click("#train_interrupt")
    page.wait_for_function("document.querySelector('#train_status').innerText.includes('interrupted')")
    result = state.last_training.result
    assert result.stopped == "interrupted" and result.step >= first_step + 2
    shot(page, "5-training-interrupted")


def test_png_info_reads_generated_images(page, server, tmp_path) -> None:
    running, _ = server
    body = {"prompt": "a bell <hypernet:style:0.3>", "steps": 2, "width": 64, "height": 64, "seed": 9}
    import base64

    data = requests.post(f"{running.url}/sdapi/v1/txt2img", json=body, auth=(USER, PASSWORD), timeout=120).json()
    image = tmp_path / "generated.png"
    image.write_bytes(base64.b64decode(data["images"][0]))
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(image))
    page.wait_for_function("document.querySelector('#pnginfo_text textarea').value.includes('Seed: 9')")
    assert page.input_value("#pnginfo_text textarea").startswith("a bell <hypernet:style:0.3>")
    shot(page, "6-png-info")
    page.click("#pnginfo_send_txt2img")
    open_tab(page, "txt2img")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('a bell')")
    assert page.input_value("#txt2img_prompt textarea") == "a bell <hypernet:style:0.3>"
    assert page.input_value("#txt2img_seed input") == "9"


def test_hires_fix_with_its_own_sampler_and_prompts(page) -> None:
    open_tab(page, "txt2img")
    page.locator("#txt2img_hires_fix button.label-wrap").first.click()
    page.locator("#txt2img_enable_hr input[type=checkbox]").check()
    page.fill("#txt2img_prompt textarea", "a tower")
    for elem_id, value in (("txt2img_steps", "2"), ("txt2img_width", "64"), ("txt2img_height", "64")):
        set_number(page, elem_id, value)
    set_number(page, "txt2img_hires_steps", "1")
    page.locator("#txt2img_sampler input").click()  # the first pass's own sampler, not the default
    page.locator("#txt2img_sampler").get_by_role("option", name="DPM++ 2M", exact=True).click()
    page.locator("#hr_sampler input").click()
    page.locator("#hr_sampler").get_by_role("option", name="Euler", exact=True).click()
    page.locator("#hr_scheduler input").click()
    page.locator("#hr_scheduler").get_by_role("option", name="Exponential", exact=True).click()
    page.fill("#hires_prompt textarea", "a tall tower")
    page.fill("#hires_neg_prompt textarea", "fog")
    page.fill("#txt2img_seed input", "5")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Hires prompt')")
    info = parse_infotext(page.input_value("#txt2img_info textarea"))
    assert info["Size-1"] == "64" and info["Hires upscale"] == "2.0" and info["Hires steps"] == "1"
    assert (info["Hires sampler"], info["Hires schedule type"]) == ("Euler", "Exponential")
    assert (info["Hires prompt"], info["Hires negative prompt"]) == ("a tall tower", "fog")
    shot(page, "7-txt2img-hires-fix")
    page.locator("#txt2img_enable_hr input[type=checkbox]").uncheck()


def test_lora_and_embedding_cards_insert_into_prompts(page, server) -> None:
    _, state = server
    save_tensors({"lora_unet_a.lora_up.weight": torch.zeros(2, 1), "lora_unet_a.lora_down.weight": torch.zeros(1, 2)},
                 state.config.lora_dir / "cardlora.safetensors", {"ss_output_name": "CardLora"})
    state.config.embeddings_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"emb_params": torch.zeros(1, TEXT_WIDTHS["sd1"][0])}, state.config.embeddings_dir / "cardneg.pt")
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a tower")
    page.fill("#txt2img_negative textarea", "")
    open_tab(page, "Lora")
    page.click("#lora_refresh")
    card = page.locator("#lora_cards img[alt^='CardLora']")
    card.wait_for()
    card.click()
    open_tab(page, "Textual Inversion")
    page.locator("#ti_target").get_by_text("txt2img negative", exact=True).click()
    page.click("#ti_refresh")
    emb = page.locator("#ti_cards img[alt^='cardneg']")
    emb.wait_for()
    shot(page, "5-textual-inversion-cards")
    emb.click()
    open_tab(page, "txt2img")
    page.wait_for_function("document.querySelector('#txt2img_negative textarea').value.includes('cardneg')")
    assert page.input_value("#txt2img_prompt textarea") == "a tower <lora:CardLora:1>"
    assert page.input_value("#txt2img_negative textarea") == "cardneg"
