"""Latents <-> pixels as A1111 converts them, for the sampling path of :mod:`hypernet.engine.generate`.

Decoding maps the VAE output with ``clamp((x + 1) / 2, 0, 1) * 255`` and truncates to uint8 (A1111 does not
round). Encoding takes the posterior mean: A1111 draws a posterior sample from the global torch RNG, which no
seed reproduces, and the mean is what that sample scatters around.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image


@contextlib.contextmanager
def _vae_precision(vae: AutoencoderKL) -> Iterator[torch.dtype]:
    """SDXL's VAE overflows in fp16 (its config says ``force_upcast``); run it in fp32 then, as diffusers does."""
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
        try:
            yield torch.float32
        finally:
            vae.to(dtype)
    else:
        yield dtype


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> list[Image.Image]:
    """Latents [B, 4, h, w] -> RGB images, A1111's conversion."""
    with torch.no_grad(), _vae_precision(vae) as dtype:
        x = vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample.float()
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    arrays = (255.0 * x.permute(0, 2, 3, 1).cpu().numpy()).astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def encode(vae: AutoencoderKL, images: list[Image.Image], device: torch.device) -> torch.Tensor:
    """RGB images (all one size) -> latents [B, 4, H/8, W/8] (posterior mean times the scaling factor)."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).to(device) * 2.0 - 1.0
    with torch.no_grad(), _vae_precision(vae) as dtype:
        posterior = vae.encode(x.to(dtype)).latent_dist
    return posterior.mean.float() * vae.config.scaling_factor
