#!/usr/bin/env python
"""What A1111-exact sampling costs over diffusers' scheduler for the same sampler (Euler) on an SD1.5 UNet.

An SD1.5-architecture UNet (real widths from hypernet's shipped config; built on the meta device, then random
weights, fp32, CPU) samples 256 px (latent 32x32) with CFG (batch 2 per UNet call) for ``--steps`` steps:

* ``diffusers``  ``EulerDiscreteScheduler`` from the SD1 scheduler config, the standard denoising loop;
* ``exact``      ``hypernet.sampling.sample_latent`` with Sampler "Euler": A1111's schedule, CompVis denoiser,
                 per-image noise streams.

Both make the same number of UNet calls with the same batch; the UNet dominates, so the goal is a ratio <= 1.01.
The two paths are interleaved (the start alternates) after a warm-up; medians of the process CPU time (robust on a
shared machine) are reported. The LAST line of stdout is one JSON object ``{"name": "sampling_overhead", "ratio":
exact / diffusers, ...}``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sampling_overhead.py --threads 1 --steps 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from importlib import resources

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel  # noqa: E402

from hypernet.sampling import sample_latent  # noqa: E402
from hypernet.sampling.schedules import alphas_cumprod_for  # noqa: E402

CONFIGS = resources.files("hypernet") / "assets" / "configs" / "sd1"


def build_unet(seed: int) -> UNet2DConditionModel:
    """SD1.5's UNet with random weights, without first running diffusers' (slow) initialisation."""
    config = json.loads((CONFIGS / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias") or p.dim() == 1:
                p.zero_() if "norm" not in name else p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return unet.eval()


def diffusers_euler(unet: UNet2DConditionModel, context: torch.Tensor, steps: int, cfg: float, size: int) -> torch.Tensor:
    scheduler = EulerDiscreteScheduler.from_config(json.loads((CONFIGS / "scheduler" / "scheduler_config.json").read_text()))
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, size // 8, size // 8, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps = unet(inp, t, encoder_hidden_states=context).sample
        uncond, cond = eps.chunk(2)
        latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents).prev_sample
    return latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unet = build_unet(0)
    generator = torch.Generator().manual_seed(2)
    cond = torch.randn(1, 77, 768, generator=generator)
    uncond = torch.randn(1, 77, 768, generator=generator)
    ac = alphas_cumprod_for(json.loads((CONFIGS / "scheduler" / "scheduler_config.json").read_text()))
    params = {"Sampler": "Euler", "Steps": args.steps, "Seed": 1, "Size": f"{args.size}x{args.size}", "RNG": "CPU",
              "CFG scale": 7}
    runs = {
        "diffusers": lambda: diffusers_euler(unet, torch.cat([uncond, cond]), args.steps, 7.0, args.size),
        "exact": lambda: sample_latent(unet, cond, uncond, params, alphas_cumprod=ac),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for name in runs:  # warm-up
            runs[name]()
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                start = time.process_time()
                runs[name]()
                times[name].append(time.process_time() - start)
                print(f"repeat {r + 1} {name}: {times[name][-1]:.2f} s CPU", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({"name": "sampling_overhead", "ratio": round(medians["exact"] / medians["diffusers"], 4),
                      "exact_s": round(medians["exact"], 3), "diffusers_s": round(medians["diffusers"], 3),
                      "steps": args.steps, "size": args.size, "threads": args.threads, "repeats": args.repeats,
                      "unet": "SD1.5 architecture, random weights, fp32, CPU", "sampler": "Euler"}))


if __name__ == "__main__":
    main()
