"""The toy model's architecture loads through the real single-file path, and its evaluation runs end to end."""

from __future__ import annotations

from pathlib import Path

import torch

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator
from hypernet.testing import save_single_file
from hypernet.toy.evaluate import evaluate
from hypernet.toy.model import TEXT_WIDTH, toy_pipeline


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
