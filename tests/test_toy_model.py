"""The toy model: its architecture loads through the real single-file path; the shipped weights draw what is asked;
a short hypernetwork training teaches it a style it never saw, measured."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator
from hypernet.testing import save_single_file
from hypernet.toy.evaluate import evaluate
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.toy.model import TEXT_WIDTH, toy_pipeline
from hypernet.toy.style import measure_style, train_style, write_style_dataset
from hypernet.toy.world import all_scenes, render, sepia, split_scenes, style_score

STYLE_TEST_STEPS = 300  # the demo's training
STYLE_MARGIN = 0.2  # measured on the shipped model: 0.00 -> 0.45


@pytest.mark.slow
def test_toy_architecture_round_trips_and_evaluates(tmp_path: Path) -> None:
    pipe = toy_pipeline(seed=3)
    checkpoint = save_single_file(pipe, tmp_path / "toy.safetensors", "sd1")
    loaded, info = load_pipeline(checkpoint)
    assert info.family == "sd1" and info.text_widths == (TEXT_WIDTH,)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scores = evaluate(Generator(loaded, info), per_scene=1, steps=2, limit=2)
    assert scores["images"] == 2 and 0 <= scores["colour_accuracy"] <= 1 and 0 <= scores["shape_accuracy"] <= 1


# ------------------------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def shipped() -> tuple:
    return load_pipeline(CHECKPOINT)


def test_shipped_model_is_a_small_sd1_single_file(shipped: tuple) -> None:
    pipe, info = shipped
    assert CHECKPOINT.suffix == ".safetensors" and CHECKPOINT.stat().st_size < 16e6
    assert info.family == "sd1" and info.text_widths == (TEXT_WIDTH,) and info.prediction_type == "epsilon"
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)


@pytest.mark.slow
def test_shipped_model_draws_the_prompted_colour_on_held_out_prompts(shipped: tuple) -> None:
    scores = evaluate(Generator(*shipped), per_scene=1, steps=12, limit=10)
    assert scores["images"] == 10
    assert scores["colour_accuracy"] >= 0.8, scores  # the full measurement (27 prompts x 2) is in the README


@pytest.mark.slow
def test_short_style_training_raises_the_style_score(shipped: tuple, tmp_path: Path) -> None:
    pipe, info = shipped
    generator = Generator(pipe, info, hypernetwork_dir=tmp_path / "hypernetworks")
    scenes = split_scenes()[1][:6]
    before = measure_style(generator, scenes)
    data = write_style_dataset(tmp_path / "data")
    assert len(list(data.glob("*.png"))) == 12 and len(list(data.glob("*.txt"))) == 12
    result = train_style(pipe, info, data, tmp_path / "hypernetworks", tmp_path / "log", steps=STYLE_TEST_STEPS)
    assert result.stopped == "finished" and result.step == STYLE_TEST_STEPS
    after = measure_style(generator, scenes, tag="<hypernet:style:1>")
    plain_again = measure_style(generator, scenes)
    assert after.mean >= before.mean + STYLE_MARGIN, (before.scores, after.scores)
    assert plain_again.scores == before.scores  # no leak into later generations without the tag
    zero = measure_style(generator, scenes, tag="<hypernet:style:0>")
    assert zero.scores == before.scores


def test_style_score_separates_sepia_from_the_named_palette() -> None:
    rng = random.Random(0)
    scenes = all_scenes()[:40]
    assert max(style_score(render(s, rng)) for s in scenes) == 0
    assert min(style_score(sepia(render(s, rng))) for s in scenes) > 0.95


@pytest.mark.slow
def test_generate_without_a_model_uses_the_toy_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from hypernet.cli import main

    try:
        main(["generate", "a red circle on a white background, center", "--steps", "4", "--seed", "3",
              "--out", str(tmp_path)])
    except SystemExit as e:
        assert not e.code
    assert "embedded toy model" in capsys.readouterr().out
    (image,) = tmp_path.glob("*.png")
    assert Image.open(image).size == (64, 64)
