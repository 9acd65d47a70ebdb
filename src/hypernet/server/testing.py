"""A complete server folder on a tiny model (checkpoint, hypernetworks, training images), for tests and benchmarks.

Everything is written under one root and built offline in seconds; :func:`tiny_server_config` returns the
:class:`ServerConfig` a ``hypernet serve`` of that folder would use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hypernet.network import Hypernetwork
from hypernet.server.state import Limits, ServerConfig
from hypernet.testing import TEXT_WIDTHS, UNET_CHANNELS, save_single_file, tiny_pipeline

STYLE_NETWORK = "style"


def write_training_images(folder: Path, count: int = 4, size: int = 64) -> Path:
    """``count`` small RGB images with A1111-style numbered names and ``.txt`` captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.full((size, size), 40.0 * i),
                           rng.uniform(0, 255, (size, size))], axis=-1).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}-0-picture {i}.png")
        (folder / f"{i:05d}-0-picture {i}.txt").write_text(f"a picture, number {i}", encoding="utf-8")
    return folder


def tiny_server_config(root: str | Path, *, ui: bool = False, api_auth: tuple[tuple[str, str], ...] = (),
                       limits: Limits | None = None) -> ServerConfig:
    """Write (once) a tiny SD1 checkpoint, the ``style`` hypernetwork and a training set under ``root``."""
    root = Path(root)
    checkpoint = root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_single_file(tiny_pipeline("sd1"), checkpoint, "sd1")
    networks = root / "models" / "hypernetworks"
    if not (networks / f"{STYLE_NETWORK}.pt").exists():
        widths = [*TEXT_WIDTHS["sd1"], *UNET_CHANNELS]
        Hypernetwork.create(STYLE_NETWORK, widths, activation_func="swish", weight_init="XavierNormal", seed=1).save(
            networks / f"{STYLE_NETWORK}.pt")
    data = root / "training_data"
    if not (data / "set").is_dir():
        write_training_images(data / "set")
    return ServerConfig(
        ckpt=checkpoint,
        models_dir=checkpoint.parent,
        hypernetwork_dir=networks,
        esrgan_dir=root / "models" / "ESRGAN",
        lora_dir=root / "models" / "Lora",
        embeddings_dir=root / "embeddings",
        data_dir=data,
        log_dir=root / "textual_inversion",
        outputs_dir=root / "outputs",
        api_auth=api_auth,
        ui=ui,
        limits=limits or Limits(),
    )
