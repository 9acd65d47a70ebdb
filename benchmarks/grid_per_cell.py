#!/usr/bin/env python
"""An X/Y/Z plot's time per cell against one ``generate`` per image on the same loaded model.

The plot is hypernetworks x strengths x seeds (3 x 3 x 2 by default, random networks of the toy model's widths) on
hypernet's embedded toy model, or ``--model``. The baseline generates the same 18 images one ``Generator.generate``
call each, the way a user scripting single generations would (model already loaded). Baseline and plot alternate
``--repeats`` times after a warm-up; the medians are compared. Times are this process's CPU time with one torch
thread, so other jobs on a shared machine do not drown the ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/grid_per_cell.py [--steps 20] [--repeats 3]

The LAST line of stdout is ``{"name": "grid_per_cell", "ratio": <plot s per cell / single s per image>, ...}``.
Goal: ratio <= 1.05 (the model loads once; each cell is exactly one generation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hypernet.engine.attention import attention_widths
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.grid.axes import parse_axis
from hypernet.grid.plot import Plot, run_plot
from hypernet.network import Hypernetwork
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT, TOY_SIZE as SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(CHECKPOINT))
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, info = load_pipeline(args.model)
    folder = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    widths = sorted({*info.text_widths, *attention_widths(pipe.unet)})
    names = [f"style-{step}" for step in (100, 200, 300)]
    for i, name in enumerate(names):
        Hypernetwork.create("style", widths, layer_structure=[1, 2, 1], activation_func="swish",
                            weight_init="XavierNormal", seed=i).save(folder / f"{name}.pt")
    generator = Generator(pipe, info, folder)
    base = Settings("a red circle on a white background, top left", steps=args.steps, cfg_scale=5.0,
                    width=args.size, height=args.size, seed=1)
    plot = Plot(parse_axis("Hypernetwork", ", ".join(names)), parse_axis("Hypernet str.", "0.5, 1, 1.5"),
                parse_axis("Seed", "1, 2"))
    cells = [cell.finished() for cell in plot.cells(base)]

    def singles() -> float:
        start = time.process_time()
        for settings in cells:
            generator.generate(settings)
        return (time.process_time() - start) / len(cells)

    def grid() -> float:
        start = time.process_time()
        run_plot(plot, base, generator)
        return (time.process_time() - start) / len(cells)

    singles(), grid()  # warm-up: caches, allocator, lazy imports
    single_times, grid_times = [], []
    for i in range(args.repeats):
        for run, times in ((singles, single_times), (grid, grid_times))[:: 1 if i % 2 == 0 else -1]:
            times.append(run())
    single_s, grid_s = statistics.median(single_times), statistics.median(grid_times)
    print(f"single generate: {single_s * 1000:.1f} ms/image; plot: {grid_s * 1000:.1f} ms/cell "
          f"({len(cells)} cells, {args.steps} steps, {args.size}px, {args.threads} thread(s))")
    print(json.dumps({"name": "grid_per_cell", "ratio": round(grid_s / single_s, 4), "grid_s_per_cell": round(grid_s, 4),
                      "single_s_per_image": round(single_s, 4), "cells": len(cells), "steps": args.steps,
                      "size": args.size, "repeats": args.repeats, "goal": 1.05, "goal_met": grid_s / single_s <= 1.05}))


if __name__ == "__main__":
    main()
