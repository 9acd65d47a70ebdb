"""One txt2img/img2img generation: A1111's processing fields (``POST /sdapi/v1/txt2img``, ``hypernet generate``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from hypernet.settings import limits as L
from hypernet.settings.base import On, SettingsModel

Seed = Annotated[int, Field(ge=-1, le=L.SEED_MAX), On(expect=L.SEED_EXPECT)]
_SIZE_PAIR = "set with its partner as one WIDTHxHEIGHT option"
# the HTTP API keeps A1111's defaults (its clients rely on them); the others follow the model (engine.model_defaults)
_MODEL_DEFAULT = "; the command line, web UI and Python API default to the loaded model's."


def _side(help: str, flag: str, label: str) -> object:
    return Field(ge=L.MIN_SIDE, le=L.MAX_SIDE, description=help), On(cli=(flag,), ui=label)


class GenerateSettings(SettingsModel):
    """What one generation request may set, with A1111's names; :class:`~hypernet.engine.generate.Settings` runs it."""

    prompt: Annotated[str, Field(max_length=L.MAX_PROMPT_CHARS, description="Prompt (A1111 syntax); "
                                 "<hypernet:NAME:WEIGHT> applies a hypernetwork."),
                      On(cli=("PROMPT",), ui="Prompt")] = ""
    negative_prompt: Annotated[str, Field(max_length=L.MAX_PROMPT_CHARS, description="Negative prompt (tags in it "
                                          "stay literal text)."),
                               On(cli=("--negative",), ui="Negative prompt")] = ""
    sampler_name: Annotated[str, Field(max_length=100, description="A1111 sampler name, e.g. 'DPM++ 2M', 'Euler a'"
                                                          f"{_MODEL_DEFAULT}"),
                            On(cli=("--sampler",), ui="Sampling method")] = "DPM++ 2M"
    scheduler: Annotated[str, Field(max_length=100, description="Schedule type: Automatic, Karras, Exponential, ..."),
                         On(ui="Schedule type")] = "Automatic"
    steps: Annotated[int, Field(ge=1, le=L.MAX_STEPS, description=f"Sampling steps{_MODEL_DEFAULT}"),
                     On(ui="Sampling steps")] = 20
    cfg_scale: Annotated[float, Field(ge=0, le=L.MAX_CFG, description="CFG scale: how strongly the prompt steers"
                                                                        f"{_MODEL_DEFAULT}"),
                         On(cli=("--cfg",), ui="CFG scale")] = 7.0
    seed: Annotated[int, Field(ge=-1, le=L.SEED_MAX, description="Seed; -1 draws a random one."),
                    On(ui="Seed (-1: random)", expect=L.SEED_EXPECT)] = -1
    subseed: Annotated[int, Field(ge=-1, le=L.SEED_MAX, description="Variation seed; -1 draws a random one."),
                       On(ui="Variation seed", expect=L.SEED_EXPECT)] = -1
    subseed_strength: Annotated[float, Field(ge=0, le=1, description="Variation strength (0: off)."),
                                On(ui="Variation strength")] = 0.0
    seed_resize_from_w: Annotated[int, Field(ge=-1, le=L.MAX_SIDE, description="Resize seed from width (0 or -1: "
                                             "off)."), On(ui=None, cli=("--seed-resize-from",), why="the UI leaves seed resize off")] = -1
    seed_resize_from_h: Annotated[int, Field(ge=-1, le=L.MAX_SIDE, description="Resize seed from height (0 or -1: "
                                             "off)."), On(ui=None, cli=("--seed-resize-from",), why="the UI leaves seed resize off")] = -1
    width: Annotated[int, *_side("Image width; not a multiple of 8: floored to one, with a warning.", "--size", "Width")] = 512
    height: Annotated[int, *_side("Image height; not a multiple of 8: floored to one, with a warning.", "--size", "Height")] = 512
    batch_size: Annotated[int, Field(ge=1, le=L.MAX_BATCH_SIZE, description="Images per batch."),
                          On(ui="Batch size")] = 1
    n_iter: Annotated[int, Field(ge=1, le=L.MAX_BATCH_COUNT, description="Batches, one after the other."),
                      On(cli=("--batch-count",), ui="Batch count")] = 1
    denoising_strength: Annotated[float, Field(ge=0, le=1, description="img2img: how much of the init image is "
                                                                        "redrawn (0 keeps it)."),
                                  On(cli=("--denoise",), ui="Denoising strength")] = 0.75
    resize_mode: Annotated[int, Field(ge=0, le=3, description="img2img: how an init image of another shape is "
                                      "fitted: 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize "
                                      "(latent upscale), as A1111's resize_mode."),
                           On(ui="Resize mode")] = 0
    clip_skip: Annotated[int, Field(ge=1, le=12, description="CLIP skip: stop at the Nth-from-last text encoder "
                                    "layer (A1111's CLIP_stop_at_last_layers)."),
                         On(ui=None, api=False, why="A1111 sets it with override_settings.CLIP_stop_at_last_layers")
                         ] = 1
    # hires fix (A1111's names)
    enable_hr: Annotated[bool, Field(description="Hires fix: upscale, then a second pass."),
                         On(cli=("--hires",), ui="Hires. fix")] = False
    hr_scale: Annotated[float, Field(ge=0, le=L.MAX_HR_SCALE, description="Hires upscale factor."),
                        On(ui="Upscale by")] = 2.0
    hr_second_pass_steps: Annotated[int, Field(ge=0, le=L.MAX_STEPS, description="Hires steps (0: same as steps)."),
                                    On(cli=("--hr-steps",), ui="Hires steps")] = 0
    hr_resize_x: Annotated[int, Field(ge=0, le=L.MAX_SIDE, description="Hires width (0: from hr_scale)."),
                           On(cli=("--hr-resize",), ui=None, why="the UI sizes the hires pass with 'Upscale by'")] = 0
    hr_resize_y: Annotated[int, Field(ge=0, le=L.MAX_SIDE, description="Hires height (0: from hr_scale)."),
                           On(cli=("--hr-resize",), ui=None, why="the UI sizes the hires pass with 'Upscale by'")] = 0
    hr_upscaler: Annotated[str | None, Field(max_length=200, description="Hires upscaler: Latent (the default), "
                                             "Latent (antialiased), Latent (bicubic), Latent (bicubic antialiased), "
                                             "Latent (nearest), Latent (nearest-exact), None, Lanczos, Nearest, or an "
                                             "ESRGAN model's file name without extension in the ESRGAN folder."),
                           On(cli=("--hr-upscaler",), ui="Upscaler")] = None
    hr_sampler_name: Annotated[str | None, Field(max_length=100, description="Hires sampler (default: the first "
                                                 "pass's)."),
                               On(cli=("--hr-sampler",), ui="Hires sampling method")] = None
    hr_scheduler: Annotated[str | None, Field(max_length=100, description="Hires schedule type (default: the first "
                                              "pass's)."),
                            On(cli=("--hr-scheduler",), ui="Hires schedule type")] = None
    hr_prompt: Annotated[str, Field(max_length=L.MAX_PROMPT_CHARS, description="Hires prompt (default: the "
                                    "prompt)."), On(cli=("--hr-prompt",), ui="Hires prompt")] = ""
    hr_negative_prompt: Annotated[str, Field(max_length=L.MAX_PROMPT_CHARS, description="Hires negative prompt "
                                             "(default: the negative prompt)."),
                                  On(cli=("--hr-negative",), ui="Hires negative prompt")] = ""

    @model_validator(mode="after")
    def _limits(self) -> GenerateSettings:
        return generation_limits(self)


def generation_limits(m: Any) -> Any:
    """The checks across fields, shared with the HTTP request models (which add A1111's other fields)."""
    for name in ("width", "height"):
        value = getattr(m, name)
        if value % 8:
            setattr(m, name, value - value % 8)
            m.warn(f"{name} {value} is not a multiple of 8; using {value - value % 8} (as A1111 does).")
    if m.width * m.height > L.MAX_PIXELS:
        raise ValueError(f"width x height is {m.width}x{m.height} ({m.width * m.height:,} pixels); "
                         f"at most {L.MAX_PIXELS:,} pixels are allowed per image.")
    if m.batch_size * m.n_iter > L.MAX_IMAGES:
        raise ValueError(f"batch_size x n_iter is {m.batch_size}x{m.n_iter}; at most {L.MAX_IMAGES} images "
                         "are allowed per request.")
    if m.enable_hr:
        w = m.hr_resize_x or int(m.width * m.hr_scale)
        h = m.hr_resize_y or int(m.height * m.hr_scale)
        if w * h > L.MAX_PIXELS:
            raise ValueError(f"the hires size is {w}x{h} ({w * h:,} pixels); at most {L.MAX_PIXELS:,} pixels "
                             "are allowed per image (lower hr_scale or hr_resize_x/hr_resize_y).")
    return m
