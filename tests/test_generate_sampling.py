"""generate() samples through hypernet.sampling only: same latent as sample_latent, variation seeds, hires fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hypernet.engine import latents
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext
from hypernet.errors import HypernetError
from hypernet.sampling import sample_latent
from hypernet.testing import save_single_file, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps=3, width=64, height=64, seed=11)


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Generator:
    root = tmp_path_factory.mktemp("gs")
    pipe, info = load_pipeline(save_single_file(tiny_pipeline("sd1"), root / "tiny.safetensors", "sd1"))
    return Generator(pipe, info, root / "hypernetworks")


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DDIM", "DPM++ SDE"])
def test_generate_gives_the_latent_sample_latent_gives(gen: Generator, sampler: str) -> None:
    s = Settings("a castle", negative_prompt="fog", sampler_name=sampler, rng="NV", **FAST)
    result = gen.generate(s)
    encoder = PromptEncoder(gen.pipe)
    cond, uncond = encoder.encode("a castle").embeds, encoder.encode("fog").embeds
    latent = sample_latent(gen.pipe.unet, cond, uncond, {"Sampler": sampler, "Steps": 3, "Seed": 11, "Size": "64x64",
                                                          "RNG": "NV"}, alphas_cumprod=gen.alphas_cumprod)
    assert np.array_equal(_pixels(result.images[0]), _pixels(latents.decode(gen.pipe.vae, latent)[0]))


def test_variation_seed_and_seed_resize_reach_the_image_and_infotext(gen: Generator) -> None:
    plain = gen.generate(Settings("a tree", **FAST))
    varied = gen.generate(Settings("a tree", subseed=5, subseed_strength=0.5, batch_size=2, **FAST))
    assert varied.seeds == [11, 11], "with a variation strength every image keeps the seed"
    assert not np.array_equal(_pixels(plain.images[0]), _pixels(varied.images[0]))
    info = [parse_infotext(t) for t in varied.infotexts]
    assert [i["Variation seed"] for i in info] == ["5", "6"] and info[0]["Variation seed strength"] == "0.5"
    resized = gen.generate(Settings("a tree", seed_resize_from_w=48, seed_resize_from_h=48, **FAST))
    assert parse_infotext(resized.infotexts[0])["Seed resize from-1"] == "48"
    assert "RNG" not in info[0], "GPU, A1111's default, is not written"


@pytest.mark.slow
def test_hires_fix_latent_and_lanczos(gen: Generator) -> None:
    for upscaler in ("Latent", "Lanczos"):
        r = gen.generate(Settings("a house", enable_hr=True, hr_scale=2, hr_upscaler=upscaler, hr_second_pass_steps=2,
                                  denoising_strength=0.6, **FAST))
        assert r.images[0].size == (128, 128)
        info = parse_infotext(r.infotexts[0])
        assert info["Size-1"] == "64" and info["Hires upscale"] == "2" and info["Hires upscaler"] == upscaler
        assert info["Hires steps"] == "2" and info["Denoising strength"] == "0.6"
    cropped = gen.generate(Settings("a house", enable_hr=True, hr_resize_x=96, hr_resize_y=64, denoising_strength=0.5,
                                    **FAST))
    assert cropped.images[0].size == (96, 64)
    with pytest.raises(HypernetError, match="upscaler"):
        gen.generate(Settings("a house", enable_hr=True, hr_upscaler="4x-UltraSharp", **FAST))


def test_cli_lists_every_sampler_and_schedule(capsys) -> None:
    from hypernet.cli import main as cli_main
    from hypernet.sampling import SAMPLERS, SCHEDULES

    cli_main(["samplers"])
    out = capsys.readouterr().out
    assert all(s.name in out for s in SAMPLERS) and all(s.label in out for s in SCHEDULES)
