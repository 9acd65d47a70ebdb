"""Defaults that come from the loaded model rather than from A1111's fixed 512x512: its native size, and the sampler,
step count, CFG scale and training settings its maker recorded in the checkpoint.

A checkpoint may carry a ``hypernet_defaults`` JSON object in its safetensors metadata (the embedded toy model
does: ``{"txt2img": {...}, "train": {...}}``), so the defaults follow the file however it is named or copied. Any
other model gets its native size (UNet sample size times the VAE's scale) and A1111's sampler, steps and CFG.
The CLI, the Python API and the web UI use these; the HTTP API keeps A1111's defaults, which its clients rely on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import safetensors

from hypernet.engine.attention import attention_widths
from hypernet.errors import HypernetError
from hypernet.settings import GenerateSettings

METADATA_KEY = "hypernet_defaults"
_A1111 = {name: info.default for name, info in GenerateSettings.model_fields.items()}  # the HTTP API's defaults


@dataclass(frozen=True)
class ModelDefaults:
    """What a new generation or training run on this model starts from when the user does not say."""

    width: int = _A1111["width"]
    height: int = _A1111["height"]
    sampler_name: str = _A1111["sampler_name"]
    steps: int = _A1111["steps"]
    cfg_scale: float = _A1111["cfg_scale"]
    # TrainConfig fields to use instead of A1111's (e.g. steps, learn_rate, batch_size); empty for most models
    train: dict[str, Any] = field(default_factory=dict)

    def complete(self, settings: Any) -> Any:
        """``settings`` (a generation's Settings) with every field left as None set to this model's default."""
        unset = {f: getattr(self, f) for f in ("width", "height", "sampler_name", "steps", "cfg_scale")
                 if getattr(settings, f) is None}
        return replace(settings, **unset) if unset else settings

    def training(self) -> dict[str, Any]:
        """TrainConfig overrides: the native size for training and previews, the preview sampler, the recorded ones."""
        return {"training_width": self.width, "training_height": self.height, "preview_width": self.width,
                "preview_height": self.height, "preview_steps": self.steps, "preview_sampler_name": self.sampler_name,
                "preview_cfg_scale": self.cfg_scale} | self.train


def native_size(pipe: Any) -> int:
    """The image size the UNet was built for: its latent sample size times the VAE's downscale."""
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    sample = pipe.unet.config.sample_size
    return int((sample[0] if isinstance(sample, (list, tuple)) else sample) * scale)


def network_widths(pipe: Any, text_widths: tuple[int, ...]) -> list[int]:
    """The widths a new hypernetwork needs to act everywhere on this model: its text encoders' (cross-attention
    keys/values) and its self-attention widths; A1111's fixed 768,320,640,1280 fits SD 1.x only."""
    return sorted({*text_widths, *attention_widths(pipe.unet)})


def recorded_defaults(path: str | Path) -> dict[str, Any]:
    """The ``hypernet_defaults`` a single-file checkpoint carries, or ``{}`` (folders, .ckpt, files without them)."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".safetensors"):
        return {}
    with safetensors.safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get(METADATA_KEY)
    if not text:
        return {}
    try:
        recorded = json.loads(text)
    except json.JSONDecodeError:
        raise HypernetError(f"{path}: metadata {METADATA_KEY!r} is not JSON; expected an object such as "
                            '{"txt2img": {"steps": 20}}.') from None
    if not isinstance(recorded, dict):
        raise HypernetError(f"{path}: metadata {METADATA_KEY!r} must be a JSON object.")
    return recorded


def model_defaults(pipe: Any, path: str | Path | None = None) -> ModelDefaults:
    """The defaults for ``pipe`` (loaded from ``path``): native size, then whatever the checkpoint recorded."""
    return _defaults(native_size(pipe), recorded_defaults(path) if path else {})


def checkpoint_defaults(path: str | Path) -> ModelDefaults:
    """The defaults for a checkpoint not loaded yet (the training CLI builds its config first): what it recorded,
    else A1111's (512x512)."""
    return _defaults(_A1111["width"], recorded_defaults(path))


def _defaults(size: int, recorded: dict[str, Any]) -> ModelDefaults:
    names = {f.name for f in fields(ModelDefaults)} - {"train"}
    txt2img = {k: v for k, v in (recorded.get("txt2img") or {}).items() if k in names}
    return ModelDefaults(**({"width": size, "height": size} | txt2img), train=dict(recorded.get("train") or {}))
