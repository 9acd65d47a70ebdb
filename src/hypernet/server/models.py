"""A1111's API request and response models.

The generation settings themselves (their types, limits, help) come from
:class:`hypernet.settings.GenerateSettings`; the table below adds the A1111 request fields that are not settings
(scripts, override_settings, images) and the response shapes. Each entry of :data:`SCHEMAS` is
``model name -> {field: (type, default)}``. Request models ignore unknown fields (A1111 clients send many legacy
ones) and accept null for every field, as A1111's do (null means the default). Field names and defaults follow
A1111 v1.10's API.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, create_model, model_validator
from pydantic.fields import FieldInfo

from hypernet.settings import GenerateSettings, SettingsModel
from hypernet.settings.base import field_names
from hypernet.settings.generate import generation_limits

Fields = dict[str, tuple[Any, Any]]

# A1111's API defaults where they differ from the command line's (A1111's processing classes).
API_DEFAULTS: dict[str, Any] = {"steps": 50, "sampler_name": None, "scheduler": None}
# The settings an A1111 request may set (those marked for the API), with A1111's API defaults.
SETTINGS: Fields = {
    name: (GenerateSettings.model_fields[name].annotation, API_DEFAULTS.get(name, GenerateSettings.model_fields[name].default))
    for name in field_names(GenerateSettings, "api")
}
# The other txt2img/img2img fields (all optional).
GENERATION: Fields = {
    "styles": (list[str], None),
    "sampler_index": (str, "Euler"),
    "restore_faces": (bool, None),
    "tiling": (bool, None),
    "do_not_save_samples": (bool, False),
    "do_not_save_grid": (bool, False),
    "eta": (float, None),
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
    "firstphase_width": (int, 0),
    "firstphase_height": (int, 0),
    "hr_checkpoint_name": (str, None),
}
IMG2IMG: Fields = {
    "init_images": (list[str], None),
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
    "StableDiffusionTxt2ImgProcessingAPI": SETTINGS | GENERATION | HIRES,
    "StableDiffusionImg2ImgProcessingAPI": SETTINGS | GENERATION | IMG2IMG,
    "PNGInfoRequest": {"image": (str, REQUIRED)},
    "TaskProgressRequest": {"id_task": (str, REQUIRED), "id_live_preview": (int, -1), "live_preview": (bool, True)},
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
    "TaskProgressResponse": {
        "active": (bool, False),
        "queued": (bool, False),
        "completed": (bool, False),
        "progress": (float, None),
        "eta": (float, None),
        "live_preview": (str, None),
        "id_live_preview": (int, None),
        "textinfo": (str, None),
    },
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


class _Request(SettingsModel):
    """Finite numbers only (a NaN would reach every later image), unknown fields ignored, null = the default."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or cls._nullable(k)}
        return data

    @classmethod
    def _nullable(cls, name: str) -> bool:
        info = cls.model_fields.get(name)
        return info is None or info.default is None


class _GenerationRequest(_Request):
    @model_validator(mode="after")
    def _limits(self) -> Any:
        return generation_limits(self)


class _Response(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


def _build(name: str, fields: Fields) -> type[BaseModel]:
    is_request = not name.endswith(("Response", "Item", "List"))
    spec: dict[str, Any] = {}
    for field_name, (kind, default) in fields.items():
        setting = GenerateSettings.model_fields.get(field_name) if is_request else None
        if setting is not None:  # the settings model's type, limits and help; A1111's API default
            spec[field_name] = (setting.annotation, FieldInfo.merge_field_infos(setting, default=default))
            continue
        if default is None:
            kind = Optional[kind]
        spec[field_name] = (kind, default)
    base = (_GenerationRequest if fields.keys() >= SETTINGS.keys() else _Request) if is_request else _Response
    return create_model(name, __base__=base, **spec)


M = SimpleNamespace(**{name: _build(name, fields) for name, fields in SCHEMAS.items()})


def with_defaults(request: BaseModel) -> dict[str, Any]:
    """The request as a dict, nulls replaced by the table's defaults (A1111 echoes this as ``parameters``)."""
    fields = SCHEMAS[type(request).__name__]
    values = request.model_dump()
    for name, (_, default) in fields.items():
        if values.get(name) is None and default is not REQUIRED:
            values[name] = default.copy() if isinstance(default, (list, dict)) else default
    return values
