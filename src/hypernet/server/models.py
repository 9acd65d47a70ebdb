"""A1111's API request and response models, generated from one table of fields.

Each entry of :data:`SCHEMAS` is ``model name -> {field: (type, default)}``. Request models ignore unknown fields
(A1111 clients send many legacy ones) and accept null for every field, as A1111's do; :func:`with_defaults` turns
those nulls back into the table's defaults. Field names and defaults follow A1111 v1.10's API.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, create_model

Fields = dict[str, tuple[Any, Any]]

# Every txt2img/img2img field (A1111's processing classes, all optional).
GENERATION: Fields = {
    "prompt": (str, ""),
    "negative_prompt": (str, ""),
    "styles": (list[str], None),
    "seed": (int, -1),
    "subseed": (int, -1),
    "subseed_strength": (float, 0.0),
    "seed_resize_from_h": (int, -1),
    "seed_resize_from_w": (int, -1),
    "sampler_name": (str, None),
    "sampler_index": (str, "Euler"),
    "scheduler": (str, None),
    "batch_size": (int, 1),
    "n_iter": (int, 1),
    "steps": (int, 50),
    "cfg_scale": (float, 7.0),
    "width": (int, 512),
    "height": (int, 512),
    "restore_faces": (bool, None),
    "tiling": (bool, None),
    "do_not_save_samples": (bool, False),
    "do_not_save_grid": (bool, False),
    "eta": (float, None),
    "denoising_strength": (float, 0.75),
    "s_min_uncond": (float, None),
    "s_churn": (float, None),
    "s_tmax": (float, None),
    "s_tmin": (float, None),
    "s_noise": (float, None),
    "override_settings": (dict[str, Any], None),
    "override_settings_restore_afterwards": (bool, True),
    "refiner_checkpoint": (str, None),
    "refiner_switch_at": (float, None),
    "disable_extra_networks": (bool, False),
    "firstpass_image": (str, None),
    "comments": (dict[str, Any], None),
    "script_name": (str, None),
    "script_args": (list[Any], []),
    "alwayson_scripts": (dict[str, Any], {}),
    "send_images": (bool, True),
    "save_images": (bool, False),
    "force_task_id": (str, None),
    "infotext": (str, None),
}
HIRES: Fields = {
    "enable_hr": (bool, False),
    "firstphase_width": (int, 0),
    "firstphase_height": (int, 0),
    "hr_scale": (float, 2.0),
    "hr_upscaler": (str, None),
    "hr_second_pass_steps": (int, 0),
    "hr_resize_x": (int, 0),
    "hr_resize_y": (int, 0),
    "hr_checkpoint_name": (str, None),
    "hr_sampler_name": (str, None),
    "hr_scheduler": (str, None),
    "hr_prompt": (str, ""),
    "hr_negative_prompt": (str, ""),
}
IMG2IMG: Fields = {
    "init_images": (list[str], None),
    "resize_mode": (int, 0),
    "image_cfg_scale": (float, None),
    "mask": (str, None),
    "mask_blur_x": (int, 4),
    "mask_blur_y": (int, 4),
    "mask_blur": (int, None),
    "mask_round": (bool, True),
    "inpainting_fill": (int, 0),
    "inpaint_full_res": (bool, True),
    "inpaint_full_res_padding": (int, 0),
    "inpainting_mask_invert": (int, 0),
    "initial_noise_multiplier": (float, None),
    "include_init_images": (bool, False),
}

REQUIRED = ...  # pydantic's marker for a field without default

SCHEMAS: dict[str, Fields] = {
    # requests
    "StableDiffusionTxt2ImgProcessingAPI": GENERATION | HIRES,
    "StableDiffusionImg2ImgProcessingAPI": GENERATION | IMG2IMG,
    "PNGInfoRequest": {"image": (str, REQUIRED)},
    # responses
    "TextToImageResponse": {"images": (list[str], []), "parameters": (dict[str, Any], {}), "info": (str, "")},
    "ImageToImageResponse": {"images": (list[str], []), "parameters": (dict[str, Any], {}), "info": (str, "")},
    "PNGInfoResponse": {"info": (str, ""), "items": (dict[str, Any], {}), "parameters": (dict[str, Any], {})},
    "ProgressResponse": {
        "progress": (float, 0.0),
        "eta_relative": (float, 0.0),
        "state": (dict[str, Any], {}),
        "current_image": (str, None),
        "textinfo": (str, None),
        "training": (dict[str, Any], None),  # ours: step, steps, loss of a running training job
    },
    "InfoResponse": {"info": (str, "")},
    "HypernetworkItem": {"name": (str, REQUIRED), "path": (str, None)},
    "SDModelItem": {
        "title": (str, REQUIRED),
        "model_name": (str, REQUIRED),
        "hash": (str, None),
        "sha256": (str, None),
        "filename": (str, REQUIRED),
        "config": (str, None),
    },
    "SamplerItem": {"name": (str, REQUIRED), "aliases": (list[str], []), "options": (dict[str, str], {})},
    "SchedulerItem": {
        "name": (str, REQUIRED),
        "label": (str, REQUIRED),
        "aliases": (list[str], None),
        "default_rho": (float, None),
        "need_inner_model": (bool, None),
    },
    "ScriptsList": {"txt2img": (list[str], []), "img2img": (list[str], [])},
    "EmbeddingsResponse": {"loaded": (dict[str, Any], {}), "skipped": (dict[str, Any], {})},
    "MemoryResponse": {"ram": (dict[str, Any], {}), "cuda": (dict[str, Any], {})},
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class _Response(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


def _build(name: str, fields: Fields) -> type[BaseModel]:
    is_request = not name.endswith(("Response", "Item", "List"))
    spec = {}
    for field_name, (kind, default) in fields.items():
        if is_request and default is not REQUIRED:
            kind = Optional[kind]  # A1111 accepts null everywhere; with_defaults() restores the default
        elif default is None:
            kind = Optional[kind]
        spec[field_name] = (kind, default)
    return create_model(name, __base__=_Request if is_request else _Response, **spec)


M = SimpleNamespace(**{name: _build(name, fields) for name, fields in SCHEMAS.items()})


def with_defaults(request: BaseModel) -> dict[str, Any]:
    """The request as a dict, nulls replaced by the table's defaults (A1111 echoes this as ``parameters``)."""
    fields = SCHEMAS[type(request).__name__]
    values = request.model_dump()
    for name, (_, default) in fields.items():
        if values.get(name) is None and default is not REQUIRED:
            values[name] = default.copy() if isinstance(default, (list, dict)) else default
    return values
