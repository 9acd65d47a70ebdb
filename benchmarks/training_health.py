#!/usr/bin/env python
"""Training health on the toy model: does the recommendation find the snapshot right before over-cooking?

Trains the demo's sepia style twice: at the demo's learning rate (300 steps, a snapshot every 25) and at ``--hot``
times it (30 steps, a snapshot every 2: at 10x the toy over-cooks within a few steps). Every snapshot is then scored
with the toy's own judges, which the library never sees: the sepia score (``hypernet.toy.world.style_score``) and
the plain-content shape detector, on 12 held-out scenes. "Best" is the highest sepia score among the snapshots whose
shapes the detector still reads (at least ``--min-shape`` of the scenes; the plain model reads 11 of 12).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_health.py [--hot 10]

The LAST line of stdout is ``{"name": "training_health", "ratio": <recommended snapshot's sepia score / the best
snapshot's>, ...}``. Goal: ratio >= 0.9 with the shapes read, the hot run flagged and the demo-rate run not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hypernet.defaults import TOY_CHECKPOINT
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.network import load_hypernetwork
from hypernet.toy.style import train_style, write_style_dataset
from hypernet.toy.world import detect_shape, split_scenes, style_score

DEMO_RATE = 2e-3  # hypernet.toy.style.train_style's default, the demo's


def score(generator: Generator, snapshot: Path | None, scenes: list, steps: int) -> tuple[float, float]:
    """(mean sepia score, share of images whose shape the detector reads as the prompt's) for one snapshot."""
    net = [(load_hypernetwork(snapshot), 1.0)] if snapshot else []
    sepia, shapes = [], []
    for i, scene in enumerate(scenes):
        result = generator.generate(Settings(scene.caption, steps=steps, cfg_scale=5.0, width=64, height=64,
                                             seed=100 + i), extra_networks=net)
        sepia.append(style_score(result.images[0]))
        shapes.append(detect_shape(result.images[0]) == scene.shape)
    return sum(sepia) / len(sepia), sum(shapes) / len(shapes)


def run(pipe, info, root: Path, rate: float, steps: int, every: int, args: argparse.Namespace) -> dict:
    data = write_style_dataset(root / "data")
    result = train_style(pipe, info, data, root / "hn", root / "log", steps=steps, learn_rate=repr(rate),
                         save_every=every)
    generator = Generator(pipe, info)
    scenes = split_scenes()[1][: args.scenes]
    rows = []
    for h in result.health:
        sepia, shape = score(generator, Path(h.path) if h.path else None, scenes, args.sample_steps)
        rows.append({"step": h.step, "sepia": round(sepia, 3), "shape": round(shape, 2),
                     "style": _round(h.style), "fidelity": _round(h.fidelity),
                     "high_frequency": _round(h.stats and h.stats.high_frequency),
                     "clipping": _round(h.stats and h.stats.clipping), "saturation": _round(h.stats and h.stats.saturation),
                     "distorted": h.distorted})
        print(json.dumps(rows[-1]), flush=True)
    intact = [r for r in rows[1:] if r["shape"] >= args.min_shape]
    best = max(intact, key=lambda r: r["sepia"]) if intact else None
    top = max(rows[1:], key=lambda r: r["sepia"])
    chosen = next((r for r in rows if r["step"] == result.recommended_step), None)
    out = {"learn_rate": rate, "flagged": result.overcooked, "recommended_step": result.recommended_step,
           "recommended_sepia": chosen and chosen["sepia"], "recommended_shape": chosen and chosen["shape"],
           "best_step": best and best["step"], "best_sepia": best and best["sepia"],
           "top_step_any_shape": top["step"], "top_sepia_any_shape": top["sepia"], "top_shape": top["shape"]}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hot", type=float, default=10.0, help="the over-cooking run's rate, times the demo's")
    parser.add_argument("--hot-steps", type=int, default=30, help="the over-cooking run's steps")
    parser.add_argument("--hot-every", type=int, default=2, help="the over-cooking run's snapshot interval")
    parser.add_argument("--scenes", type=int, default=12, help="held-out scenes scored per snapshot")
    parser.add_argument("--min-shape", type=float, default=0.75, help="share of shapes read for a 'best' snapshot")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--only", choices=("demo", "hot"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe, info = load_pipeline(TOY_CHECKPOINT)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, rate, steps, every in (("hot", DEMO_RATE * args.hot, args.hot_steps, args.hot_every),
                                          ("demo", DEMO_RATE, 300, 25)):
            if args.only in (None, label):
                runs[label] = run(pipe, info, Path(tmp) / label, rate, steps, every, args)
    hot, demo = runs.get("hot"), runs.get("demo")
    ratio = (hot["recommended_sepia"] / hot["best_sepia"]
             if hot and hot["recommended_sepia"] is not None and hot["best_sepia"] else None)
    print(json.dumps({"name": "training_health", "ratio": ratio, "hot": hot, "demo": demo}))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    main()
