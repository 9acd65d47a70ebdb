#!/usr/bin/env python
"""How good a rank-r LoRA export of a linear hypernetwork is: delta error and image difference against the network.

On hypernet's toy model, a *linear* 1-2-1 style network is trained on the demo's sepia dataset (``--steps``, 300 as
in the demo), then exported exactly and at ranks 4, 8, 16, 32 and 64 (64 is the full rank at the toy's widths, 32
and 64). For each: the relative Frobenius error of all to_k/to_v deltas together (SVD truncation), the relative
difference of the final latents from generating with ``<hypernet:style:1>`` (same prompts and seeds), and the demo's
sepia score. The baseline, measured in the same run: the hypernetwork itself through its tag.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export_rank.py            # about 2 minutes on 2 idle cores

The LAST line of stdout is one JSON object: ``{"name": "export_rank", "ratio": <sepia score of the rank-16 LoRA /
the hypernetwork's>, "table": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from hypernet.engine.attention import attention_widths
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Hooks, Settings
from hypernet.export import exact_deltas, lora_applied, plan_lora
from hypernet.network import Hypernetwork, load_hypernetwork
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT, TOY_SIZE as SIZE
from hypernet.toy.style import measure_style, write_style_dataset
from hypernet.toy.world import split_scenes
from hypernet.train import TrainConfig, train_hypernetwork


def train_linear(pipe, info, folder: Path, steps: int) -> Hypernetwork:  # noqa: ANN001
    """The demo's style training (toy/style.py's settings) with a linear network instead of a swish one."""
    widths = sorted({*info.text_widths, *attention_widths(pipe.unet)})
    Hypernetwork.create("linear-style", widths, weight_init="XavierNormal", seed=0).save(folder / "hn" / "linear-style.pt")
    config = TrainConfig(hypernetwork_name="linear-style", learn_rate="2e-3", batch_size=4, data_root=str(folder / "data"),
                         log_directory=str(folder / "log"), training_width=SIZE, training_height=SIZE, steps=steps,
                         latent_sampling_method="deterministic", create_image_every=0, save_hypernetwork_every=0,
                         template_filename="filewords.txt",
                         hypernetwork_dir=str(folder / "hn"), seed=0, device="cpu")
    train_hypernetwork(config, pipe=pipe, info=info)
    return load_hypernetwork(folder / "hn" / "linear-style.pt")


def final_latents(generator: Generator, prompts: list[str], tag: str = "") -> list[torch.Tensor]:
    out = []
    for i, prompt in enumerate(prompts):
        seen: list[torch.Tensor] = []
        generator.generate(Settings(f"{prompt} {tag}".strip(), steps=20, cfg_scale=5.0, width=SIZE, height=SIZE,
                                    seed=100 + i), hooks=Hooks(latents=lambda z: seen.append(z.clone())))
        out.append(seen[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the linear style network")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, info = load_pipeline(CHECKPOINT)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_style_dataset(folder / "data")
        net = train_linear(pipe, info, folder, args.steps)
        generator = Generator(pipe, info, folder / "hn")
        scenes = split_scenes()[1][:6]
        prompts = [scene.caption for scene in scenes]
        reference = final_latents(generator, prompts, "<hypernet:linear-style:1>")
        hn_score = measure_style(generator, scenes, tag="<hypernet:linear-style:1>").mean
        plain_score = measure_style(generator, scenes).mean
        deltas = exact_deltas(pipe.unet, [(net, 1.0)])
        table = []
        for rank in (4, 8, 16, 32, 64, None):
            plan = plan_lora(deltas, family=info.family, layers_per_block=int(pipe.unet.config.layers_per_block),
                             rank=rank, method="svd")
            with lora_applied(pipe.unet, plan.layers):
                latents = final_latents(generator, prompts)
                score = measure_style(generator, scenes).mean
            latent = sum(float((a - b).norm() / b.norm()) for a, b in zip(latents, reference)) / len(prompts)
            table.append({"rank": rank or "full", "delta_error": round(plan.overall_error(), 5),
                          "latent_difference": round(latent, 5), "sepia": round(score, 4)})
    print(f"linear style network, {args.steps} steps; sepia score: hypernetwork {hn_score:.3f}, no network {plain_score:.3f}")
    print(f"{'rank':>5} | {'delta error':>11} | {'latent diff':>11} | {'sepia':>6}")
    for row in table:
        print(f"{row['rank']!s:>5} | {row['delta_error']:>11.4f} | {row['latent_difference']:>11.5f} | {row['sepia']:>6.3f}")
    rank16 = next(row for row in table if row["rank"] == 16)
    print(json.dumps({"name": "export_rank", "ratio": round(rank16["sepia"] / hn_score, 4) if hn_score else None,
                      "baseline": {"hypernetwork_sepia": round(hn_score, 4), "no_network_sepia": round(plain_score, 4)},
                      "table": table}))


if __name__ == "__main__":
    main()
