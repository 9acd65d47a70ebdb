"""Opening a model for generation: one path for the CLI, the server and scripts (precision, device, offloading)."""

from __future__ import annotations

import os

import torch
from diffusers import DiffusionPipeline

from hypernet.engine.checkpoints import ModelInfo, load_pipeline, precision_dtype
from hypernet.engine.generate import apply_memory_options
from hypernet.errors import HypernetError


def open_model(
    model: str | os.PathLike[str],
    *,
    vae: str | os.PathLike[str] | None = None,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    medvram: bool = False,
    lowvram: bool = False,
    vae_tiling: bool = False,
) -> tuple[DiffusionPipeline, ModelInfo]:
    """Load a checkpoint in ``precision`` (fp32, fp16, bf16) onto ``device`` (default: CUDA if available), unless
    ``medvram``/``lowvram`` offloading places the models itself."""
    dtype = precision_dtype(precision, "--precision")
    pipe, info = load_pipeline(model, vae=vae, dtype=dtype)
    if not (medvram or lowvram):
        target = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            pipe.to(target)
        except (RuntimeError, AssertionError) as e:
            raise HypernetError(f"--device {target}: the model cannot be moved there ({e}).") from None
    apply_memory_options(pipe, medvram=medvram, lowvram=lowvram, vae_tiling=vae_tiling)
    return pipe, info
