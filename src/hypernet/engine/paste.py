"""A1111's "Read generation parameters": an infotext (or an image carrying one) -> generation settings.

Every field hypernet understands becomes a :class:`~hypernet.engine.generate.Settings` value; the others are
returned by name so the user learns what was not reproduced (model fields included: the model is chosen where
hypernet is run, not from the text).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from hypernet.engine.infotext import parse_infotext, read_infotext
from hypernet.errors import HypernetError

# infotext field -> Settings field
FIELDS = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
    "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Clip skip": "clip_skip", "Denoising strength": "denoising_strength", "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength", "Seed resize from-1": "seed_resize_from_w",
    "Seed resize from-2": "seed_resize_from_h", "ENSD": "ensd", "RNG": "rng", "Eta": "eta",
    "Hires upscale": "hr_scale", "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y",
    "Hires upscaler": "hr_upscaler", "Hires steps": "hr_second_pass_steps", "Hires sampler": "hr_sampler_name",
    "Hires schedule type": "hr_scheduler", "Hires prompt": "hr_prompt", "Hires negative prompt": "hr_negative_prompt",
}
# infotext fields that are A1111 settings; they reach the sampler unchanged (Settings.sampler_params)
SAMPLER_FIELDS = (
    "Eta DDIM", "Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise", "Schedule min sigma", "Schedule max sigma",
    "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Discard penultimate sigma", "SGM noise multiplier",
    "UniPC variant", "UniPC skip type", "UniPC order", "UniPC lower order final", "Noise multiplier", "Extra noise",
)
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE]-?\d+)?")
_TEXT = {"prompt", "negative_prompt", "sampler_name", "scheduler", "rng", "hr_upscaler", "hr_sampler_name",
         "hr_scheduler", "hr_prompt", "hr_negative_prompt"}


def _value(text: str) -> Any:
    """A number as A1111 wrote it (int when integral, so 7 is written back as 7), else the text."""
    if _NUMBER.fullmatch(text):
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    return text


def read_parameters(source: str | os.PathLike[str]) -> str:
    """The infotext in ``source``: an image file holding one, a text file, or the infotext itself."""
    path = Path(source) if len(str(source)) < 4096 and "\n" not in str(source) else None
    if path is not None and path.is_file():
        try:
            with Image.open(path) as image:
                text, _ = read_infotext(image)
        except (OSError, UnidentifiedImageError):
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                raise HypernetError(f"{path}: neither an image nor a text file with generation parameters.") from None
        if not text:
            raise HypernetError(f"{path}: the image holds no generation parameters.")
        return text
    return str(source)


def settings_from_infotext(text: str) -> tuple[dict[str, Any], list[str]]:
    """Settings keyword values for an A1111 infotext, and the names of the fields that were ignored."""
    parsed = parse_infotext(text)
    values: dict[str, Any] = {}
    sampler_params: dict[str, Any] = {}
    ignored: list[str] = []
    for key, raw in parsed.items():
        if key in FIELDS:
            name = FIELDS[key]
            values[name] = raw if name in _TEXT else _value(raw)
        elif key in SAMPLER_FIELDS:
            sampler_params[key] = _value(raw)
        elif key in ("Hypernet", "Hypernet strength"):
            continue  # parse_infotext already put the old field into the prompt as a <hypernet:...> tag
        elif not (key.endswith("-1") or key.endswith("-2")) or key[:-2] not in ignored:
            ignored.append(key[:-2] if key.endswith(("-1", "-2")) else key)
    if sampler_params:
        values["sampler_params"] = sampler_params
    if any(k in parsed for k in ("Hires upscale", "Hires resize-1", "Hires upscaler", "Hires steps")):
        values["enable_hr"] = True
        if "hr_scale" not in values and "hr_resize_x" not in values:
            values["hr_scale"] = 2.0
    for name in ("seed", "steps", "subseed", "clip_skip", "ensd", "width", "height", "seed_resize_from_w",
                 "seed_resize_from_h", "hr_resize_x", "hr_resize_y", "hr_second_pass_steps"):
        if name in values and not isinstance(values[name], int):
            raise HypernetError(f"infotext: {name} {values[name]!r} is not a whole number.")
    return values, ignored
