#!/usr/bin/env python
"""What one hypernetwork training step costs: hypernet's trainer against the floor and against a naive loop.

An SD1.5-architecture pipeline (real UNet, VAE and CLIP-L widths, random seeded weights, fp32 on the CPU) trains
the default 768/320/640/1280 1-2-1 network on one image at ``--size`` (256 px), batch 1. Three things are timed:

* ``hypernet``  hypernet's whole training step, through ``train_hypernetwork`` (``prepare()`` then the one
                training loop: cached latents and text, batch assembly, NaN guard, optimizer step, a CSV row and a progress report every step). Per-step times
                come from the progress reports; the first step of every call is a warm-up and is not counted. The
                set-up (VAE and text encoding of the dataset, the log folder) is reported separately.
* ``floor``     the bare forward + backward of the frozen UNet with the network attached, and nothing else: no
                data pipeline, no optimizer step. No trainer can be faster than this.
* ``naive``     a loop that runs the VAE and the text encoder on every step (nothing cached), then the same
                forward, backward and AdamW step.

The three are interleaved in ``--rounds`` rounds of ``--steps`` timed steps each (after one warm-up step), and
medians are reported. ``--plain`` also times the UNet without any network (what the network adds), and
``--checkpointing`` also times hypernet with gradient checkpointing on (its time/memory trade).

Peak RSS is the process's high-water mark; on Linux it is reset before each measured part, so the per-part
peaks are reported too. With ``--device cuda`` the same runs on a GPU (autocast per ``--precision``, default
auto = bf16 or fp16) and peak GPU memory per part is reported; use ``--size 512`` for the usual figure.

Run (CPU, about 5 minutes on 2 cores)::

    .venv/bin/python benchmarks/train_step.py

Quick smoke run::

    .venv/bin/python benchmarks/train_step.py --size 128 --steps 1 --rounds 1

The LAST line of stdout is one JSON object: ``{"name": "train_step", "ratio_to_floor": ..., "speedup_over_naive":
..., "peak_rss_mb": ..., ...}``. Goal: ``ratio_to_floor <= 1.10``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

import hypernet  # noqa: E402
from hypernet import Hypernetwork  # noqa: E402
from hypernet.engine.attention import install_hypernetworks  # noqa: E402
from hypernet.engine.checkpoints import ModelInfo, assemble_pipeline, family_configs  # noqa: E402
from hypernet.train import TrainConfig, TrainProgress, train_hypernetwork  # noqa: E402
from hypernet.train.loop import training_noise_scheduler  # noqa: E402

PROMPT = "a photograph of a red fox in the snow, by benchnet"


def build_pipeline(seed: int):
    """SD1.5's architecture (the shipped sd1 configs: real widths) with random weights drawn from ``seed``."""
    configs = family_configs("sd1")
    torch.manual_seed(seed)
    models = {
        "unet": UNet2DConditionModel.from_config(configs["unet"]).eval(),
        "vae": AutoencoderKL.from_config(configs["vae"]).eval(),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])).eval(),
    }
    pipe = assemble_pipeline("sd1", models, "epsilon")
    info = ModelInfo(family="sd1", prediction_type="epsilon", text_widths=(768,), name="sd15-random", path="", short_hash=None)
    return pipe, info


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux), so the next part's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Part:
    """One measured variant: step times, peak RSS and (CUDA) peak GPU memory."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device, self.times, self.rss, self.gpu = name, device, [], 0.0, 0.0

    def __enter__(self) -> Part:
        reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        self.rss = max(self.rss, peak_rss_mb())
        if self.device.type == "cuda":
            self.gpu = max(self.gpu, torch.cuda.max_memory_allocated(self.device) / 2**20)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self) -> dict[str, float]:
        out = {"median_s": statistics.median(self.times), "min_s": min(self.times), "n": len(self.times),
               "peak_rss_mb": round(self.rss, 1)}
        if self.device.type == "cuda":
            out["peak_gpu_mb"] = round(self.gpu, 1)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="training size in pixels (square)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", help="hypernet's --precision (auto, no, fp16, bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--plain", action="store_true", help="also time the UNet alone (no network attached)")
    parser.add_argument("--checkpointing", action="store_true", help="also time hypernet with gradient checkpointing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    t0 = time.perf_counter()
    pipe, info = build_pipeline(args.seed)
    pipe.to(device)
    build_s = time.perf_counter() - t0
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    print(f"built an SD1.5-size pipeline in {build_s:.1f}s; device {device}, {torch.get_num_threads()} threads", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="hypernet-train-bench-"))
    data = work / "data"
    data.mkdir()
    pixels = np.random.default_rng(args.seed).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(data / "00001-a red fox in the snow.png")
    image = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None].to(device)
    Hypernetwork.create("benchnet", seed=args.seed).save(work / "hypernetworks" / "benchnet.pt")
    latent_hw = args.size // 8

    # autocast as the trainer would use it
    amp = None
    if args.precision in ("fp16", "bf16"):
        amp = torch.float16 if args.precision == "fp16" else torch.bfloat16
    elif args.precision == "auto" and device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    scheduler = training_noise_scheduler(pipe, "epsilon")
    gen = torch.Generator().manual_seed(1)

    def unet_forward_backward(cond: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (1,), generator=gen).to(device)
        with autocast():
            pred = unet(scheduler.add_noise(latents, noise, t), t, cond, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        return loss

    fixed_latents = torch.randn(1, 4, latent_hw, latent_hw, generator=gen).to(device)
    with torch.no_grad():
        ids = tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
        fixed_cond = text_encoder(ids)[0]

    floor_net = Hypernetwork.create("floor", seed=args.seed).to(device).train()
    naive_net = Hypernetwork.create("naive", seed=args.seed).to(device).train()
    naive_opt = torch.optim.AdamW(naive_net.parameters(), lr=1e-5)
    parts = {name: Part(name, device) for name in ("floor", "hypernet", "naive")}
    if args.plain:
        parts["unet_alone"] = Part("unet_alone", device)
    if args.checkpointing:
        parts["hypernet_checkpointing"] = Part("hypernet_checkpointing", device)
    setup_s: list[float] = []
    trained = {"hypernet": 0, "hypernet_checkpointing": 0}

    def time_loop(part: Part, step_fn, n: int) -> None:
        with part:
            for i in range(n + 1):
                part.sync()
                start = time.perf_counter()
                step_fn()
                part.sync()
                if i:  # the first is a warm-up
                    part.times.append(time.perf_counter() - start)

    def floor_step() -> None:
        unet_forward_backward(fixed_cond, fixed_latents)
        floor_net.zero_grad(set_to_none=True)

    def naive_step() -> None:
        with torch.no_grad():
            latents = vae.encode(image).latent_dist.sample(gen) * vae.config.scaling_factor
            tokens = tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
            cond = text_encoder(tokens)[0]
        unet_forward_backward(cond, latents)
        naive_opt.step()
        naive_opt.zero_grad(set_to_none=True)

    def run_hypernet(part: Part, checkpointing: bool) -> None:
        key = part.name
        hn_dir = work / key
        if not hn_dir.exists():
            Hypernetwork.create("benchnet", seed=args.seed).save(hn_dir / "benchnet.pt")
        marks: list[tuple[float, int]] = []

        def progress(p: TrainProgress) -> None:
            if p.phase == "training":
                marks.append((time.perf_counter(), p.step))

        config = TrainConfig(
            hypernetwork_name="benchnet", learn_rate="1e-5", data_root=str(data), log_directory=str(work / "logs"),
            training_width=args.size, training_height=args.size, steps=trained[key] + args.steps + 1,
            create_image_every=0, save_hypernetwork_every=0, training_write_csv_every=1, hypernetwork_dir=str(hn_dir),
            seed=args.seed, device=str(device), precision=args.precision,
            gradient_checkpointing="on" if checkpointing else "off",
        )
        with part:
            start = time.perf_counter()
            train_hypernetwork(config, pipe=pipe, info=info, progress=progress)
            total = time.perf_counter() - start
        trained[key] += args.steps + 1
        steps = [b[0] - a[0] for a, b in zip(marks, marks[1:]) if b[1] == a[1] + 1]
        part.times += steps[1:]  # the first step of a call is a warm-up
        if key == "hypernet":
            setup_s.append(total - sum(steps))

    def run_with_stack(part: Part, net: Hypernetwork | None, step_fn) -> None:
        with install_hypernetworks(unet).applied([(net, 1.0)] if net is not None else []):
            time_loop(part, step_fn, args.steps)

    order = list(parts)
    for r in range(args.rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:  # rotate the start
            part = parts[name]
            print(f"round {r + 1}: {name}", file=sys.stderr, flush=True)
            if name == "floor":
                run_with_stack(part, floor_net, floor_step)
            elif name == "naive":
                run_with_stack(part, naive_net, naive_step)
            elif name == "unet_alone":
                # back-propagate through the UNet alone: to its input, as nothing in it trains
                run_with_stack(part, None, lambda: unet_forward_backward(fixed_cond, fixed_latents.clone().requires_grad_(True)))
            else:
                run_hypernet(part, checkpointing=name == "hypernet_checkpointing")

    summary = {name: part.summary() for name, part in parts.items()}
    for name, values in summary.items():
        print(f"{name:>24}: median {values['median_s']:.3f}s/step (min {values['min_s']:.3f}, n={values['n']}), "
              f"peak RSS {values['peak_rss_mb']:.0f} MB" + (f", peak GPU {values['peak_gpu_mb']:.0f} MB" if 'peak_gpu_mb' in values else ""),
              file=sys.stderr)
    floor, ours, naive = (summary[k]["median_s"] for k in ("floor", "hypernet", "naive"))
    result = {
        "name": "train_step",
        "device": str(device),
        "size": args.size,
        "precision": args.precision if device.type == "cuda" or args.precision != "auto" else "fp32",
        "threads": torch.get_num_threads(),
        "floor_s": round(floor, 4),
        "hypernet_step_s": round(ours, 4),
        "naive_step_s": round(naive, 4),
        "ratio_to_floor": round(ours / floor, 4),
        "goal_ratio_to_floor": 1.10,
        "speedup_over_naive": round(naive / ours, 4),
        "hypernet_setup_s": round(statistics.median(setup_s), 3) if setup_s else None,
        "peak_rss_mb": summary["hypernet"]["peak_rss_mb"],
        "parts": summary,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "hypernet": hypernet.__version__,
    }
    if "unet_alone" in summary:
        result["network_overhead_over_unet_alone"] = round(floor / summary["unet_alone"]["median_s"] - 1, 4)
    if "hypernet_checkpointing" in summary:
        c = summary["hypernet_checkpointing"]
        result["checkpointing_time_cost"] = round(c["median_s"] / ours - 1, 4)
        key = "peak_gpu_mb" if device.type == "cuda" else "peak_rss_mb"
        result["checkpointing_memory_saved_mb"] = round(summary["hypernet"][key] - c[key], 1)
    if device.type == "cuda":
        result["it_per_s"] = round(1 / ours, 3)
        result["peak_gpu_mb"] = summary["hypernet"]["peak_gpu_mb"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
