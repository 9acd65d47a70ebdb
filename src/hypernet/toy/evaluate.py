"""Measure the toy model: on held-out prompts, is the prompted colour right, and the shape?

    python -m hypernet.toy.evaluate [--checkpoint FILE] [--per-scene 2]   # last line: JSON
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.toy.world import detect_colour, detect_shape, split_scenes


def evaluate(generator: Generator, per_scene: int = 2, steps: int = 20, cfg: float = 5.0,
             limit: int | None = None) -> dict[str, float]:
    """Fractions of held-out generations (the first ``limit`` scenes) whose detected colour / shape match."""
    held = split_scenes()[1][:limit]
    colour = shape = total = 0
    for i, scene in enumerate(held):
        result = generator.generate(Settings(scene.caption, steps=steps, cfg_scale=cfg, width=64, height=64,
                                             seed=1000 + i * per_scene, batch_size=per_scene, sampler_name="DPM++ 2M"))
        for image in result.images:
            colour += detect_colour(image) == scene.colour
            shape += detect_shape(image) == scene.shape
            total += 1
    return {"colour_accuracy": colour / total, "shape_accuracy": shape / total, "images": total}


def main() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--per-scene", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    pipe, info = load_pipeline(args.checkpoint)
    scores = evaluate(Generator(pipe, info), args.per_scene, args.steps)
    goals = {"colour_accuracy": 0.90, "shape_accuracy": 0.70}
    print(json.dumps({"name": "toy_model_quality", **scores, "goals": goals,
                      "goals_met": all(scores[k] >= v for k, v in goals.items())}))


if __name__ == "__main__":
    main()
