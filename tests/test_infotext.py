"""A1111 infotext: writing, reading back (A1111's parser rules) and carrying it in PNG, JPEG and WebP files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from hypernet.engine.infotext import format_infotext, image_bytes, parse_infotext, read_infotext, save_image
from hypernet.errors import HypernetError

PARAMS = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Karras",
    "CFG scale": 7,
    "Seed": 1,
    "Size": "512x768",
    "Model hash": "abcdef1234",
    "Model": "name",
    "Lora hashes": "x: 0123456789ab, y: ba9876543210",
    "Version": "v1.10.1",
}

A1111_TEXT = """masterpiece, 1girl, (blue eyes:1.2), <lora:x:0.5>
<hypernet:anime:0.7>
Negative prompt: lowres, bad anatomy,
  worst quality
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123456789, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Hires upscale: 2, \
Hires upscaler: Latent, Lora hashes: "x: 0123456789ab", TI hashes: "easynegative: c74b4e810b03, bad: 123", \
Emphasis: "No norm", Version: v1.10.1"""


def test_format_writes_a1111_lines_and_quotes() -> None:
    text = format_infotext("a castle <hypernet:anime:0.8>", "blurry", {**PARAMS, "Skipped": None, "Flag": "Flag"})
    assert text == (
        "a castle <hypernet:anime:0.8>\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, "
        'Model hash: abcdef1234, Model: name, Lora hashes: "x: 0123456789ab, y: ba9876543210", Version: v1.10.1, Flag'
    )


def test_format_without_negative_prompt_has_no_negative_line() -> None:
    assert format_infotext("cat", "", {"Steps": 20}) == "cat\nSteps: 20"


def test_round_trip() -> None:
    prompt = "first line, <hypernet:a:1>\nsecond line"
    negative = "bad\nworse"
    params = {**PARAMS, "Model": 'odd "name", with: colon', "Note": '"quoted"', "Multi": "a\nb", "Unicode": "日本"}
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "768" and "Size" not in parsed
    for key in ("Steps", "Sampler", "Model", "Lora hashes", "Note", "Multi", "Unicode"):
        assert parsed[key] == str(params[key])


def test_parse_a1111_text() -> None:
    parsed = parse_infotext(A1111_TEXT)
    assert parsed == {
        "Steps": "28",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "123456789",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Denoising strength": "0.7",
        "Hires upscale": "2",
        "Hires upscaler": "Latent",
        "Lora hashes": "x: 0123456789ab",
        "TI hashes": "easynegative: c74b4e810b03, bad: 123",
        "Emphasis": "No norm",
        "Version": "v1.10.1",
        "Prompt": "masterpiece, 1girl, (blue eyes:1.2), <lora:x:0.5>\n<hypernet:anime:0.7>",
        "Negative prompt": "lowres, bad anatomy,\nworst quality",
    }


def test_old_hypernet_fields_become_a_tag() -> None:
    text = "a girl\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 7460a6fa, "
    parsed = parse_infotext(text + "Hypernet: anime_3, Hypernet hash: 1a2b3c4d5e, Hypernet strength: 0.5")
    assert parsed["Prompt"] == "a girl<hypernet:anime_3:0.5>"
    assert parsed["Hypernet"] == "anime_3"
    parsed = parse_infotext(text + "Hypernet: anime_3")
    assert parsed["Prompt"] == "a girl<hypernet:anime_3:1.0>"


def test_short_last_line_is_prompt() -> None:
    parsed = parse_infotext("portrait\nlighting: soft, mood: calm")
    assert parsed == {"Prompt": "portrait\nlighting: soft, mood: calm", "Negative prompt": ""}


def test_empty_value_is_skipped_and_bad_json_kept() -> None:
    parsed = parse_infotext('p\nSteps: 20, Sampler: , Seed: 1, Size: 64x64, Odd: "a\\x"')
    assert "Sampler" not in parsed
    assert parsed["Odd"] == '"a\\x"'


def test_png_written_by_pil_with_parameters_chunk(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    info.add_text("Software", "hand-made")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info, dpi=(72, 72))
    with Image.open(path) as image:
        text, items = read_infotext(image)
    assert text == A1111_TEXT
    assert items == {"Software": "hand-made"}
    assert parse_infotext(text)["Sampler"] == "DPM++ 2M"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
def test_save_and_read_back(tmp_path: Path, suffix: str) -> None:
    text = format_infotext("日本 castle, <hypernet:anime:0.8>", "blurry", PARAMS)
    path = tmp_path / f"out{suffix}"
    save_image(Image.new("RGBA", (8, 8), (10, 20, 30, 128)), path, text)
    with Image.open(path) as image:
        assert read_infotext(image)[0] == text


def test_image_without_infotext() -> None:
    data = image_bytes(Image.new("RGB", (8, 8)), None, "png")
    assert read_infotext(Image.open(io.BytesIO(data))) == (None, {})


def test_unknown_image_format() -> None:
    with pytest.raises(HypernetError, match='image format "gif" is not supported'):
        image_bytes(Image.new("RGB", (8, 8)), "x", "gif")
