"""The toy world: captions match what is drawn, and the detectors read colour and shape back from pixels."""

from __future__ import annotations

import random

from PIL import Image

from hypernet.toy.world import COLOURS, all_scenes, detect_colour, detect_shape, render, split_scenes


def test_detectors_read_every_scene_back() -> None:
    rng = random.Random(0)
    for scene in all_scenes():
        image = render(scene, rng)
        assert image.size == (64, 64)
        assert detect_colour(image) == scene.colour, scene
        assert detect_shape(image) == scene.shape, scene


def test_detectors_say_nothing_on_an_empty_image() -> None:
    blank = Image.new("RGB", (64, 64), (120, 120, 120))
    assert detect_colour(blank) is None and detect_shape(blank) is None


def test_held_out_scenes_are_fixed_and_disjoint() -> None:
    train, held = split_scenes()
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(all_scenes())
    assert split_scenes()[1] == held
    assert {s.colour for s in held} <= set(COLOURS)
    assert held[0].caption.startswith("a ") and "background" in held[0].caption
