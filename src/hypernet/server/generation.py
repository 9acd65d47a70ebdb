"""txt2img/img2img requests -> Generator runs on the job worker -> A1111's response (images, parameters, info).

Requests are checked completely before they queue (sampler, hypernetwork names, sizes, images), so a bad request
fails at once instead of after waiting for the model. The run goes through ``Generator.generate``'s hooks, so
``/skip`` ends the current batch and ``/interrupt`` the whole job, both keeping the images made so far (A1111's
behaviour); a UNet forward hook turns the model's own prediction into the live preview ``/progress`` shows.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel

from hypernet import __version__
from hypernet.engine.generate import Hooks, Settings
from hypernet.engine.infotext import image_bytes, parse_infotext, save_image
from hypernet.errors import HypernetError
from hypernet.fileio import next_number
from hypernet.prompt.tags import parse_batch, parse_prompt
from hypernet.sampling import resolve_sampler
from hypernet.server.jobs import Job
from hypernet.server.models import with_defaults
from hypernet.server.security import ApiError, decode_image
from hypernet.server.state import ServerState
from hypernet.server.xyz import is_plot, plan_plot, run_plot_job, save_plot_images

# Request fields we accept but do not implement: a warning in ``info`` says so, as they change the result.
UNSUPPORTED_FLAGS = {
    "hr_checkpoint_name": "hr_checkpoint_name is not supported; the hires pass used the loaded model",
    "restore_faces": "restore_faces is not supported and was ignored",
    "tiling": "tiling is not supported and was ignored",
}
FALLBACK_SAMPLER = "DPM++ 2M"  # the first of A1111's sampler list, where it sends unknown names
# Infotext keys that fill request fields the request itself left unset (A1111's ``infotext`` field).
INFOTEXT_FIELDS = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Denoising strength": ("denoising_strength", float),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Hires upscale": ("hr_scale", float),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
}
# A1111 settings that steer sampling -> the infotext field hypernet.sampling reads them as.
SAMPLER_OPTIONS = {
    "eta_ancestral": "Eta ancestral", "eta_ddim": "Eta DDIM", "s_churn": "Sigma churn", "s_tmin": "Sigma tmin",
    "s_tmax": "Sigma tmax", "s_noise": "Sigma noise", "sigma_min": "Schedule min sigma",
    "sigma_max": "Schedule max sigma", "rho": "Schedule rho",
    "always_discard_next_to_last_sigma": "Discard penultimate sigma", "sgm_noise_multiplier": "SGM noise multiplier",
    "uni_pc_variant": "UniPC variant", "uni_pc_skip_type": "UniPC skip type", "uni_pc_order": "UniPC order",
    "uni_pc_lower_order_final": "UniPC lower order final", "beta_dist_alpha": "Beta schedule alpha",
    "beta_dist_beta": "Beta schedule beta", "img2img_fix_steps": "img2img fix steps",
    "initial_noise_multiplier": "Noise multiplier", "img2img_extra_noise": "Extra noise",
}


# txt2img request fields that go to Settings unchanged (the hires fix)
HIRES_SETTINGS = ("enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
                  "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")


@dataclass
class Plan:
    """A checked request: the Generator settings plus what the response and the job need."""

    kind: str  # "txt2img" | "img2img"
    values: dict[str, Any]  # the request with defaults (echoed as ``parameters``)
    settings: Any  # hypernet.engine.generate.Settings
    overrides: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    subseed: int = -1  # the variation seed actually drawn (A1111 reports it even when its strength is 0)
    plot: Any = None  # hypernet.grid.plot.Plot when script_name is "x/y/z plot"


@dataclass
class Outcome:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    applied: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loras: list[Any] = field(default_factory=list)  # engine.lora.AppliedLora
    embeddings: list[str] = field(default_factory=list)
    interrupted: bool = False
    skipped: int = 0
    seconds: float = 0.0
    model: Any = None  # the ModelInfo it ran on (an override may have switched models for this request only)
    plot: Any = None  # hypernet.grid.plot.PlotResult of an X/Y/Z plot


def plan_request(state: ServerState, request: BaseModel, kind: str) -> Plan:
    """Validate a txt2img/img2img request against the loaded model and the limits (raises 4xx errors)."""
    values = with_defaults(request)
    if values.get("infotext"):
        _fill_from_infotext(values, request.model_fields_set)
    if values["script_name"] and not (kind == "txt2img" and is_plot(values["script_name"])):
        raise ApiError(422, f"Script '{values['script_name']}' not found")
    for name in values["alwayson_scripts"] or {}:
        raise ApiError(422, f"always on script {name} not found")
    _check_limits(state, values)

    overrides = dict(values["override_settings"] or {})
    if "sd_model_checkpoint" in overrides:
        overrides["sd_model_checkpoint"] = state.find_checkpoint(str(overrides["sd_model_checkpoint"])).title
    overrides.update(state.validate_options({k: v for k, v in overrides.items() if k != "sd_model_checkpoint"}))
    option = lambda key: overrides.get(key, state.option(key))  # noqa: E731

    warnings = list(request.warnings)  # adjustments A1111 makes silently (sizes floored to a multiple of 8)
    warnings += [message for key, message in UNSUPPORTED_FLAGS.items() if values.get(key)]
    if values["styles"]:
        warnings.append(f"prompt styles {values['styles']} are unknown here (no styles are defined) and were ignored")
    init_image = None
    if kind == "img2img":
        images = values.get("init_images") or []
        if not images:
            raise ApiError(404, "Init image not found")
        init_image = decode_image(images[0], "init_images[0]")
        for i, extra in enumerate(images[1:], 1):
            decode_image(extra, f"init_images[{i}]")
        if len(images) > 1:
            warnings.append("only the first of init_images is used")
        if values.get("mask"):
            decode_image(values["mask"], "mask")
            raise ApiError(422, "mask: inpainting is not supported yet; send img2img requests without a mask.")

    prompt = values["prompt"]
    sd_hypernetwork = option("sd_hypernetwork")
    if values["disable_extra_networks"]:
        prompt, sd_hypernetwork = parse_prompt(prompt)[0], None
    settings = Settings(
        prompt=prompt,
        negative_prompt=values["negative_prompt"],
        sampler_name=values["sampler_name"] or values["sampler_index"] or "Euler",
        scheduler=values["scheduler"] or "Automatic",
        steps=values["steps"],
        cfg_scale=values["cfg_scale"],
        seed=values["seed"],
        width=values["width"],
        height=values["height"],
        batch_size=values["batch_size"],
        n_iter=values["n_iter"],
        clip_skip=int(option("CLIP_stop_at_last_layers")),
        init_image=init_image,
        denoising_strength=values["denoising_strength"] if values["denoising_strength"] is not None else 0.75,
        resize_mode=values.get("resize_mode") or 0,
        sd_hypernetwork=sd_hypernetwork,
        extra_networks_default_multiplier=float(option("extra_networks_default_multiplier")),
        rng=str(option("randn_source")),
        subseed=values["subseed"],
        subseed_strength=values["subseed_strength"] or 0.0,
        seed_resize_from_w=values["seed_resize_from_w"] or 0,
        seed_resize_from_h=values["seed_resize_from_h"] or 0,
        ensd=int(option("eta_noise_seed_delta") or 0),
        eta=values["eta"],
        sampler_params={name: option(key) for key, name in SAMPLER_OPTIONS.items()},
        **{key: values[key] for key in HIRES_SETTINGS if kind == "txt2img"},
    )
    if settings.enable_hr and values["denoising_strength"] is None:
        raise ApiError(422, "denoising_strength: the hires fix (enable_hr) needs it, e.g. 0.7.")
    warnings += [w for w in settings.check() if w not in warnings]
    try:
        resolve_sampler(settings.sampler_name, "Automatic")
    except HypernetError:  # A1111 1.9+ quietly uses its first sampler for a name it does not know; we say so
        warnings.append(f"sampler {settings.sampler_name!r} is unknown; {FALLBACK_SAMPLER} was used (as A1111 does)")
        settings.sampler_name = FALLBACK_SAMPLER
    generator = state.model.generator
    resolve_sampler(settings.sampler_name, settings.scheduler)  # names, early
    if settings.enable_hr:
        generator.check_upscaler(settings.hr_upscaler)
    if settings.enable_hr and (settings.hr_sampler_name or settings.hr_scheduler):
        resolve_sampler(settings.hr_sampler_name or settings.sampler_name, settings.hr_scheduler or "Automatic")
    parse_batch([settings.prompt], generator.available(), sd_hypernetwork=settings.sd_hypernetwork)  # names, early
    if settings.subseed == -1:  # drawn here, so that info.all_subseeds reports what the sampler used
        settings.subseed = random.randrange(2**32)
    plot = plan_plot(state, values["script_args"], settings) if values["script_name"] else None
    return Plan(kind, values, settings, overrides, warnings, subseed=settings.subseed, plot=plot)


def _fill_from_infotext(values: dict[str, Any], explicitly_set: set[str]) -> None:
    parsed = parse_infotext(values["infotext"])
    for key, (name, kind) in INFOTEXT_FIELDS.items():
        if key in parsed and name not in explicitly_set and parsed[key] != "":
            try:
                values[name] = kind(float(parsed[key])) if kind is int else kind(parsed[key])
            except ValueError:
                raise ApiError(422, f"infotext: {key} {parsed[key]!r} is not a valid {kind.__name__}.") from None
    if "Clip skip" in parsed:
        overrides = values["override_settings"] = dict(values["override_settings"] or {})
        overrides.setdefault("CLIP_stop_at_last_layers", int(parsed["Clip skip"]))


def _check_limits(state: ServerState, values: dict[str, Any]) -> None:
    limits = state.config.limits
    if values["width"] * values["height"] > limits.max_pixels:
        raise ApiError(422, f"width x height is {values['width']}x{values['height']}; at most {limits.max_pixels} "
                            "pixels are allowed per image.")
    for name, bound in (("steps", limits.max_steps), ("batch_size", limits.max_batch_size),
                        ("n_iter", limits.max_n_iter)):
        if values[name] > bound:
            raise ApiError(422, f"{name} is {values[name]}; this server allows at most {bound}.")


def run_plan(state: ServerState, plan: Plan, job: Job) -> Outcome:
    """Generate on the worker thread, batch by batch, honouring skip and interrupt."""
    started = time.perf_counter()
    state.reload()  # after /unload-checkpoint, the next job brings the model back (as A1111 does)
    restore = None
    if "sd_model_checkpoint" in plan.overrides:
        previous = state.model.checkpoint
        state.switch_model(state.find_checkpoint(plan.overrides["sd_model_checkpoint"]))
        if plan.values["override_settings_restore_afterwards"]:
            restore = previous
    try:
        outcome = _generate(state, plan, job)
    finally:
        if restore is not None:
            state.switch_model(restore)
    if not plan.values["override_settings_restore_afterwards"]:
        state.set_options({k: v for k, v in plan.overrides.items() if k != "sd_model_checkpoint"})
    outcome.seconds = time.perf_counter() - started
    return outcome


def _generate(state: ServerState, plan: Plan, job: Job) -> Outcome:
    generator = state.model.generator
    s = plan.settings
    if plan.plot is not None:
        result = run_plot_job(state, plan.plot, s, job)
        return Outcome(result.images, result.infotexts, result.cell_seeds, warnings=plan.warnings + result.warnings,
                       interrupted=result.interrupted, model=generator.info, plot=result)
    per_batch = _steps_run(s)
    job.job_count, job.sampling_steps = s.n_iter, per_batch
    outcome = Outcome(warnings=list(plan.warnings), model=generator.info)

    def progress(done: int, _total: int) -> None:
        job.job_no = (done - 1) // s.steps  # the generator counts every batch as ``steps``, img2img too
        job.sampling_step = done - job.job_no * s.steps

    def skipped() -> bool:  # consumed: /skip ends the current batch only
        if job.skipped:
            job.skipped = False
            outcome.skipped += 1
            return True
        return False

    every = max(1, int(state.option("show_progress_every_n_steps") or 1))
    with PreviewHook(generator, job, s.batch_size, every, enabled=bool(state.option("live_previews_enable"))):
        result = generator.generate(s, hooks=Hooks(progress=progress, interrupted=lambda: job.interrupted,
                                                   skipped=skipped))
    outcome.images, outcome.infotexts, outcome.seeds = result.images, result.infotexts, result.seeds
    outcome.applied = result.applied
    outcome.loras, outcome.embeddings = result.loras, result.embeddings
    outcome.warnings = list(dict.fromkeys(outcome.warnings + result.warnings))
    outcome.interrupted = job.interrupted
    job.job_no = s.n_iter
    return outcome


def _steps_run(s: Any) -> int:
    """Progress units per batch: the Generator reports every batch as ``steps`` steps (img2img and hires too)."""
    return s.steps


def respond(state: ServerState, plan: Plan, outcome: Outcome) -> dict[str, Any]:
    """A1111's response: raw base64 images, the request echoed with defaults, and ``info`` as a JSON string."""
    option = lambda key: plan.overrides.get(key, state.option(key))  # noqa: E731
    fmt = str(option("samples_format")).lower()
    with_info = bool(option("enable_pnginfo"))
    encoded = [image_bytes(image, text if with_info else None, fmt, int(option("jpeg_quality")))
               for image, text in zip(outcome.images, outcome.infotexts)]
    if plan.values["save_images"] and outcome.plot is not None:
        save_plot_images(state, outcome.plot, fmt)
    elif plan.values["save_images"]:
        _save(state, plan, outcome, fmt)
    parameters = dict(plan.values)
    if plan.kind == "img2img":
        include = parameters.pop("include_init_images", False)
        if not include:
            parameters["init_images"] = None
            parameters["mask"] = None
    images = [base64.b64encode(data).decode() for data in encoded] if plan.values["send_images"] else []
    return {"images": images, "parameters": parameters, "info": json.dumps(_info(state, plan, outcome), default=lambda _: None)}


def _info(state: ServerState, plan: Plan, outcome: Outcome) -> dict[str, Any]:
    s, values = plan.settings, plan.values
    model = outcome.model or state.model.generator.info
    n = len(outcome.images)
    prompts = [parse_infotext(t)["Prompt"] for t in outcome.infotexts] or [s.prompt]
    first_seed = outcome.seeds[0] if outcome.seeds else s.seed
    extra: dict[str, Any] = {"Schedule type": s.scheduler}
    if outcome.applied:
        extra["Hypernetworks"] = ", ".join(f"{a.name}:{a.multiplier}" for a in outcome.applied)
    written = parse_infotext(outcome.infotexts[0]) if outcome.infotexts else {}
    extra |= {key: written[key] for key in ("Lora hashes", "TI hashes") if key in written}
    return {
        "prompt": prompts[0],
        "all_prompts": prompts,
        "negative_prompt": s.negative_prompt,
        "all_negative_prompts": [s.negative_prompt] * max(n, 1),
        "seed": first_seed,
        "all_seeds": outcome.seeds,
        "subseed": plan.subseed,
        "all_subseeds": [(plan.subseed + i) % 2**32 for i in range(n)],  # A1111: one per image, counting up
        "subseed_strength": values["subseed_strength"],
        "width": s.width,
        "height": s.height,
        "sampler_name": s.sampler_name,
        "cfg_scale": s.cfg_scale,
        "steps": s.steps,
        "batch_size": s.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model.name,
        "sd_model_hash": model.short_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": values["seed_resize_from_w"],
        "seed_resize_from_h": values["seed_resize_from_h"],
        "denoising_strength": s.denoising_strength if s.init_image is not None else values["denoising_strength"],
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": outcome.infotexts,
        "styles": values["styles"] or [],
        "job_timestamp": datetime.now().strftime("%Y%m%d%H%M%S"),
        "clip_skip": s.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": f"hypernet {__version__}",
        # ours: what acted, what was ignored, and whether /interrupt or /skip cut the job short
        "hypernetworks": [{"name": a.name, "multiplier": a.multiplier, "path": a.path} for a in outcome.applied],
        "loras": [{"name": a.name, "te": a.te, "unet": a.unet, "path": a.path, "hash": a.short_hash}
                  for a in outcome.loras],
        "embeddings": outcome.embeddings,
        "warnings": outcome.warnings,
        "interrupted": outcome.interrupted,
        "skipped_batches": outcome.skipped,
    }


def _save(state: ServerState, plan: Plan, outcome: Outcome, fmt: str) -> None:
    folder = Path(state.config.outputs_dir) / f"{plan.kind}-images" / datetime.now().strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    start = next_number(folder)  # never over an earlier image, even after deletions
    for i, (image, text, seed) in enumerate(zip(outcome.images, outcome.infotexts, outcome.seeds)):
        save_image(image, folder / f"{start + i:05d}-{seed}.{fmt}", text)


class PreviewHook:
    """A UNet forward hook that decodes the model's current estimate of the final image while someone watches.

    At each UNet call the input latent ``x_t`` (every diffusers scheduler feeds the UNet the variance-preserving
    latent) and the prediction give ``x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a)`` (v-prediction:
    ``sqrt(a) * x_t - sqrt(1 - a) * v``) for the first image's conditional half. It is decoded with the model's VAE
    only when ``/progress`` asked for an image, at most every ``every`` steps, on the worker thread itself, and
    never sooner than ``BUDGET`` times the last decode's duration after it: previews cost at most ~20% of sampling
    whatever the model's size.
    """

    BUDGET = 4.0

    def __init__(self, generator: Any, job: Job, batch_size: int, every: int, *, enabled: bool = True) -> None:
        self.generator, self.job, self.batch_size, self.every, self.enabled = generator, job, batch_size, every, enabled
        self.alphas = getattr(generator.pipe.scheduler, "alphas_cumprod", None)
        self.v_prediction = generator.info.prediction_type == "v_prediction"
        self.last_step: int | None = None
        self.not_before = 0.0  # monotonic time before which no new preview is decoded
        self._handle: Any = None

    def __enter__(self) -> PreviewHook:
        if self.enabled and self.alphas is not None:
            self._handle = self.generator.pipe.unet.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()

    def _alpha(self, t: Any) -> float:
        value = float(torch.as_tensor(t).flatten()[0])
        last = len(self.alphas) - 1
        value = min(max(value, 0.0), float(last))
        lo, frac = int(value), value - int(value)
        hi = min(lo + 1, last)
        return float(self.alphas[lo] * (1 - frac) + self.alphas[hi] * frac)

    @torch.no_grad()
    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        job = self.job
        if not job.preview_wanted or job.sampling_step == 0:
            return
        if self.last_step is not None and job.sampling_step - self.last_step < self.every:
            return
        if time.monotonic() < self.not_before:
            return
        started = time.monotonic()
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        prediction = output[0] if isinstance(output, tuple) else output.sample
        i = 0  # hypernet.sampling batches CFG as [cond, uncond], as A1111 does: the first image's cond
        x, e = sample[i : i + 1].float(), prediction[i : i + 1].float()
        a = self._alpha(t)
        x0 = math.sqrt(a) * x - math.sqrt(1 - a) * e if self.v_prediction else (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        vae = self.generator.pipe.vae
        decoded = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype)).sample[0]
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        job.preview_png = image_bytes(Image.fromarray(pixels), None, "png")
        self.last_step = job.sampling_step
        self.not_before = time.monotonic() + self.BUDGET * (time.monotonic() - started)
