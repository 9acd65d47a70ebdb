"""txt2img / img2img with hypernetworks: A1111 prompts, samplers, noise, hires fix and infotext on a diffusers model.

One :class:`Generator` owns one loaded model and the hypernetwork processor installed on its UNet; every call
parses the prompt's ``<hypernet:...>`` tags, activates exactly those networks, and reports what was applied.
Sampling is :func:`hypernet.sampling.sample_latent` (A1111's own samplers and noise), the one path for the CLI, the
HTTP API, the web UI and training previews.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from hypernet import __version__
from hypernet.engine import hires, latents, upscalers
from hypernet.engine.attention import attention_widths, install_hypernetworks
from hypernet.engine.checkpoints import ModelInfo, precision_dtype
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.embeddings import EmbeddingLibrary
from hypernet.engine.infotext import format_infotext
from hypernet.engine.lora import AppliedLora, LoraLibrary, LoraMerger, activate_loras, lora_infotext
from hypernet.engine.model_defaults import model_defaults
from hypernet.engine.resize import LATENT_UPSCALE, fit_image
from hypernet.errors import HypernetError
from hypernet.sampling import Plan, plan, sample_latent
from hypernet.sampling.schedules import alphas_cumprod_for
from hypernet.network import Hypernetwork, list_hypernetworks, load_hypernetwork
from hypernet.prompt.syntax import prompt_schedules
from hypernet.prompt.tags import parse_batch
from hypernet.settings import GenerateSettings

Progress = Callable[[int, int], None]  # (step done, total steps)


@dataclass
class Hooks:
    """What a caller (CLI progress bar, HTTP server, training previews) can observe and control mid-sampling."""

    progress: Progress | None = None
    # As in A1111, both end the current batch's sampling early and keep its (partly denoised) images;
    # ``interrupted`` also drops the batches not started yet, ``skipped`` goes on with them.
    interrupted: Callable[[], bool] | None = None
    skipped: Callable[[], bool] | None = None
    latents: Callable[[torch.Tensor], None] | None = None  # current latents, e.g. for a live preview


@dataclass
class Settings:
    """One generation's parameters, named as A1111's API names them."""

    prompt: str
    negative_prompt: str = ""
    # None: the loaded model's default (its native size, its recorded sampler/steps/CFG, else A1111's DPM++ 2M,
    # 20 steps, CFG 7; see hypernet.engine.model_defaults). The HTTP API always fills these with A1111's values.
    sampler_name: str | None = None
    scheduler: str = "Automatic"
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int = -1
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0  # img2img: A1111's index into engine.resize.RESIZE_MODES
    sd_hypernetwork: str | None = None  # A1111's "Add hypernetwork to prompt" setting
    extra_networks_default_multiplier: float = 1.0
    hypernetwork_precision: str = "fp32"  # "bf16"/"fp16": faster networks at ~1e-3 relative error, if asked
    # A1111's noise: RNG source, variation seed ("subseed") and strength, seed resize, eta noise seed delta
    rng: str = "GPU"
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    ensd: int = 0
    eta: float | None = None  # None: A1111's defaults (1 for ancestral/SDE samplers, 0 for DDIM)
    sampler_params: dict[str, Any] = field(default_factory=dict)  # more infotext fields: "Sigma churn", ...
    # Hires fix (txt2img): first pass at width x height, upscale, then an img2img pass at denoising_strength
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None  # None: "Latent"
    hr_second_pass_steps: int = 0  # 0: the first pass's steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""

    def check(self) -> list[str]:
        """Validate against :class:`~hypernet.settings.GenerateSettings` (the limits every path shares); sizes that
        are not multiples of 8 are floored, as A1111 does, and the returned warnings say so. Fields left as None
        must have been filled with the model's defaults first (:meth:`ModelDefaults.complete`)."""
        checked = GenerateSettings(**{name: getattr(self, name) for name in _CHECKED})
        self.width, self.height = checked.width, checked.height
        precision_dtype(self.hypernetwork_precision, "hypernetwork precision")
        if not math.isfinite(self.extra_networks_default_multiplier):
            raise HypernetError(f"extra_networks_default_multiplier is {self.extra_networks_default_multiplier}; "
                                "expected a finite number.")
        if self.enable_hr and not 0 < self.denoising_strength <= 1:
            raise HypernetError(f"denoising strength is {self.denoising_strength}; expected a value in (0, 1] for "
                                "the hires pass.")
        if self.enable_hr:  # the upscaler's name is checked by the Generator, which knows its ESRGAN folder
            if self.hr_scale <= 0 and not (self.hr_resize_x or self.hr_resize_y):
                raise HypernetError(f"hires scale is {self.hr_scale}; expected a positive factor, e.g. 2.")
        return checked.warnings

    def params(self, seed: int, subseed: int, batch_size: int | None = None) -> dict[str, Any]:
        """These settings as A1111 infotext fields, the input of :func:`hypernet.sampling.sample_latent`."""
        values: dict[str, Any] = {
            **self.sampler_params,
            "Sampler": self.sampler_name, "Schedule type": self.scheduler, "Steps": self.steps,
            "CFG scale": self.cfg_scale, "Seed": seed, "Size": f"{self.width}x{self.height}", "RNG": self.rng,
            "ENSD": self.ensd, "Batch size": batch_size or self.batch_size,
            "Denoising strength": self.denoising_strength,
        }
        if self.subseed_strength:
            values.update({"Variation seed": subseed, "Variation seed strength": self.subseed_strength})
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            values["Seed resize from"] = f"{self.seed_resize_from_w}x{self.seed_resize_from_h}"
        if self.eta is not None:
            values["Eta"] = self.eta
        return values


_CHECKED = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed", "subseed",
            "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "width", "height", "batch_size", "n_iter",
            "clip_skip", "denoising_strength", "resize_mode", "enable_hr", "hr_scale", "hr_second_pass_steps", "hr_resize_x",
            "hr_resize_y", "hr_upscaler", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")


@dataclass
class Applied:
    """One network that acted on this generation, and where."""

    name: str
    multiplier: float
    path: str
    layers_by_width: dict[int, int]


@dataclass
class Result:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    applied: list[Applied] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loras: list[AppliedLora] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)  # textual-inversion embeddings the prompts used


def apply_memory_options(pipe: DiffusionPipeline, *, medvram: bool = False, lowvram: bool = False,
                         vae_tiling: bool = False) -> None:
    """A1111's ``--medvram`` (whole models offloaded to the CPU between uses) and ``--lowvram`` (layer by layer),
    plus VAE tiling for large images. None of these replaces the attention processors that apply hypernetworks
    (diffusers' attention slicing would, so it is not offered; SDPA attention is already memory-efficient)."""
    if medvram and lowvram:
        raise HypernetError("choose one of --medvram and --lowvram, not both.")
    if (medvram or lowvram) and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise HypernetError("--medvram/--lowvram offload models from a GPU to system memory; no GPU was found, "
                            "and on the CPU everything is already in system memory.")
    if medvram:
        pipe.enable_model_cpu_offload()
    if lowvram:
        pipe.enable_sequential_cpu_offload()
    if vae_tiling:
        pipe.vae.enable_tiling()


class Generator:
    """A loaded model that generates with hypernetworks named in prompts (``<hypernet:NAME:WEIGHT>``)."""

    def __init__(self, pipe: DiffusionPipeline, info: ModelInfo, hypernetwork_dir: str | os.PathLike[str] | None = None,
                 esrgan_dir: str | os.PathLike[str] | None = None, *, max_loaded_networks: int = 16,
                 lora_dirs: Sequence[str | os.PathLike[str]] = (),
                 embeddings_dir: str | os.PathLike[str] | None = None) -> None:
        self.pipe = pipe
        self.esrgan_dir = Path(esrgan_dir) if esrgan_dir is not None else None
        pipe.set_progress_bar_config(disable=True)  # callers show progress through ``progress``
        self.info = info
        self.hypernetwork_dir = Path(hypernetwork_dir) if hypernetwork_dir is not None else None
        self.stack = install_hypernetworks(pipe.unet)
        # path -> (mtime, network), least recently used first: a long-running server keeps a bounded set
        self._loaded: OrderedDict[str, tuple[float, Hypernetwork]] = OrderedDict()
        self.max_loaded_networks = max_loaded_networks
        self._attention_widths = attention_widths(pipe.unet)
        self.alphas_cumprod = alphas_cumprod_for(pipe.scheduler.config)
        self.defaults = model_defaults(pipe, info.path)  # what unset Settings fields become
        self.loras = LoraLibrary(lora_dirs)  # <lora:NAME> files (A1111: models/Lora)
        self.lora_merger = LoraMerger(pipe, info.family)
        self.embeddings = EmbeddingLibrary(embeddings_dir)  # textual inversion (A1111: embeddings/)

    @property
    def device(self) -> torch.device:
        """Where the UNet computes (with CPU offload, the accelerator, not where weights rest)."""
        return self.pipe._execution_device

    def available(self) -> dict[str, Path]:
        """Hypernetworks discovered in the folder now (A1111's rules); re-scanned on every call."""
        return list_hypernetworks(self.hypernetwork_dir) if self.hypernetwork_dir else {}

    def upscalers(self) -> dict[str, Path]:
        """ESRGAN upscalers in the folder now (name: file stem); re-scanned on every call."""
        return upscalers.list_esrgan(self.esrgan_dir)

    def check_upscaler(self, name: str | None) -> str:
        """The hires upscaler's name, built in or an ESRGAN file here; an unknown one is an error sentence."""
        return hires.check_upscaler(name, self.upscalers())

    def network(self, path: Path) -> Hypernetwork:
        """The network in ``path``, on the model's device in fp32; loaded once while the file is unchanged."""
        mtime = path.stat().st_mtime
        cached = self._loaded.get(str(path))
        if cached is None or cached[0] != mtime:  # a retrained file is reloaded, never stale
            net = load_hypernetwork(path).to(self.device)  # fp32 whatever the model's dtype
            cached = self._loaded[str(path)] = (mtime, net)
        self._loaded.move_to_end(str(path))
        while len(self._loaded) > self.max_loaded_networks:
            self._loaded.popitem(last=False)
        return cached[1]

    def select(
        self, prompts: list[str], s: Settings, extra: Sequence[tuple[Hypernetwork, float]] = ()
    ) -> tuple[list[str], list[str], list[Applied], list[str], list[tuple[Hypernetwork, float]]]:
        """Parse tags and load the networks they name (then ``extra``, e.g. a network being trained); returns
        (clean prompts, infotext prompts, applied, warnings, stack entries)."""
        available = self.available()
        batch = parse_batch(prompts, available, sd_hypernetwork=s.sd_hypernetwork,
                            default_multiplier=s.extra_networks_default_multiplier)
        chosen = [(self.network(available[sel.name]), sel.multiplier, sel.name, str(available[sel.name]))
                  for sel in batch.hypernetworks]
        chosen += [(net.to(self.device), m, net.name, net.filename or "") for net, m in extra]
        entries, applied, warnings = [], [], list(batch.warnings)
        text_widths = set(self.info.text_widths) | ({sum(self.info.text_widths)} if len(self.info.text_widths) > 1 else set())
        for net, multiplier, name, path in chosen:
            entries.append((net, multiplier))
            hits = {w: n for w, n in self._attention_widths.items() if net.modules_for(w) is not None}
            applied.append(Applied(name, multiplier, path, hits))
            if not any(w in text_widths for w in hits):
                text = sorted(w for w in self._attention_widths if w in text_widths)
                warnings.append(
                    f"hypernetwork {name!r} has no module for this model's text width {text} (it has {net.widths}), "
                    "so it does not change cross-attention; it was probably made for another model family."
                )
            if not hits:
                warnings.append(f"hypernetwork {name!r} matches no attention layer of this model: it has no effect.")
        # networks given directly (a training run's previews) are named in the infotext as tags, so PNG Info and
        # "Send to txt2img" apply them again
        tags = "".join(f" <hypernet:{net.name}:{m:g}>" for net, m in extra)
        return batch.prompts, [p + tags for p in batch.infotext_prompts], applied, warnings, entries

    def generate(
        self,
        s: Settings,
        progress: Progress | None = None,
        *,
        hooks: Hooks | None = None,
        extra_networks: Sequence[tuple[Hypernetwork, float]] = (),
    ) -> Result:
        """txt2img, or img2img when ``s.init_image`` is set. Same seed and settings, same image as A1111.

        ``extra_networks`` are applied after the prompt's tags (training previews use this); ``hooks`` let a
        caller watch progress and interrupt or skip.
        """
        hooks = hooks or Hooks(progress=progress)
        s = self.defaults.complete(s)
        adjusted = s.check()
        if s.enable_hr:
            self.check_upscaler(s.hr_upscaler)
        base_seed = random.randrange(4294967294) if s.seed == -1 else int(s.seed)
        base_subseed = random.randrange(4294967294) if s.subseed == -1 else int(s.subseed)
        plan(s.params(base_seed, base_subseed))  # bad names and values fail before any work
        embeddings = self.embeddings.for_width(sum(self.info.text_widths))
        encoder = PromptEncoder(self.pipe, clip_skip=s.clip_skip, embeddings=embeddings)
        result = Result([], [], [], warnings=adjusted + self.embeddings.skipped_warnings([s.prompt, s.negative_prompt]))
        total = s.n_iter * s.steps
        try:
            for it in range(s.n_iter):
                if hooks.interrupted and hooks.interrupted():
                    break
                first = it * s.batch_size
                seed = base_seed + (first if s.subseed_strength == 0 else 0)
                params = s.params(seed, base_subseed + first)
                p = plan(params)
                prompts = [s.prompt] * s.batch_size
                clean, info_prompts, applied, warnings, entries = self.select(prompts, s, extra_networks)
                # LoRAs are merged into the weights for the generation (cached for the next one with the same
                # LoRAs) and the original tensors are put back in ``finally``.
                result.loras, lora_warnings = activate_loras(self.loras, self.lora_merger, prompts)
                warnings += lora_warnings
                result.applied, result.warnings = applied, list(dict.fromkeys(result.warnings + warnings))
                # The networks apply for this batch only; whatever the stack held before (a training run's
                # network) applies again afterwards. Model calls tell each layer whether folding pays off.
                calls = p.steps * (2 if p.sampler.flag.get("second_order") else 1)
                dtype = precision_dtype(s.hypernetwork_precision)
                with self.stack.applied(entries, dtype=dtype, expected_calls=calls):
                    images = self._run(encoder, clean[0], s, params, hooks, it * s.steps, total)
                networks = lora_infotext(result.loras) | self.embeddings.infotext(list(encoder.embeddings.used))
                for i, (image, prompt) in enumerate(zip(images, info_prompts)):
                    result.images.append(image)
                    result.seeds.append(p.seeds[i])
                    result.infotexts.append(self.infotext(prompt, s, p, i, networks))
                result.embeddings = list(encoder.embeddings.used)
        finally:
            self.lora_merger.restore()  # the merge stays cached for the next generation with the same LoRAs
        return result

    def _conditioning(self, encoder: PromptEncoder, prompt: str, negative: str, p: Plan, batch: int,
                      size: tuple[int, int]) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
        """Conditioning by model call, as A1111's CFG denoiser counts them for prompt editing (second-order
        samplers schedule over twice the steps)."""
        total = p.steps * (2 if p.sampler.flag.get("second_order") else 1)

        def by_call(text: str) -> Callable[[int], Any]:
            schedule = prompt_schedules([text], total)[0]

            def at(call: int) -> Any:
                c = encoder.encode(next((t for end, t in schedule if call <= end), schedule[-1][1]))
                embeds = c.embeds.to(self.device).repeat(batch, 1, 1)
                if c.pooled is None:
                    return embeds
                w, h = size
                time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=self.device)
                return {"embeds": embeds, "text_embeds": c.pooled.to(self.device).repeat(batch, 1),
                        "time_ids": time_ids.repeat(batch, 1)}
            return at

        return by_call(prompt), by_call(negative)

    def _run(self, encoder: PromptEncoder, prompt: str, s: Settings, params: dict[str, Any], hooks: Hooks,
             done_before: int, total: int) -> list[Image.Image]:
        if s.init_image is not None and s.denoising_strength == 0:  # A1111: nothing is redrawn, the image stays
            image = s.init_image.convert("RGB").resize((s.width, s.height), Image.Resampling.LANCZOS)
            return [image] * plan(params).batch_size
        p = plan(params)
        stopped = lambda: bool((hooks.interrupted and hooks.interrupted()) or (hooks.skipped and hooks.skipped()))  # noqa: E731

        def on_step(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            if hooks.progress:
                hooks.progress(done_before + min(i + 1, s.steps), total)
            if hooks.latents:
                hooks.latents(x)

        common = dict(alphas_cumprod=self.alphas_cumprod, prediction_type=self.info.prediction_type,
                      sdxl=self.info.family == "sdxl", callback=on_step, interrupted=stopped, device=self.device)
        unet = self.pipe.unet
        init = None
        if s.init_image is not None:
            image = fit_image(s.resize_mode, s.init_image.convert("RGB"), s.width, s.height)
            if s.resize_mode == LATENT_UPSCALE:  # encoded at its own size (floored to the VAE's 8), latents resized
                image = image.crop((0, 0, max(8, image.width - image.width % 8), max(8, image.height - image.height % 8)))
            init = latents.encode(self.pipe.vae, [image] * p.batch_size, self.device)
            if init.shape[-2:] != (s.height // 8, s.width // 8):
                init = torch.nn.functional.interpolate(init, size=(s.height // 8, s.width // 8), mode="bilinear")
        cond, uncond = self._conditioning(encoder, prompt, s.negative_prompt, p, p.batch_size, (s.width, s.height))
        with torch.no_grad():
            x = sample_latent(unet, cond, uncond, params, init_latent=init, **common)
            if s.enable_hr and init is None and not stopped():
                x = self._hires(encoder, prompt, s, params, x, common)
        return latents.decode(self.pipe.vae, x)

    def _hires(self, encoder: PromptEncoder, prompt: str, s: Settings, params: dict[str, Any], x: torch.Tensor,
               common: dict[str, Any]) -> torch.Tensor:
        """A1111's second pass: upscale, fresh same-seed noise at the new size, img2img for exactly the hires steps."""
        target = hires.target_size(s.width, s.height, s.hr_scale, s.hr_resize_x, s.hr_resize_y)
        upscaler = self.check_upscaler(s.hr_upscaler)
        if upscaler in hires.LATENT_MODES:
            x = hires.upscale_latent(x, target, upscaler)
        else:
            files = self.upscalers()
            model = upscalers.load_esrgan(files[upscaler]).to(self.device) if upscaler in files else None
            images = [hires.upscale_image(im, target, upscaler, model) for im in latents.decode(self.pipe.vae, x)]
            x = hires.crop(latents.encode(self.pipe.vae, images, self.device), target)
        hr_params = {**params, "Sampler": s.hr_sampler_name or s.sampler_name,
                     "Schedule type": s.hr_scheduler or s.scheduler,
                     "Size": f"{x.shape[3] * 8}x{x.shape[2] * 8}"}
        hr_plan = plan(hr_params)
        hr_steps = s.hr_second_pass_steps or s.steps
        cond, uncond = self._conditioning(encoder, s.hr_prompt or prompt, s.hr_negative_prompt or s.negative_prompt,
                                          hr_plan, hr_plan.batch_size, (target.width, target.height))
        return sample_latent(self.pipe.unet, cond, uncond, hr_params, init_latent=x, hires_steps=hr_steps, **common)

    def infotext(self, prompt: str, s: Settings, p: Plan, index: int = 0,
                 networks: dict[str, str] | None = None) -> str:
        """A1111's infotext for image ``index`` of a batch sampled with plan ``p``; ``networks`` holds the
        "Lora hashes" and "TI hashes" fields, which A1111 adds after the hires fields and before the sampler's."""
        fields = p.infotext_fields()
        fields["Seed"] = p.seeds[index]
        if p.subseed_strength:
            fields["Variation seed"] = p.subseeds[index]
        ordered: dict[str, object] = {key: fields.pop(key) for key in
                                      ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size")}
        ordered.update({"Model hash": self.info.short_hash, "Model": self.info.name})
        for key in ("Variation seed", "Variation seed strength", "Seed resize from"):
            if key in fields:
                ordered[key] = fields.pop(key)
        hr = s.enable_hr and s.init_image is None
        ordered["Denoising strength"] = s.denoising_strength if s.init_image is not None or hr else None
        ordered["Clip skip"] = s.clip_skip if s.clip_skip > 1 else None
        for key in ("ENSD", "RNG"):
            if key in fields:
                ordered[key] = fields.pop(key)
        if hr:  # A1111 adds the hires fields before sampling, so before the sampler's own (Eta, ...)
            target = hires.target_size(s.width, s.height, s.hr_scale, s.hr_resize_x, s.hr_resize_y)
            hr_sampler = plan({"Sampler": s.hr_sampler_name or s.sampler_name, "Seed": 0}).sampler.name
            ordered["Hires sampler"] = hr_sampler if s.hr_sampler_name and hr_sampler != p.sampler.name else None
            ordered["Hires prompt"] = s.hr_prompt if s.hr_prompt and s.hr_prompt != s.prompt else None
            ordered["Hires negative prompt"] = (s.hr_negative_prompt if s.hr_negative_prompt
                                                and s.hr_negative_prompt != s.negative_prompt else None)
            if s.hr_scheduler:
                label = plan({"Sampler": hr_sampler, "Schedule type": s.hr_scheduler, "Seed": 0}).schedule_label
                ordered["Hires schedule type"] = label if label != p.schedule_label else None
            ordered[target.infotext[0]] = target.infotext[1]
            ordered["Hires steps"] = s.hr_second_pass_steps or None
            ordered["Hires upscaler"] = s.hr_upscaler
        ordered.update(networks or {})
        ordered.update(fields)
        ordered["Version"] = f"hypernet {__version__}"
        return format_infotext(prompt, s.negative_prompt, ordered)
