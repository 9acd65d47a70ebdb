"""A1111's hires fix between the two passes: the target size, and the upscalers (latent modes and image resizes).

The second pass itself is an img2img pass of :func:`hypernet.sampling.sample_latent` with ``hires_steps``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from hypernet.engine import upscalers
from hypernet.engine.upscalers import RRDBNet
from hypernet.errors import HypernetError

# name -> (interpolation mode, antialias), A1111's ``latent_upscale_modes``
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Upscalers that need no weights; "None" is a plain LANCZOS resize to the target.
IMAGE_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
UPSCALERS: tuple[str, ...] = (*LATENT_MODES, *IMAGE_UPSCALERS)


@dataclass(frozen=True)
class Target:
    """Where the second pass samples: ``size`` before cropping, ``crop`` the latent crop (A1111's ``truncate``)."""

    width: int
    height: int
    crop_x: int = 0  # latent pixels to remove in total, left + right
    crop_y: int = 0
    infotext: tuple[str, object] = ("Hires upscale", 2.0)


def target_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> Target:
    """A1111's ``calculate_target_resolution``: by ``scale``, or to ``resize_x`` x ``resize_y`` keeping the aspect
    and cropping the excess."""
    if not resize_x and not resize_y:
        return Target(int(width * scale), int(height * scale), infotext=("Hires upscale", scale))
    label = ("Hires resize", f"{resize_x}x{resize_y}")
    if not resize_y:
        return Target(resize_x, resize_x * height // width, infotext=label)
    if not resize_x:
        return Target(resize_y * width // height, resize_y, infotext=label)
    if width / height < resize_x / resize_y:
        to_x, to_y = resize_x, resize_x * height // width
    else:
        to_x, to_y = resize_y * width // height, resize_y
    return Target(to_x, to_y, (to_x - resize_x) // 8, (to_y - resize_y) // 8, label)


def check_upscaler(name: str | None, models: Iterable[str] = ()) -> str:
    """The upscaler's A1111 name ("Latent" when None), built in or one of ``models`` (ESRGAN file stems); an
    unknown name raises A1111's error as a sentence."""
    name = name or "Latent"
    known = (*UPSCALERS, *models)
    if name not in known:
        raise HypernetError(f'could not find upscaler named "{name}"; expected one of: {", ".join(known)}.')
    return name


def upscale_latent(latent: torch.Tensor, target: Target, mode: str) -> torch.Tensor:
    """Interpolate the latent to the target's latent size (no decode), then crop."""
    interpolation, antialias = LATENT_MODES[mode]
    out = F.interpolate(latent, size=(target.height // 8, target.width // 8), mode=interpolation, antialias=antialias)
    return crop(out, target)


def upscale_image(image: Image.Image, target: Target, name: str, model: RRDBNet | None = None) -> Image.Image:
    """A1111's ``resize_image``: each side to ``(w * scale) // 8 * 8`` with the upscaler (the ESRGAN ``model`` when
    given, else a weightless resize), then LANCZOS to the exact target size."""
    if name != "None":
        scale = max(target.width / image.width, target.height / image.height)
        if scale > 1 and model is not None:
            image = upscalers.upscale(model, image, scale)
        elif scale > 1:
            dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
            image = image.resize((int(image.width * scale), int(image.height * scale)), IMAGE_UPSCALERS[name])
            if image.size != dest:
                image = image.resize(dest, Image.Resampling.LANCZOS)
    if image.size != (target.width, target.height):
        image = image.resize((target.width, target.height), Image.Resampling.LANCZOS)
    return image


def crop(latent: torch.Tensor, target: Target) -> torch.Tensor:
    tx, ty = target.crop_x, target.crop_y
    h, w = latent.shape[2], latent.shape[3]
    return latent[:, :, ty // 2: h - (ty + 1) // 2, tx // 2: w - (tx + 1) // 2]
