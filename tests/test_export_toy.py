"""Acceptance on the toy model: the demo's trained swish style network, exported as a fitted LoRA, keeps the style."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator
from hypernet.export import FitOptions, export_lora, resolve_networks
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT, TOY_SIZE as SIZE
from hypernet.toy.style import measure_style, train_style, write_style_dataset
from hypernet.toy.world import split_scenes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_fitted_lora_of_the_demo_style_network_keeps_the_sepia_style(tmp_path: Path) -> None:
    pipe, info = load_pipeline(CHECKPOINT)
    data = write_style_dataset(tmp_path / "style-data")
    train_style(pipe, info, data, tmp_path / "hypernetworks", tmp_path / "log", steps=300)  # the demo's training
    generator = Generator(pipe, info, tmp_path / "hypernetworks")
    entries = resolve_networks(["style"], tmp_path / "hypernetworks")
    captions = [scene.caption for scene in split_scenes()[0][:16]]  # prompts the toy text encoder knows
    report = export_lora(generator, entries, tmp_path / "style.safetensors", rank=16, format="diffusers",
                         fit=FitOptions(prompts=captions, steps=10, width=SIZE, height=SIZE, cfg_scale=5.0),
                         check_prompts=captions[:2], size=SIZE)
    assert report.method == "fit+svd" and report.images is not None
    assert report.images.latent_relative < report.images.effect_relative  # closer to the network than no network
    scenes = split_scenes()[1][:6]  # held-out prompts, as in the demo
    styled = measure_style(generator, scenes, tag="<hypernet:style:1>").mean
    pipe.load_lora_weights(str(report.path))  # the fp16 file, through diffusers' own loader
    exported = measure_style(generator, scenes).mean
    pipe.unload_lora_weights()
    plain = measure_style(generator, scenes).mean
    assert styled > plain + 0.2
    assert abs(exported - styled) <= 0.25 * styled, (plain, styled, exported)
