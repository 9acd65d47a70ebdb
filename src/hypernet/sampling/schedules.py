"""A1111's sigma schedules ("Schedule type") over a model's discrete noise table.

:class:`ModelSigmas` is k-diffusion's ``DiscreteSchedule`` for an SD model: ``sigma = sqrt((1 - ac) / ac)`` per
training timestep, with log-sigma interpolation between them (A1111's default, unquantized). The schedule functions
follow A1111 1.10's ``sd_schedulers.py`` value for value; their quirks (DDIM's extra step, KL Optimal without the
trailing 0, Beta linear in sigma) are the point of computing them here rather than through diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from hypernet.errors import HypernetError

# Align Your Steps presets (NVIDIA's published 10-step sigmas) for SD 1.x/2.x and for SDXL.
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


class ModelSigmas(torch.nn.Module):
    """A model's noise levels, ascending, and the sigma <-> fractional timestep maps k-diffusion uses."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def get_sigmas(self, n: int) -> torch.Tensor:
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()


class LCMSigmas(ModelSigmas):
    """LCM's 50 original timesteps (every 20th of 1000, ending at 19); timesteps are snapped to them."""

    def __init__(self, alphas_cumprod: torch.Tensor, original_steps: int = 50) -> None:
        total = len(alphas_cumprod)
        self.skip = total // original_steps
        valid = torch.stack([alphas_cumprod[total - 1 - x * self.skip] for x in range(original_steps)]).flip(0)
        super().__init__(valid)

    def get_sigmas(self, n: int) -> torch.Tensor:
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        return append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip + (self.skip - 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(((t - (self.skip - 1)) / self.skip).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(t)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def _from_timesteps(model: ModelSigmas, n: int, sgm: bool) -> torch.Tensor:
    start = model.sigma_to_t(torch.tensor(model.sigma_max))
    end = model.sigma_to_t(torch.tensor(model.sigma_min))
    ts = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([float(model.t_to_sigma(t)) for t in ts] + [0.0])


def simple(n: int, model: ModelSigmas) -> torch.Tensor:
    ss = len(model.sigmas) / n
    return torch.FloatTensor([float(model.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0])


def ddim_uniform(n: int, model: ModelSigmas) -> torch.Tensor:
    ss = max(len(model.sigmas) // n, 1)
    sigs = [float(model.sigmas[x]) for x in range(1, len(model.sigmas), ss)]
    return torch.FloatTensor(sigs[::-1] + [0.0])


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    ts = [stats.beta.ppf(x, alpha, beta_) for x in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([sigma_min + x * (sigma_max - sigma_min) for x in ts] + [0.0])


def align_your_steps(n: int, sdxl: bool = False) -> torch.Tensor:
    preset = AYS_SDXL if sdxl else AYS_SD15
    if n == len(preset):
        return torch.FloatTensor(preset + [0.0])
    xs, ys = np.linspace(0, 1, len(preset)), np.log(preset[::-1])
    interp = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interp, [0.0]))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    i = torch.arange(n + 1)
    return torch.tan(i / n * alpha_min + (1.0 - i / n) * alpha_max)


@dataclass(frozen=True)
class Schedule:
    """An A1111 schedule type (``GET /sdapi/v1/schedulers`` shows these fields)."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False

    def as_api(self) -> dict[str, object]:
        return {"name": self.name, "label": self.label, "aliases": list(self.aliases) or None,
                "default_rho": self.default_rho, "need_inner_model": self.need_inner_model}


SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", need_inner_model=True),
    Schedule("karras", "Karras", default_rho=7.0),
    Schedule("exponential", "Exponential"),
    Schedule("polyexponential", "Polyexponential", default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    Schedule("kl_optimal", "KL Optimal"),
    Schedule("align_your_steps", "Align Your Steps"),
    Schedule("simple", "Simple", need_inner_model=True),
    Schedule("normal", "Normal", need_inner_model=True),
    Schedule("ddim", "DDIM", need_inner_model=True),
    Schedule("beta", "Beta", need_inner_model=True),
)


@dataclass
class ScheduleOptions:
    """A1111's schedule settings (0 = the model's own value), with their infotext names."""

    sigma_min: float = 0.0  # "Schedule min sigma"
    sigma_max: float = 0.0  # "Schedule max sigma"
    rho: float = 0.0  # "Schedule rho"
    beta_alpha: float = 0.6  # "Beta schedule alpha"
    beta_beta: float = 0.6  # "Beta schedule beta"
    sdxl: bool = False  # Align Your Steps picks its SDXL preset


def compute(name: str, n: int, model: ModelSigmas, opts: ScheduleOptions) -> torch.Tensor:
    """The sigmas of schedule ``name`` (an A1111 schedule ``name``, not "automatic") for ``n`` steps."""
    lo = opts.sigma_min if opts.sigma_min and opts.sigma_min != model.sigma_min else model.sigma_min
    hi = opts.sigma_max if opts.sigma_max and opts.sigma_max != model.sigma_max else model.sigma_max
    functions: dict[str, Callable[[], torch.Tensor]] = {
        "uniform": lambda: model.get_sigmas(n),
        "karras": lambda: karras(n, lo, hi, opts.rho or 7.0),
        "exponential": lambda: exponential(n, lo, hi),
        "polyexponential": lambda: polyexponential(n, lo, hi, opts.rho or 1.0),
        "sgm_uniform": lambda: _from_timesteps(model, n, sgm=True),
        "kl_optimal": lambda: kl_optimal(n, lo, hi),
        "align_your_steps": lambda: align_your_steps(n, opts.sdxl),
        "simple": lambda: simple(n, model),
        "normal": lambda: _from_timesteps(model, n, sgm=False),
        "ddim": lambda: ddim_uniform(n, model),
        "beta": lambda: beta(n, lo, hi, opts.beta_alpha, opts.beta_beta),
    }
    return functions[name]()


def alphas_cumprod_for(config: Mapping[str, Any]) -> torch.Tensor:
    """A model's training ``alphas_cumprod`` computed as ldm does (float64, stored float32), from a diffusers
    scheduler config; diffusers' own float32 cumprod differs in the last digits, and A1111 uses ldm's."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise HypernetError(f'the scheduler config\'s beta_schedule "{kind}" is not supported; expected '
                            '"scaled_linear" or "linear" (Stable Diffusion\'s).')
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
