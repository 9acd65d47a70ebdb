"""ESRGAN (RRDBNet) upscalers for the hires fix: both weight layouts, A1111's tiling and scaling, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hypernet.engine import upscalers
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext
from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork
from hypernet.testing import save_single_file, save_tiny_esrgan, tiny_esrgan, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("layout,suffix", [("new", ".pth"), ("old", ".pth"), ("new", ".safetensors"),
                                           ("old", ".safetensors")])
def test_both_layouts_load_to_the_same_network(tmp_path, layout, suffix) -> None:
    path = save_tiny_esrgan(tmp_path / f"4x-tiny{suffix}", layout)
    model = upscalers.load_esrgan(path)
    reference = tiny_esrgan()
    assert (model.n_up, len(model.body), model.conv_first.out_channels, model.scale) == (2, 2, 8, 4)
    x = torch.rand(1, 3, 12, 10)
    assert torch.equal(model(x), reference(x))
    assert model(x).shape == (1, 3, 48, 40)


def test_basicsr_x2_model_unshuffles_its_input(tmp_path) -> None:
    model = upscalers.load_esrgan(save_tiny_esrgan(tmp_path / "2x.pth", unshuffle=2))
    assert model.scale == 2 and model(torch.rand(1, 3, 16, 12)).shape == (1, 3, 32, 24)
    old = upscalers.load_esrgan(save_tiny_esrgan(tmp_path / "2x-old.pth", "old", n_up=1))
    assert old.scale == 2 and old.n_up == 1


def test_tiles_are_the_model_on_each_crop_blended_at_the_overlaps() -> None:
    model = tiny_esrgan()
    image = _image(40, 24)
    whole = upscalers.upscale_tiled(model, image, tile=0)
    tiled = upscalers.upscale_tiled(model, image, tile=16, overlap=4)
    assert whole.size == tiled.size == (160, 96)
    first = np.asarray(upscalers.upscale_tiled(model, image.crop((0, 0, 16, 16)), tile=0))
    # rows start at 0 and 8, columns at 0, 12 and 24: the first tile alone covers x4 pixels [0, 32) x [0, 48)
    diff = np.abs(np.asarray(tiled, dtype=np.int16)[:32, :48] - first[:32, :48])
    assert diff.max() <= 1, "same crop, same output (up to float rounding of a different conv size)"
    assert not np.array_equal(np.asarray(tiled), np.asarray(whole)), "tiles see less context than the whole image"
    assert upscalers._tiles(40, 16, 4) == [0, 12, 24] and upscalers._tiles(10, 192, 8) == [-182]


@pytest.mark.slow
def test_upscale_reaches_the_scale_then_lanczos_to_multiples_of_8() -> None:
    model = tiny_esrgan()
    assert upscalers.upscale(model, _image(20, 12), 2).size == (40, 24)
    assert upscalers.upscale(model, _image(20, 12), 1.5).size == (24, 16)  # (30 // 8 * 8, 18 // 8 * 8)
    assert upscalers.upscale(model, _image(8, 8), 10).size == (80, 80)  # two model passes (x16), then down


def test_bad_files_are_clear_errors(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    Hypernetwork.create("hn", [8], seed=1).save(tmp_path / "hn.pt")
    torch.save({"body.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "compact.pth")
    state = tiny_esrgan().state_dict()
    state["conv_hr.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(state, tmp_path / "misshapen.pth")
    for name in ("junk.pth", "hn.pt", "compact.pth", "misshapen.pth"):
        with pytest.raises(HypernetError, match=rf"{name}: not an ESRGAN \(RRDBNet\) upscaler model"):
            upscalers.load_esrgan(tmp_path / name)


def test_listing_uses_file_stems(tmp_path) -> None:
    save_tiny_esrgan(tmp_path / "4x-b.safetensors")
    save_tiny_esrgan(tmp_path / "4x-a.pth")
    (tmp_path / "notes.txt").write_text("x")
    assert list(upscalers.list_esrgan(tmp_path)) == ["4x-a", "4x-b"]
    assert upscalers.list_esrgan(tmp_path / "missing") == {} and upscalers.list_esrgan(None) == {}


@pytest.mark.slow
def test_hires_fix_with_an_esrgan_upscaler(tmp_path) -> None:
    pipe, info = load_pipeline(save_single_file(tiny_pipeline("sd1"), tmp_path / "tiny.safetensors", "sd1"))
    esrgan = tmp_path / "ESRGAN"
    save_tiny_esrgan(esrgan / "4x-tiny.pth", "old")
    gen = Generator(pipe, info, tmp_path / "hypernetworks", esrgan)
    fast = dict(steps=2, width=64, height=64, seed=3, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
                denoising_strength=0.5)
    r = gen.generate(Settings("a house", hr_upscaler="4x-tiny", **fast))
    assert r.images[0].size == (96, 96)
    assert parse_infotext(r.infotexts[0])["Hires upscaler"] == "4x-tiny"
    lanczos = gen.generate(Settings("a house", hr_upscaler="Lanczos", **fast))
    assert not np.array_equal(np.asarray(r.images[0]), np.asarray(lanczos.images[0]))
    with pytest.raises(HypernetError, match='could not find upscaler named "4x-other".*4x-tiny'):
        gen.generate(Settings("a house", hr_upscaler="4x-other", **fast))
    (esrgan / "broken.pth").write_bytes(b"nope")
    with pytest.raises(HypernetError, match="broken.pth: not an ESRGAN"):
        gen.generate(Settings("a house", hr_upscaler="broken", **fast))
