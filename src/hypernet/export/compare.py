"""How close generating with the exported weights comes to generating with the hypernetwork: same prompts, seeds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hypernet.engine.generate import Generator, Hooks, Settings
from hypernet.export.deltas import Entries
from hypernet.export.lora import ExportedLayer


@contextlib.contextmanager
def lora_applied(unet: torch.nn.Module, layers: Sequence[ExportedLayer]) -> Iterator[None]:
    """The LoRA merged into ``unet`` at weight 1 (as every loader merges it) for the duration; weights restored after."""
    modules = dict(unet.named_modules())
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                attn = modules[layer.delta.module]
                for param, delta in zip((attn.to_k.weight, attn.to_v.weight, attn.to_out[0].bias), layer.weights()):
                    saved.append((param, param.detach().clone()))
                    param += delta.to(param.device, param.dtype)
        yield
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)


@dataclass
class ImageCheck:
    """Hypernetwork vs exported weights on the same prompts and seeds."""

    prompts: list[str]
    seeds: list[int]
    latent_relative: float  # mean of ‖z_lora - z_hn‖ / ‖z_hn‖ over the final latents
    pixel_mean_abs: float  # mean |difference| of the decoded images, 0-255
    pixel_max_abs: float
    effect_relative: float  # the same latent measure for no network at all vs the hypernetwork: the scale to beat

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _final(generator: Generator, settings: Settings, entries: Entries) -> tuple[torch.Tensor, np.ndarray]:
    latents: list[torch.Tensor] = []
    result = generator.generate(settings, hooks=Hooks(latents=lambda z: latents.append(z.detach().float().cpu())),
                                extra_networks=entries)
    return latents[-1], np.asarray(result.images[0].convert("RGB"), dtype=np.float64)


def check_images(generator: Generator, entries: Entries, layers: Sequence[ExportedLayer], prompts: Sequence[str],
                 *, seed: int = 1234, steps: int = 20, width: int = 512, height: int = 512,
                 cfg_scale: float = 7.0) -> ImageCheck:
    """Generate each prompt with the networks, with the exported weights merged, and with neither; compare."""
    rel, base, mean_abs, max_abs, seeds = [], [], [], [], []
    for i, prompt in enumerate(prompts):
        settings = Settings(prompt, steps=steps, width=width, height=height, seed=seed + i, cfg_scale=cfg_scale)
        z_hn, img_hn = _final(generator, settings, entries)
        z_plain, _ = _final(generator, settings, ())
        with lora_applied(generator.pipe.unet, layers):
            z_lora, img_lora = _final(generator, settings, ())
        rel.append(float((z_lora - z_hn).norm() / z_hn.norm()))
        base.append(float((z_plain - z_hn).norm() / z_hn.norm()))
        diff = np.abs(img_lora - img_hn)
        mean_abs.append(float(diff.mean()))
        max_abs.append(float(diff.max()))
        seeds.append(seed + i)
    return ImageCheck(list(prompts), seeds, float(np.mean(rel)), float(np.mean(mean_abs)), float(np.max(max_abs)),
                      float(np.mean(base)))
