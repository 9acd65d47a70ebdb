"""A1111 infotext -> hypernet -> infotext: every field A1111 writes comes back equal; ignored fields are named."""

from __future__ import annotations

import pytest
from PIL import Image

from hypernet.cli import main as cli_main
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext, read_infotext, save_image
from hypernet.engine.paste import read_parameters, settings_from_infotext
from hypernet.errors import HypernetError
from hypernet.testing import save_single_file, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL_FIELDS = ("Model hash", "Model", "Version")
A1111_TEXTS = [
    "a red castle\nNegative prompt: fog, rain\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, "
    "Seed: 123, Size: 64x64, Model hash: 0123456789, Model: other, Variation seed: 7, Variation seed strength: 0.3, "
    "Seed resize from: 48x48, Clip skip: 2, ENSD: 31337, RNG: NV, Eta: 0.5, Version: v1.10.1",
    "a house\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 64x64, "
    "Model hash: 0123456789, Model: other, Denoising strength: 0.6, Hires upscale: 2, Hires steps: 2, "
    "Hires upscaler: Latent, Version: v1.10.1",
    "a tree\nSteps: 4, Sampler: DDIM, Schedule type: Automatic, CFG scale: 5, Seed: 9, Size: 64x64, "
    "Model hash: 0123456789, Model: other, RNG: CPU, Eta DDIM: 0.3, Lora hashes: \"x: 123\", Version: v1.10.1",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("paste")
    checkpoint = save_single_file(tiny_pipeline("sd1"), root / "tiny.safetensors", "sd1")
    pipe, info = load_pipeline(checkpoint)
    return Generator(pipe, info, root / "hypernetworks"), root, checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("text", A1111_TEXTS)
def test_round_trip_field_by_field(setup, text: str) -> None:
    gen, _, _ = setup
    values, ignored = settings_from_infotext(text)
    assert set(ignored) >= set(MODEL_FIELDS)
    ours = parse_infotext(gen.generate(Settings(**values)).infotexts[0])
    theirs = parse_infotext(text)
    for key in theirs:
        if key not in MODEL_FIELDS and key != "Lora hashes":
            assert ours.get(key) == theirs[key], key
    assert [k for k in ours if k not in MODEL_FIELDS] == [k for k in theirs if k not in (*MODEL_FIELDS, "Lora hashes")]


def test_ignored_fields_and_bad_values() -> None:
    _, ignored = settings_from_infotext(A1111_TEXTS[2])
    assert "Lora hashes" in ignored and "Eta DDIM" not in ignored
    with pytest.raises(HypernetError, match="seed"):
        settings_from_infotext("x\nSteps: 3, Seed: 1.5, Size: 64x64")


def test_cli_generate_from_an_image_with_overrides(setup, tmp_path, capsys) -> None:
    _, root, checkpoint = setup
    source = tmp_path / "a1111.png"
    save_image(Image.new("RGB", (64, 64)), source, A1111_TEXTS[0])
    assert read_parameters(source) == A1111_TEXTS[0]
    cli_main(["generate", "--infotext", str(source), "--model", str(checkpoint), "--steps", "2",
              "--hypernetwork-dir", str(root / "hypernetworks"), "--out", str(tmp_path / "out")])
    assert "ignored Model hash, Model, Version" in capsys.readouterr().out
    text, _ = read_infotext(Image.open(next((tmp_path / "out").glob("*.png"))))
    fields = parse_infotext(text)
    assert fields["Steps"] == "2", "an option given on the command line wins over the infotext"
    assert (fields["Prompt"], fields["Seed"], fields["Variation seed"], fields["RNG"]) == ("a red castle", "123", "7", "NV")
