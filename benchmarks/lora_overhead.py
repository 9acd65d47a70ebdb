#!/usr/bin/env python
"""What a LoRA costs per generation once merged, and what its first use (the merge) costs.

A generator on a random-weight model (tiny by default; ``--full-size`` for the real SD 1.x/XL architecture) makes
the same image plain and with one kohya LoRA (every attention, feed-forward, projection and resnet layer of the UNet
and every text-encoder layer, LoCon on 3x3 convolutions). The first LoRA generation merges (timed separately as
``first_use_s``, and the merge alone as ``merge_wall_s``); after that the merged weights are cached, so a LoRA generation should cost what a
plain one does. Plain and LoRA generations are interleaved (start rotating) and medians compared.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lora_overhead.py            # tiny SD1, 64 px, quick
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lora_overhead.py --threads 1 --clock cpu   # on a busy machine
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lora_overhead.py --full-size --size 512 --steps 20 --device cuda

The LAST line of stdout is one JSON object: ``{"name": "lora_overhead", "ratio": <cached LoRA / plain>, ...}``.
Goal: ratio <= 1.01.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hypernet.engine.checkpoints import ModelInfo
from hypernet.engine.generate import Generator, Settings
from hypernet.testing import TEXT_WIDTHS, kohya_lora, random_pipeline, save_tensors, tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    parser.add_argument("--full-size", action="store_true", help="the real architecture (random weights)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each: one plain, one LoRA)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (robust on a shared machine; CPU runs only)")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]

    pipe = random_pipeline(args.family) if args.full_size else tiny_pipeline(args.family)
    widths = (pipe.text_encoder.config.hidden_size,) + (
        (pipe.text_encoder_2.config.hidden_size,) if args.family == "sdxl" else ())
    state, modules = kohya_lora(pipe, args.family, rank=args.rank, scale=0.05)
    pipe.to(args.device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        save_tensors(state, Path(tmp) / "bench.safetensors")
        info = ModelInfo(args.family, "epsilon", widths if args.full_size else TEXT_WIDTHS[args.family],
                         "bench", "", None)
        gen = Generator(pipe, info, lora_dirs=[tmp])
        settings = dict(steps=args.steps, width=args.size, height=args.size, seed=1, sampler_name="Euler")

        def run(prompt: str) -> float:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = clock()
            gen.generate(Settings(prompt, **settings))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return clock() - start

        run("a castle")  # warm-up
        first_use = run("a castle <lora:bench:1>")
        merge_s = gen.lora_merger.merge_seconds
        plain, lora = [], []
        for r in range(args.repeats):
            order = [("plain", "a castle"), ("lora", "a castle <lora:bench:1>")]
            for kind, prompt in order[r % 2 :] + order[: r % 2]:
                (plain if kind == "plain" else lora).append(run(prompt))
    result = {
        "name": "lora_overhead",
        "ratio": round(statistics.median(lora) / statistics.median(plain), 4),
        "plain_s": round(statistics.median(plain), 4),
        "lora_cached_s": round(statistics.median(lora), 4),
        "first_use_s": round(first_use, 4),
        "merge_wall_s": round(merge_s, 4),
        "merges": gen.lora_merger.merges,
        "layers": len(modules),
        "family": args.family,
        "full_size": args.full_size,
        "size": args.size,
        "steps": args.steps,
        "device": args.device,
        "dtype": args.dtype,
        "clock": args.clock,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
