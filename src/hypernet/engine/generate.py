"""txt2img / img2img with hypernetworks: A1111 prompts, samplers and infotext on a diffusers pipeline.

One :class:`Generator` owns one loaded model and the hypernetwork processor installed on its UNet; every call
parses the prompt's ``<hypernet:...>`` tags, activates exactly those networks, and reports what was applied.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from PIL import Image

from hypernet import __version__
from hypernet.engine.attention import attention_widths, install_hypernetworks
from hypernet.engine.checkpoints import ModelInfo
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.embeddings import EmbeddingLibrary
from hypernet.engine.infotext import format_infotext
from hypernet.engine.lora import AppliedLora, LoraLibrary, LoraMerger, activate_loras, lora_infotext
from hypernet.engine.samplers import make_scheduler, resolve_sampler
from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork, list_hypernetworks, load_hypernetwork
from hypernet.prompt.syntax import prompt_schedules
from hypernet.prompt.tags import parse_batch

Progress = Callable[[int, int], None]  # (step done, total steps)
NETWORK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    sd_hypernetwork: str | None = None  # A1111's "Add hypernetwork to prompt" setting
    extra_networks_default_multiplier: float = 1.0
    hypernetwork_precision: str = "fp32"  # "bf16"/"fp16": faster networks at ~1e-3 relative error, if asked

    def check(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                raise HypernetError(f"{name} is {value}; expected a positive multiple of 8, e.g. 512.")
        if self.steps < 1:
            raise HypernetError(f"steps is {self.steps}; expected at least 1.")
        if self.batch_size < 1 or self.n_iter < 1:
            raise HypernetError("batch size and batch count must be at least 1.")
        if self.hypernetwork_precision not in NETWORK_DTYPES:
            raise HypernetError(f"hypernetwork precision {self.hypernetwork_precision!r} must be one of "
                                f"{', '.join(NETWORK_DTYPES)}.")
        if not 0 < self.denoising_strength <= 1 and self.init_image is not None:
            raise HypernetError(f"denoising strength is {self.denoising_strength}; expected a value in (0, 1].")


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
                 *, lora_dirs: Sequence[str | os.PathLike[str]] = (),
                 embeddings_dir: str | os.PathLike[str] | None = None) -> None:
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)  # callers show progress through ``progress``
        self.info = info
        self.hypernetwork_dir = Path(hypernetwork_dir) if hypernetwork_dir is not None else None
        self.stack = install_hypernetworks(pipe.unet)
        self._loaded: dict[str, tuple[float, Hypernetwork]] = {}  # path -> (mtime, network)
        self._attention_widths = attention_widths(pipe.unet)
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

    def _network(self, path: Path) -> Hypernetwork:
        mtime = path.stat().st_mtime
        cached = self._loaded.get(str(path))
        if cached is None or cached[0] != mtime:  # a retrained file is reloaded, never stale
            net = load_hypernetwork(path).to(self.device)  # fp32 whatever the model's dtype
            cached = self._loaded[str(path)] = (mtime, net)
        return cached[1]

    def activate(
        self, prompts: list[str], s: Settings, extra: Sequence[tuple[Hypernetwork, float]] = ()
    ) -> tuple[list[str], list[str], list[Applied], list[str]]:
        """Parse tags, load and activate the networks (then ``extra``, e.g. a network being trained);
        returns (clean prompts, infotext prompts, applied, warnings)."""
        available = self.available()
        batch = parse_batch(prompts, available, sd_hypernetwork=s.sd_hypernetwork,
                            default_multiplier=s.extra_networks_default_multiplier)
        chosen = [(self._network(available[sel.name]), sel.multiplier, sel.name, str(available[sel.name]))
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
        self.stack.set(entries, dtype=NETWORK_DTYPES[s.hypernetwork_precision])
        return batch.prompts, batch.infotext_prompts, applied, warnings

    def generate(
        self,
        s: Settings,
        progress: Progress | None = None,
        *,
        hooks: Hooks | None = None,
        extra_networks: Sequence[tuple[Hypernetwork, float]] = (),
    ) -> Result:
        """txt2img, or img2img when ``s.init_image`` is set. Same seed, same image.

        ``extra_networks`` are applied after the prompt's tags (training previews use this); ``hooks`` let a
        caller watch progress and interrupt or skip.
        """
        hooks = hooks or Hooks(progress=progress)
        s.check()
        sampler, schedule = resolve_sampler(s.sampler_name, s.scheduler)
        base_seed = random.randrange(2**32) if s.seed == -1 else int(s.seed)
        pipe = self.pipe if s.init_image is None else AutoPipelineForImage2Image.from_pipe(self.pipe)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler(s.sampler_name, s.scheduler, self.pipe.scheduler.config)
        embeddings = self.embeddings.for_width(sum(self.info.text_widths))
        encoder = PromptEncoder(self.pipe, clip_skip=s.clip_skip, embeddings=embeddings)
        result = Result([], [], [], warnings=self.embeddings.skipped_warnings([s.prompt, s.negative_prompt]))
        total = s.n_iter * s.steps
        try:
            for it in range(s.n_iter):
                if hooks.interrupted and hooks.interrupted():
                    break
                seeds = [base_seed + it * s.batch_size + i for i in range(s.batch_size)]
                prompts = [s.prompt] * s.batch_size
                clean, info_prompts, applied, warnings = self.activate(prompts, s, extra_networks)
                result.loras, lora_warnings = activate_loras(self.loras, self.lora_merger, prompts)
                warnings += lora_warnings
                result.applied, result.warnings = applied, list(dict.fromkeys(result.warnings + warnings))
                images = self._run(pipe, encoder, clean[0], s, seeds, hooks, it * s.steps, total)
                for image, seed, prompt in zip(images, seeds, info_prompts):
                    result.images.append(image)
                    result.seeds.append(seed)
                    result.infotexts.append(self.infotext(prompt, s, seed, sampler.name, schedule.label,
                                                          networks=lora_infotext(result.loras)
                                                          | self.embeddings.infotext(list(encoder.embeddings.used))))
                result.embeddings = list(encoder.embeddings.used)
        finally:
            self.stack.set([])
            self.lora_merger.restore()  # the merge stays cached for the next generation with the same LoRAs
        return result

    def _run(self, pipe: DiffusionPipeline, encoder: PromptEncoder, prompt: str, s: Settings, seeds: list[int],
             hooks: Hooks, done_before: int, total: int) -> list[Image.Image]:
        device, dtype = self.device, self.pipe.unet.dtype
        cond_sched = prompt_schedules([prompt], s.steps)[0]
        uncond_sched = prompt_schedules([s.negative_prompt], s.steps)[0]

        def embeds_at(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
            step = min(step, s.steps)
            c = encoder.encode(next(t for end, t in cond_sched if step <= end))
            u = encoder.encode(next(t for end, t in uncond_sched if step <= end))
            ce, ue = encoder.pad_to_same_length(c.embeds, u.embeds)
            n = len(seeds)
            cast = lambda t: None if t is None else t.to(device, dtype).repeat(n, *[1] * (t.dim() - 1))  # noqa: E731
            return cast(ce), cast(ue), cast(c.pooled), cast(u.pooled)

        schedule_steps = sorted({end for end, _ in cond_sched} | {end for end, _ in uncond_sched})
        kwargs: dict[str, object] = {}
        ce, ue, cp, up = embeds_at(0)
        kwargs.update(prompt_embeds=ce, negative_prompt_embeds=ue)
        if cp is not None:
            kwargs.update(pooled_prompt_embeds=cp, negative_pooled_prompt_embeds=up)
        if s.init_image is not None:
            kwargs.update(image=s.init_image.convert("RGB").resize((s.width, s.height)), strength=s.denoising_strength)
        else:
            kwargs.update(width=s.width, height=s.height)

        def on_step_end(p: DiffusionPipeline, i: int, t: object, tensors: dict) -> dict:
            if hooks.progress:
                hooks.progress(done_before + i + 1, total)
            if hooks.latents and "latents" in tensors:
                hooks.latents(tensors["latents"])
            if (hooks.interrupted and hooks.interrupted()) or (hooks.skipped and hooks.skipped()):
                p._interrupt = True  # diffusers' own way to end the denoising loop early
            if len(schedule_steps) > 1 and "prompt_embeds" in tensors:  # prompt editing: swap conditioning
                nce, nue, _, _ = embeds_at(i + 1)
                if p.do_classifier_free_guidance:
                    tensors["prompt_embeds"] = torch.cat([nue, nce])
                else:
                    tensors["prompt_embeds"] = nce
            return tensors

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]  # CPU noise: same on every device
        steps = s.steps
        if s.init_image is not None and int(steps * s.denoising_strength) < 1:
            steps = math.ceil(1 / s.denoising_strength)  # img2img runs steps * strength: keep at least one
        out = pipe(
            num_inference_steps=steps,
            guidance_scale=s.cfg_scale,
            generator=generators,
            num_images_per_prompt=1,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
            **kwargs,
        )
        return list(out.images)

    def infotext(self, prompt: str, s: Settings, seed: int, sampler: str, schedule: str,
                 networks: dict[str, str] | None = None) -> str:
        params: dict[str, object] = {
            "Steps": s.steps,
            "Sampler": sampler,
            "Schedule type": schedule,
            "CFG scale": s.cfg_scale,
            "Seed": seed,
            "Size": f"{s.width}x{s.height}",
            "Model hash": self.info.short_hash,
            "Model": self.info.name,
            "Denoising strength": s.denoising_strength if s.init_image is not None else None,
            "Clip skip": s.clip_skip if s.clip_skip > 1 else None,
            **(networks or {}),  # "Lora hashes", "TI hashes"
            "Version": f"hypernet {__version__}",
        }
        return format_infotext(prompt, s.negative_prompt, params)
