"""A1111's settings that mean something here (``GET``/``POST /sdapi/v1/options``, ``override_settings``).

Every value a client sets is checked against this model before it is stored, so a NaN multiplier or a quality of
"high" cannot reach the images of every later client. Keys A1111 has but hypernet does not use are stored as
given, as A1111 does, provided they are plain finite JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from hypernet.settings import limits as L
from hypernet.settings.base import On, SettingsModel

_SERVER = On(cli=(), ui=None, why="a server setting: clients change it with POST /sdapi/v1/options")
READ_ONLY = On(cli=(), ui=None, api=False, why="reported by the server; not changeable over the API (as in A1111)")


class ServerOptions(SettingsModel):
    """The settings ``GET /options`` reports, with A1111's names and the defaults hypernet serves."""

    sd_model_checkpoint: Annotated[str, Field(max_length=4096, description="The loaded checkpoint's title; setting "
                                              "it loads another checkpoint."), _SERVER] = ""
    sd_checkpoint_hash: Annotated[str | None, Field(description="The loaded checkpoint's sha256."), READ_ONLY] = None
    sd_hypernetwork: Annotated[str, Field(max_length=1000, description="A1111's 'Add hypernetwork to prompt': "
                                          "applied to every generation (\"None\": off)."), _SERVER] = "None"
    extra_networks_default_multiplier: Annotated[float, Field(ge=-100, le=100, description="Multiplier of tags "
                                                              "and sd_hypernetwork without an explicit weight."),
                                                 _SERVER] = 1.0
    CLIP_stop_at_last_layers: Annotated[int, Field(ge=1, le=12, description="CLIP skip."), _SERVER] = 1
    samples_format: Annotated[Literal["png", "jpg", "jpeg", "webp"], Field(description="Format of returned and "
                                                                           "saved images."), _SERVER] = "png"
    enable_pnginfo: Annotated[bool, Field(description="Write the infotext into images."), _SERVER] = True
    jpeg_quality: Annotated[int, Field(ge=1, le=100, description="JPEG and WebP quality."), _SERVER] = 80
    send_seed: Annotated[bool, Field(description="A1111 UI setting (round-tripped for its tests)."), _SERVER] = True
    send_size: Annotated[bool, Field(description="A1111 UI setting (round-tripped)."), _SERVER] = True
    live_previews_enable: Annotated[bool, Field(description="Decode live previews for /progress."), _SERVER] = True
    show_progress_every_n_steps: Annotated[int, Field(ge=-1, le=1000, description="Live preview interval, steps."),
                                           _SERVER] = 1
    save_optimizer_state: Annotated[bool, Field(description="Write .pt.optim sidecars when training."),
                                    _SERVER] = False
    save_training_settings_to_txt: Annotated[bool, Field(description="Write settings-<time>.json when training."),
                                             _SERVER] = True
    dataset_filename_word_regex: Annotated[str, Field(max_length=1000, description="Captions from file names: "
                                                      "keep only this regex's matches."), _SERVER] = ""
    dataset_filename_join_string: Annotated[str, Field(max_length=100, description="Joins the regex matches."),
                                            _SERVER] = " "
    training_image_repeats_per_epoch: Annotated[int, Field(ge=1, le=1000, description="Repeats per epoch."),
                                                _SERVER] = 1
    training_write_csv_every: Annotated[int, Field(ge=0, le=1_000_000, description="Loss CSV interval, steps."),
                                        _SERVER] = 500
    training_xattention_optimizations: Annotated[bool, Field(description="A1111 setting (attention is always "
                                                             "SDPA here)."), _SERVER] = False
    training_enable_tensorboard: Annotated[bool, Field(description="Log training to TensorBoard."), _SERVER] = False
    training_tensorboard_save_images: Annotated[bool, Field(description="Send previews to TensorBoard."),
                                                _SERVER] = False
    training_tensorboard_flush_every: Annotated[int, Field(ge=1, le=86400, description="TensorBoard flush "
                                                           "interval, seconds."), _SERVER] = 120
    unload_models_when_training: Annotated[bool, Field(description="Move the VAE and text encoders off the GPU "
                                                       "while training."), _SERVER] = False
    pin_memory: Annotated[bool, Field(description="A1111 setting (no effect here)."), _SERVER] = False
    sd_vae: Annotated[str, Field(max_length=4096, description="A1111 setting (the checkpoint's own VAE is used)."),
                      _SERVER] = "Automatic"
    # sampler settings (A1111's names and defaults); hypernet.sampling reads them as infotext fields
    randn_source: Annotated[Literal["GPU", "CPU", "NV"], Field(description="Noise source."), _SERVER] = "GPU"
    eta_noise_seed_delta: Annotated[int, Field(ge=-L.SEED_MAX, le=L.SEED_MAX, description="Eta noise seed delta."),
                                    _SERVER] = 0
    eta_ancestral: Annotated[float, Field(ge=0, le=10, description="Eta for ancestral samplers."), _SERVER] = 1.0
    eta_ddim: Annotated[float, Field(ge=0, le=10, description="Eta for DDIM."), _SERVER] = 0.0
    s_churn: Annotated[float, Field(ge=0, le=100, description="Sigma churn."), _SERVER] = 0.0
    s_tmin: Annotated[float, Field(ge=0, le=1000, description="Sigma tmin."), _SERVER] = 0.0
    s_tmax: Annotated[float, Field(ge=0, le=1000, description="Sigma tmax."), _SERVER] = 0.0
    s_noise: Annotated[float, Field(ge=0, le=10, description="Sigma noise."), _SERVER] = 1.0
    sigma_min: Annotated[float, Field(ge=0, le=1000, description="Schedule's minimum sigma (0: the model's)."),
                         _SERVER] = 0.0
    sigma_max: Annotated[float, Field(ge=0, le=1000, description="Schedule's maximum sigma (0: the model's)."),
                         _SERVER] = 0.0
    rho: Annotated[float, Field(ge=0, le=100, description="Karras schedule rho (0: 7)."), _SERVER] = 0.0
    always_discard_next_to_last_sigma: Annotated[bool, Field(description="Drop the next-to-last sigma."),
                                                 _SERVER] = False
    sgm_noise_multiplier: Annotated[bool, Field(description="SGM noise multiplier."), _SERVER] = False
    uni_pc_variant: Annotated[Literal["bh1", "bh2", "vary_coeff"], Field(description="UniPC variant."),
                              _SERVER] = "bh1"
    uni_pc_skip_type: Annotated[Literal["time_uniform", "time_quadratic", "logSNR"],
                                Field(description="UniPC skip type."), _SERVER] = "time_uniform"
    uni_pc_order: Annotated[int, Field(ge=1, le=50, description="UniPC order."), _SERVER] = 3
    uni_pc_lower_order_final: Annotated[bool, Field(description="UniPC lower order final."), _SERVER] = True
    beta_dist_alpha: Annotated[float, Field(gt=0, le=100, description="Beta schedule alpha."), _SERVER] = 0.6
    beta_dist_beta: Annotated[float, Field(gt=0, le=100, description="Beta schedule beta."), _SERVER] = 0.6
    img2img_fix_steps: Annotated[bool, Field(description="img2img runs exactly the given steps."), _SERVER] = False
    initial_noise_multiplier: Annotated[float, Field(ge=0, le=10, description="img2img noise multiplier."),
                                        _SERVER] = 1.0
    img2img_extra_noise: Annotated[float, Field(ge=0, le=10, description="img2img extra noise."), _SERVER] = 0.0
    api_enable_requests: Annotated[bool, Field(description="Image URLs are never fetched (A1111: on)."),
                                   READ_ONLY] = False
    api_forbid_local_requests: Annotated[bool, Field(description="Local URLs are refused."), READ_ONLY] = True

    @field_validator("samples_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("sd_hypernetwork", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        return value or "None"


def plain_json(value: Any, name: str) -> Any:
    """``value`` if it is JSON that can be sent back (finite numbers, bounded nesting), else a ValueError."""
    def walk(v: Any, depth: int) -> None:
        if depth > 20:
            raise ValueError(f"setting {name} is nested too deeply.")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"setting {name} holds {v}; expected finite numbers only.")
        if isinstance(v, dict):
            for item in v.values():
                walk(item, depth + 1)
        elif isinstance(v, list):
            for item in v:
                walk(item, depth + 1)
    walk(value, 0)
    return value
