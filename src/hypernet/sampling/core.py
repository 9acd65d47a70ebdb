"""One sampling run as A1111 1.10 does it: noise, schedule, CFG denoiser and sampler, for txt2img and img2img.

``params`` is keyed by A1111's infotext names ("Sampler", "Schedule type", "Steps", "CFG scale", "Seed", "Size",
"RNG", "ENSD", "Variation seed", ...), so an infotext pasted from A1111 drives this directly; absent keys take
A1111's defaults (its settings' defaults included: eta, sigma churn, schedule overrides, UniPC options).
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchsde
from torchsde._brownian import brownian_interval

from hypernet.errors import HypernetError
from hypernet.sampling import kdiffusion, timesteps
from hypernet.sampling.kdiffusion import Run
from hypernet.sampling.names import Sampler, find_schedule, resolve_sampler, schedule_label
from hypernet.sampling.rng import SOURCES, ImageRNG, randn_local
from hypernet.sampling.schedules import LCMSigmas, ModelSigmas, ScheduleOptions, compute

# Conditioning for one model call: a [B, T, D] tensor of text embeddings, or a dict with "embeds" and diffusers'
# ``added_cond_kwargs`` entries (SDXL's "text_embeds", "time_ids"); or a function of the model-call index giving
# either (A1111's prompt editing counts model calls).
Cond = torch.Tensor | Mapping[str, torch.Tensor] | Callable[[int], "torch.Tensor | Mapping[str, torch.Tensor]"]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step, total, x, denoised)


class Interrupted(Exception):
    """Raised inside the denoiser to end sampling early; the latest latent is returned."""


def _float(params: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HypernetError(f'"{key}" is {value!r}; expected a number.') from None


def _int(params: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = _float(params, key, None)
    if value is None:
        return default
    if value != int(value):
        raise HypernetError(f'"{key}" is {params[key]!r}; expected a whole number.')
    return int(value)


def _size(params: Mapping[str, Any], key: str) -> tuple[int, int] | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    try:
        w, h = str(value).lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise HypernetError(f'"{key}" is {value!r}; expected WIDTHxHEIGHT, e.g. 512x768.') from None


def _bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


@dataclass
class Plan:
    """``params`` read and checked once, with A1111's defaults filled in."""

    sampler: Sampler
    schedule_name: str  # as asked ("automatic" included)
    steps: int
    cfg_scale: float
    seed: int
    width: int
    height: int
    batch_size: int
    rng: str
    ensd: int
    subseed: int | None
    subseed_strength: float
    seed_resize_from: tuple[int, int] | None
    eta: float
    s_churn: float
    s_tmin: float
    s_tmax: float
    s_noise: float
    schedule_opts: ScheduleOptions
    discard_penultimate: bool
    sgm_noise_multiplier: bool
    unipc_variant: str
    unipc_skip_type: str
    unipc_order: int
    unipc_lower_order_final: bool
    denoising_strength: float
    noise_multiplier: float
    extra_noise: float
    img2img_fix_steps: bool
    cfg_written: Any = None  # "CFG scale" as given (7 stays "7", 7.0 stays "7.0", as A1111 writes them back)

    @property
    def seeds(self) -> list[int]:
        """Per-image seeds: seed+i, or the same seed for all when a variation strength is set (A1111)."""
        return [self.seed + (i if self.subseed_strength == 0 else 0) for i in range(self.batch_size)]

    @property
    def subseeds(self) -> list[int] | None:
        return None if self.subseed is None else [self.subseed + i for i in range(self.batch_size)]

    @property
    def schedule_label(self) -> str:
        return schedule_label(self.sampler, find_schedule(self.schedule_name))

    def image_rng(self, latent_shape: tuple[int, int, int], device: torch.device) -> ImageRNG:
        return ImageRNG(latent_shape, self.seeds, source=self.rng, device=device, subseeds=self.subseeds,
                        subseed_strength=self.subseed_strength, seed_resize_from=self.seed_resize_from,
                        ensd=self.ensd)

    def infotext_fields(self) -> dict[str, Any]:
        """The sampling fields A1111 writes for these settings, in its order and with its omissions."""
        timestep = self.sampler.kind == "timesteps"
        fields: dict[str, Any] = {
            "Steps": self.steps, "Sampler": self.sampler.name, "Schedule type": self.schedule_label,
            "CFG scale": self.cfg_written, "Seed": self.seed, "Size": f"{self.width}x{self.height}",
        }
        if self.subseed_strength != 0:
            fields["Variation seed"] = self.subseed
            fields["Variation seed strength"] = self.subseed_strength
        if self.seed_resize_from:
            fields["Seed resize from"] = f"{self.seed_resize_from[0]}x{self.seed_resize_from[1]}"
        if self.ensd and self.sampler.flag.get("uses_ensd"):
            fields["ENSD"] = self.ensd
        if self.rng != "GPU":
            fields["RNG"] = self.rng
        if self.sampler.takes_eta and self.eta != (0.0 if timestep else 1.0):
            fields["Eta DDIM" if timestep else "Eta"] = self.eta
        if self.discard_penultimate and not self.sampler.flag.get("discard_next_to_last_sigma"):
            fields["Discard penultimate sigma"] = True
        defaults = {"Sigma churn": (self.s_churn, 0.0), "Sigma tmin": (self.s_tmin, 0.0),
                    "Sigma tmax": (self.s_tmax, 0.0), "Sigma noise": (self.s_noise, 1.0)}
        for key, (value, default) in defaults.items():
            if value != default and (self.sampler.churn or key == "Sigma noise" and self.sampler.takes_s_noise):
                fields[key] = value
        if self.sampler.kind != "timesteps":
            label = self.schedule_label
            if label not in ("Automatic",):
                o = self.schedule_opts
                if o.sigma_min:
                    fields["Schedule min sigma"] = o.sigma_min
                if o.sigma_max:
                    fields["Schedule max sigma"] = o.sigma_max
                if o.rho and label in ("Karras", "Polyexponential"):
                    fields["Schedule rho"] = o.rho
                if label == "Beta":
                    fields["Beta schedule alpha"], fields["Beta schedule beta"] = o.beta_alpha, o.beta_beta
        if self.sgm_noise_multiplier:
            fields["SGM noise multiplier"] = True
        return fields


def plan(params: Mapping[str, Any]) -> Plan:
    """Read ``params`` (A1111 infotext names) into a :class:`Plan`; a bad value raises a one-sentence error."""
    sampler, schedule = resolve_sampler(str(params.get("Sampler") or "DPM++ 2M"),
                                        str(params.get("Schedule type") or "Automatic"))
    size = _size(params, "Size") or (512, 512)
    steps = _int(params, "Steps", 20)
    if steps is None or steps < 1:
        raise HypernetError(f'"Steps" is {params.get("Steps")!r}; expected at least 1.')
    rng = str(params.get("RNG") or "GPU")
    if rng not in SOURCES:
        raise HypernetError(f'"RNG" is {rng!r}; expected one of: {", ".join(SOURCES)}.')
    strength = _float(params, "Variation seed strength", 0.0) or 0.0
    subseed = _int(params, "Variation seed", None)
    if strength and subseed is None:
        raise HypernetError('"Variation seed strength" is set but "Variation seed" is missing.')
    timestep = sampler.kind == "timesteps"
    eta = _float(params, "Eta", None)
    if eta is None:
        eta = _float(params, "Eta DDIM", 0.0) if timestep else _float(params, "Eta ancestral", 1.0)
    seed = _int(params, "Seed", -1)
    if seed is None or seed < 0:
        seed = random.randrange(4294967294)  # A1111's -1: a random seed
    if subseed is not None and subseed < 0:
        subseed = random.randrange(4294967294)
    return Plan(
        sampler=sampler, schedule_name=schedule.name, steps=steps, cfg_scale=_float(params, "CFG scale", 7.0),
        seed=seed, width=size[0], height=size[1], batch_size=_int(params, "Batch size", 1),
        rng=rng, ensd=_int(params, "ENSD", 0), subseed=subseed, subseed_strength=strength,
        seed_resize_from=_size(params, "Seed resize from"), eta=eta,
        s_churn=_float(params, "Sigma churn", 0.0), s_tmin=_float(params, "Sigma tmin", 0.0),
        s_tmax=_float(params, "Sigma tmax", 0.0), s_noise=_float(params, "Sigma noise", 1.0),
        schedule_opts=ScheduleOptions(
            sigma_min=_float(params, "Schedule min sigma", 0.0), sigma_max=_float(params, "Schedule max sigma", 0.0),
            rho=_float(params, "Schedule rho", 0.0), beta_alpha=_float(params, "Beta schedule alpha", 0.6),
            beta_beta=_float(params, "Beta schedule beta", 0.6)),
        discard_penultimate=_bool(params, "Discard penultimate sigma", False),
        sgm_noise_multiplier=_bool(params, "SGM noise multiplier", False),
        unipc_variant=str(params.get("UniPC variant") or "bh1"),
        unipc_skip_type=str(params.get("UniPC skip type") or "time_uniform"),
        unipc_order=_int(params, "UniPC order", 3),
        unipc_lower_order_final=_bool(params, "UniPC lower order final", True),
        denoising_strength=_float(params, "Denoising strength", 0.75),
        noise_multiplier=_float(params, "Noise multiplier", 1.0), extra_noise=_float(params, "Extra noise", 0.0),
        img2img_fix_steps=_bool(params, "img2img fix steps", False),
        cfg_written=params.get("CFG scale") if isinstance(params.get("CFG scale"), (int, float)) else
        _float(params, "CFG scale", 7.0),
    )


def draw_noise(params: Mapping[str, Any], count: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The initial noise [B, 4, H/8, W/8] and the next ``count - 1`` draws of the same per-image streams."""
    p = plan(params)
    rng = p.image_rng((4, p.height // 8, p.width // 8), torch.device(device))
    return [rng.next() for _ in range(count)]


def img2img_steps(p: Plan, steps: int | None = None) -> tuple[int, int]:
    """A1111's ``setup_img2img_steps``: (schedule length, t_enc). Hires passes its own ``steps``."""
    d = p.denoising_strength
    if p.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        return (int(requested / min(d, 0.999)) if d > 0 else 0), requested - 1
    return p.steps, int(min(d, 0.999) * p.steps)


_TORCHSDE_LOCK = threading.Lock()


@contextlib.contextmanager
def _brownian_randn(source: str) -> Iterator[None]:
    """A1111 draws torchsde's Brownian-tree noise from the chosen RNG source; torchsde's own draw already equals
    the CPU and CUDA sources, so only NV swaps its module-level ``_randn`` (for this call, under a lock)."""
    if source == "CPU" or torch.cuda.is_available() and source == "GPU":
        yield
        return

    def nv_randn(size: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
        return randn_local("NV", int(seed), size, device).to(dtype=dtype)

    with _TORCHSDE_LOCK:
        original = brownian_interval._randn
        brownian_interval._randn = nv_randn
        try:
            yield
        finally:
            brownian_interval._randn = original


class _Brownian:
    """k-diffusion's ``BrownianTreeNoiseSampler``: one torchsde tree per image, seeded with the image's seed."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> None:
        t0, t1 = torch.as_tensor(sigmas[sigmas > 0].min()), torch.as_tensor(sigmas.max())
        w0 = torch.zeros_like(x)[0]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        return w / (t1 - t0).abs().sqrt()


class _Model:
    """The UNet under A1111's CFG denoiser: cond and uncond in one batch (cond first), CFG per A1111."""

    def __init__(self, unet: torch.nn.Module, cond: Cond, uncond: Cond, cfg: float, prediction: str,
                 interrupted: Callable[[], bool] | None) -> None:
        self.unet, self.cond, self.uncond, self.cfg = unet, cond, uncond, cfg
        self.prediction, self.interrupted = prediction, interrupted
        self.calls = 0
        self.dtype = next(unet.parameters()).dtype

    def _context(self, which: Cond) -> dict[str, torch.Tensor]:
        value = which(self.calls) if callable(which) else which
        return {"embeds": value} if isinstance(value, torch.Tensor) else dict(value)

    def eps_pair(self, x_in: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond eps, uncond eps) for the scaled input; ``alpha`` converts v-prediction to eps."""
        if self.interrupted is not None and self.interrupted():
            raise Interrupted
        c, u = self._context(self.cond), self._context(self.uncond)
        batch = x_in.shape[0]
        x2, t2 = torch.cat([x_in, x_in]), torch.cat([t, t])
        if c["embeds"].shape == u["embeds"].shape:  # A1111: one batch, cond first
            out = self._unet(x2, t2, {k: torch.cat([c[k], u[k]]) for k in c})
        else:  # prompts of different lengths: A1111 (without "pad conds") runs them one after the other
            out = torch.cat([self._unet(x_in, t, c), self._unet(x_in, t, u)])
        self.calls += 1
        if self.prediction == "v_prediction":
            a = torch.cat([alpha, alpha])[:, None, None, None]
            out = (1 - a ** 2).sqrt() * x2 + a * out
        return out[:batch], out[batch:]

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        added = {k: v.to(x.device, self.dtype) for k, v in cond.items() if k != "embeds"}
        kwargs = {"added_cond_kwargs": added} if added else {}
        context = cond["embeds"].to(x.device, self.dtype)
        return self.unet(x.to(self.dtype), t, encoder_hidden_states=context, **kwargs).sample.float()

    def combine(self, cond_out: torch.Tensor, uncond_out: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return uncond_out + (cond_out - uncond_out) * (1.0 * self.cfg * multiplier)


def _k_denoiser(model: _Model, table: ModelSigmas) -> kdiffusion.Denoiser:
    """k-diffusion's CompVisDenoiser (LCM: its scaled output) under A1111's CFG: x0 predictions are mixed."""
    lcm = isinstance(table, LCMSigmas)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = 1 / (sigma ** 2 + 1) ** 0.5
        c4 = c_in[:, None, None, None]
        t = table.sigma_to_t(sigma)
        eps_c, eps_u = model.eps_pair(x * c4, t, c_in)
        outs = []
        for eps in (eps_c, eps_u):
            den = x + eps * (-sigma)[:, None, None, None]
            if lcm:
                st = (t * 10.0)[:, None, None, None]
                den = st / (st ** 2 + 0.25) ** 0.5 * den + 0.25 / (st ** 2 + 0.25) * x
            outs.append(den)
        return model.combine(*outs)

    return denoise


def _t_denoiser(model: _Model, ac: torch.Tensor) -> timesteps.EpsModel:
    """A1111's timestep denoiser under CFG: eps predictions are mixed."""

    def eps(x: torch.Tensor, t: torch.Tensor, multiplier: float) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = ac.to(x.device)[t.round().long().clamp(0, len(ac) - 1)].sqrt()
        e_c, e_u = model.eps_pair(x, t, alpha)
        return model.combine(e_c, e_u, multiplier), e_u

    return eps


def sigmas_for(p: Plan, table: ModelSigmas, steps: int) -> torch.Tensor:
    """A1111's ``KDiffusionSampler.get_sigmas``: the schedule for ``steps`` steps."""
    discard = p.sampler.flag.get("discard_next_to_last_sigma", False) or p.discard_penultimate
    n = steps + (1 if discard else 0)
    name = p.schedule_name
    if name == "automatic":
        name = p.sampler.default_schedule or "uniform"
    sigmas = compute(name, n, table, p.schedule_opts)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def sample_latent(unet: torch.nn.Module, cond: Cond, uncond: Cond, params: Mapping[str, Any], *,
                  alphas_cumprod: torch.Tensor, init_latent: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None, rng: ImageRNG | None = None, hires_steps: int | None = None,
                  prediction_type: str = "epsilon", sdxl: bool = False,
                  callback: StepCallback | None = None, interrupted: Callable[[], bool] | None = None,
                  model_calls: list[int] | None = None, device: torch.device | None = None) -> torch.Tensor:
    """The final latent A1111 gives for ``params`` with this UNet and fixed conditioning.

    txt2img by default; with ``init_latent`` it is img2img at "Denoising strength" (``hires_steps`` makes it a
    hires fix second pass: that many steps, whatever the strength). ``noise`` replaces the initial noise draw (the
    per-image streams still give the later draws); ``rng`` passes a stream in use. ``callback(step, total, x,
    denoised)`` sees every sampler step; when ``interrupted()`` turns true the latest x0 prediction is returned
    (A1111's behaviour). ``device`` is where to compute (default: the UNet's; give it under CPU offload).
    """
    p = plan(params)
    device = device or next(unet.parameters()).device
    shape = (4, p.height // 8, p.width // 8) if init_latent is None else tuple(init_latent.shape[1:])
    rng = rng or p.image_rng(shape, device)
    first = rng.next()
    noise = first if noise is None else noise
    ac = alphas_cumprod.to(torch.float32).cpu()
    p.schedule_opts.sdxl = sdxl
    model = _Model(unet, cond, uncond, p.cfg_scale, prediction_type, interrupted)
    latest = [noise]
    total = [p.steps]

    def report(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        latest[0] = denoised if torch.isfinite(denoised).all() else x
        if callback is not None:
            callback(i, total[0], x, denoised)

    run = Run(noise=lambda: rng.next().to(device), eta=p.eta, callback=report)
    if p.sampler.churn:
        run.s_churn, run.s_tmin, run.s_tmax = p.s_churn, p.s_tmin, p.s_tmax or math.inf
    if p.sampler.takes_s_noise:
        run.s_noise = p.s_noise
    try:
        if p.sampler.kind == "timesteps":
            x = _run_timesteps(p, model, ac, noise, init_latent, hires_steps, run, total)
        else:
            x = _run_k(p, model, ac, noise, init_latent, hires_steps, run, total, rng)
    except Interrupted:
        x = latest[0]
    if model_calls is not None:
        model_calls.append(model.calls)
    return x


def _run_k(p: Plan, model: _Model, ac: torch.Tensor, noise: torch.Tensor, init: torch.Tensor | None,
           hires_steps: int | None, run: Run, total: list[int],
           rng: ImageRNG) -> torch.Tensor:
    device = noise.device
    table = (LCMSigmas(ac) if p.sampler.kind == "lcm" else ModelSigmas(ac)).to(device)
    if init is None:
        sigmas = sigmas_for(p, table, p.steps).to(device)
        sched = sigmas
        x = noise * (torch.sqrt(1.0 + sigmas[0] ** 2) if p.sgm_noise_multiplier else sigmas[0])
        n_fast, lo, hi = p.steps, table.sigma_min, table.sigma_max
    else:
        steps, t_enc = img2img_steps(p, hires_steps)
        sigmas = sigmas_for(p, table, steps).to(device)
        sched = sigmas[steps - t_enc - 1:]
        noise = noise * p.noise_multiplier if hires_steps is None else noise
        x = init + noise * sched[0]
        if p.extra_noise > 0:
            x = x + noise * p.extra_noise
        n_fast, lo, hi = len(sched) - 1, float(sched[-2]), float(sched[0])
    total[0] = len(sched) - 1
    denoiser = _k_denoiser(model, table)
    fn = getattr(kdiffusion, p.sampler.function)
    if p.sampler.function == "dpm_fast":
        return fn(denoiser, x, lo, hi, n_fast, run)
    if p.sampler.function == "dpm_adaptive":
        return fn(denoiser, x, lo, hi, run)
    if p.sampler.flag.get("brownian_noise"):
        with _brownian_randn(p.rng):
            run.brownian = _Brownian(x, sigmas, rng.seeds)
            return fn(denoiser, x, sched, run)
    return fn(denoiser, x, sched, run)


def _run_timesteps(p: Plan, model: _Model, ac: torch.Tensor, noise: torch.Tensor, init: torch.Tensor | None,
                   hires_steps: int | None, run: Run, total: list[int]) -> torch.Tensor:
    steps = p.steps
    discard = p.discard_penultimate
    if init is None:
        ts = timesteps.a1111_timesteps(steps + (1 if discard else 0))
        x = noise
    else:
        steps, t_enc = img2img_steps(p, hires_steps)
        full = timesteps.a1111_timesteps(steps + (1 if discard else 0))
        ts = full[:t_enc]
        a = ac[full[t_enc]]
        noise = noise * p.noise_multiplier if hires_steps is None else noise
        x = init * a.sqrt() + noise * (1 - a).sqrt()
        if p.extra_noise > 0:
            x = x + noise * p.extra_noise * a.sqrt()
    run.eta = p.eta if p.sampler.takes_eta else 0.0
    denoiser = _t_denoiser(model, ac)
    ts = ts.to(noise.device)
    if p.sampler.function == "unipc":
        total[0] = len(ts)
        return timesteps.unipc(denoiser, x, ts, ac.to(noise.device), run, order=p.unipc_order,
                               variant=p.unipc_variant, skip_type=p.unipc_skip_type,
                               lower_order_final=p.unipc_lower_order_final, is_img2img=init is not None)
    total[0] = len(ts) - 1
    return getattr(timesteps, p.sampler.function)(denoiser, x, ts, ac.to(noise.device), run)
