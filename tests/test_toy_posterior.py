"""The toy VAE's posterior is as narrow as SD's, so everything that samples it (img2img, A1111's default "once"
latent caching) sees the image rather than noise."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.toy.style import measure_style, train_style, write_style_dataset
from hypernet.toy.world import detect_colour, detect_shape, render, split_scenes

pytestmark = pytest.mark.usefixtures("one_thread")  # two shared cores: no OpenMP oversubscription

SOURCE = "a red circle on a white background, center"
OTHER = "a blue square on a white background, center"


@pytest.fixture(scope="module")
def shipped() -> tuple:
    return load_pipeline(CHECKPOINT)


@pytest.mark.slow
def test_posterior_std_is_tiny_next_to_the_latents(shipped: tuple) -> None:
    pipe, _ = shipped
    rng = random.Random(0)
    scenes = [rng.choice(split_scenes()[0]) for _ in range(8)]
    x = torch.from_numpy(np.stack([np.asarray(render(s, rng), np.float32) for s in scenes]) / 127.5 - 1)
    with torch.no_grad():
        dist = pipe.vae.encode(x.permute(0, 3, 1, 2)).latent_dist
        assert dist.std.max() < 0.01 * dist.mean.std()  # was 3x the latents' std before the fix
        gap = (pipe.vae.decode(dist.sample()).sample - pipe.vae.decode(dist.mean).sample).abs().max()
    assert gap < 0.05


@pytest.mark.slow
def test_img2img_keeps_the_init_image_at_low_denoising_and_follows_the_prompt_at_high(shipped: tuple) -> None:
    """At 0.3 the init's colour and shape survive (whatever the prompt); at 0.9 the prompt wins: its colour, which
    the toy model draws reliably (held-out colour >= 90%), nearly always, the init's scene never, and its whole scene
    about as often as a generation from noise with the same seeds (the toy model's shapes are weaker: ~70-75%
    held out, so demanding 5/6 squares would ask img2img to beat txt2img)."""
    generator = Generator(*shipped)

    def scene(image: object) -> tuple[str | None, str | None]:
        return detect_colour(image), detect_shape(image)

    def run(prompt: str, seed: int, **kw: object) -> tuple[str | None, str | None]:
        return scene(generator.generate(Settings(prompt, steps=20, cfg_scale=5, width=64, height=64, seed=seed,
                                                 **kw)).images[0])

    inits = [generator.generate(Settings(SOURCE, steps=20, cfg_scale=5, width=64, height=64, seed=s)).images[0]
             for s in range(6)]
    assert all(scene(i) == ("red", "circle") for i in inits)
    kept_same = sum(run(SOURCE, 100 + s, init_image=i, denoising_strength=0.3) == ("red", "circle")
                    for s, i in enumerate(inits))
    kept_empty = sum(run("", 100 + s, init_image=i, denoising_strength=0.3) == ("red", "circle")
                     for s, i in enumerate(inits))
    assert kept_same >= 5 and kept_empty >= 5, (kept_same, kept_empty)
    high = [run(OTHER, 100 + s, init_image=i, denoising_strength=0.9) for s, i in enumerate(inits)]
    from_noise = [run(OTHER, 100 + s) for s in range(6)]
    assert sum(c == "blue" for c, _ in high) >= 5, high
    assert ("red", "circle") not in high, high
    assert high.count(("blue", "square")) >= from_noise.count(("blue", "square")) - 1, (high, from_noise)


@pytest.mark.slow
def test_training_with_once_latent_sampling_learns_the_style_as_the_demo_does(shipped: tuple, tmp_path: Path) -> None:
    """A1111's default latent caching samples the posterior once per image; with the narrow posterior it trains as
    well as the demo's deterministic latents (the demo's steps and held-out scenes; the issue allows 0.1)."""
    pipe, info = shipped
    scenes = split_scenes()[1][:6]
    data = write_style_dataset(tmp_path / "data")
    gains = {}
    for method in ("deterministic", "once"):
        generator = Generator(pipe, info, hypernetwork_dir=tmp_path / method)
        before = measure_style(generator, scenes)
        result = train_style(pipe, info, data, tmp_path / method, tmp_path / "log", steps=300,
                             latent_sampling_method=method)
        assert result.stopped == "finished"
        gains[method] = measure_style(generator, scenes, tag="<hypernet:style:1>").mean - before.mean
    assert gains["once"] >= 0.2 and abs(gains["once"] - gains["deterministic"]) <= 0.1, gains
