"""A1111 sampler and schedule-type names, mapped to diffusers schedulers.

A1111 1.9+ names a sampler ("DPM++ 2M") and a schedule type ("Karras") separately, and still accepts the old
combined names ("DPM++ 2M Karras"). :func:`make_scheduler` builds the closest diffusers scheduler from a pipeline's
own scheduler config, so the model's betas and prediction type (epsilon or v) are kept. diffusers follows
A1111's sigma grids closely, not bit for bit. Samplers and schedule types with no diffusers counterpart stay in
the tables, because A1111's listing endpoints show them, but building one raises a clear error.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from hypernet.errors import HypernetError

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class Schedule:
    """An A1111 schedule type and the diffusers config that gives the same sigma grid."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False
    config: Mapping[str, Any] | None = field(default_factory=dict)
    """Scheduler config entries; None when diffusers has no equivalent."""
    requires: str | None = None
    """A package diffusers needs for this grid."""

    def as_api(self) -> dict[str, Any]:
        """The entry A1111's ``GET /sdapi/v1/schedulers`` returns."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) or None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler and the diffusers scheduler class (plus config) that implements the same solver."""

    name: str
    aliases: tuple[str, ...]
    options: Mapping[str, str]
    """A1111's sampler options, as ``GET /sdapi/v1/samplers`` shows them (values as strings)."""
    scheduler_class: str | None
    """A class name in ``diffusers``; None when diffusers has no equivalent."""
    config: Mapping[str, Any] = field(default_factory=dict)
    native_schedule: str = "uniform"
    """What "Automatic" means when A1111 gives the sampler no schedule option of its own."""
    requires: str | None = None

    @property
    def supported(self) -> bool:
        """Whether diffusers has an equivalent, so :func:`make_scheduler` can build it."""
        return self.scheduler_class is not None

    @property
    def automatic_schedule(self) -> str:
        """The schedule name "Automatic" stands for with this sampler."""
        return self.options.get("scheduler", self.native_schedule)

    def as_api(self) -> dict[str, Any]:
        """The entry A1111's ``GET /sdapi/v1/samplers`` returns."""
        return {"name": self.name, "aliases": list(self.aliases), "options": dict(self.options)}


_EXPONENTIAL = {"use_exponential_sigmas": True, "timestep_spacing": "linspace"}

# A1111 1.10's schedule types, in its order. Uniform/Normal sample t evenly from 999 down to 0 ("linspace");
# SGM Uniform and Simple leave out t = 0 ("trailing"); DDIM takes every (1000 // steps)-th t from 1 ("leading").
# Polyexponential with A1111's default rho of 1 is the exponential grid.
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", need_inner_model=True, config={"timestep_spacing": "linspace"}),
    Schedule("karras", "Karras", default_rho=7.0, config={"use_karras_sigmas": True, "timestep_spacing": "linspace"}),
    Schedule("exponential", "Exponential", config=_EXPONENTIAL),
    Schedule("polyexponential", "Polyexponential", default_rho=1.0, config=_EXPONENTIAL),
    Schedule(
        "sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True, config={"timestep_spacing": "trailing"}
    ),
    Schedule("kl_optimal", "KL Optimal", config=None),
    Schedule("align_your_steps", "Align Your Steps", config=None),
    Schedule("simple", "Simple", need_inner_model=True, config={"timestep_spacing": "trailing"}),
    Schedule("normal", "Normal", need_inner_model=True, config={"timestep_spacing": "linspace"}),
    Schedule("ddim", "DDIM", need_inner_model=True, config={"timestep_spacing": "leading", "steps_offset": 1}),
    Schedule(
        "beta",
        "Beta",
        need_inner_model=True,
        config={"use_beta_sigmas": True, "timestep_spacing": "linspace"},
        requires="scipy",
    ),
)

_DPMPP = "DPMSolverMultistepScheduler"

# A1111 1.10's samplers, in its order (the first is its default).
SAMPLERS: tuple[Sampler, ...] = (
    Sampler(
        "DPM++ 2M",
        ("k_dpmpp_2m",),
        {"scheduler": "karras"},
        _DPMPP,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    Sampler(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        {"scheduler": "karras", "second_order": "True", "brownian_noise": "True"},
        "DPMSolverSDEScheduler",
        requires="torchsde",
    ),
    Sampler(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        {"scheduler": "exponential", "brownian_noise": "True"},
        _DPMPP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    Sampler(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", "brownian_noise": "True", "solver_type": "heun"},
        _DPMPP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    # diffusers has no ancestral single-step solver; its stochastic 2nd-order single-step one is the closest.
    Sampler(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        {"scheduler": "karras", "uses_ensd": "True", "second_order": "True"},
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    Sampler(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        {"scheduler": "exponential", "discard_next_to_last_sigma": "True", "brownian_noise": "True"},
        _DPMPP,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    ),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": "True"}, "EulerAncestralDiscreteScheduler"),
    Sampler("Euler", ("k_euler",), {}, "EulerDiscreteScheduler"),
    Sampler("LMS", ("k_lms",), {}, "LMSDiscreteScheduler", requires="scipy"),
    Sampler("Heun", ("k_heun",), {"second_order": "True"}, "HeunDiscreteScheduler"),
    Sampler(
        "DPM2",
        ("k_dpm_2",),
        {"scheduler": "karras", "discard_next_to_last_sigma": "True", "second_order": "True"},
        "KDPM2DiscreteScheduler",
    ),
    Sampler(
        "DPM2 a",
        ("k_dpm_2_a",),
        {"scheduler": "karras", "discard_next_to_last_sigma": "True", "uses_ensd": "True", "second_order": "True"},
        "KDPM2AncestralDiscreteScheduler",
    ),
    Sampler("DPM fast", ("k_dpm_fast",), {"uses_ensd": "True"}, None),
    Sampler("DPM adaptive", ("k_dpm_ad",), {"uses_ensd": "True"}, None),
    Sampler("Restart", ("restart",), {"scheduler": "karras", "second_order": "True"}, None),
    Sampler("DDIM", ("ddim",), {}, "DDIMScheduler", native_schedule="ddim"),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), {}, None),
    Sampler("PLMS", ("plms",), {}, "PNDMScheduler", {"skip_prk_steps": True}, native_schedule="ddim"),
    # A1111's UniPC defaults: variant bh1, order 3, lower order at the end, time-uniform steps;
    Sampler(
        "UniPC",
        ("unipc",),
        {},
        "UniPCMultistepScheduler",
        # diffusers' last step to sigma 0 divides by zero in UniPC's log-SNR (NaN images); sigma_min does not
        {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"},
    ),
    Sampler("LCM", ("k_lcm",), {}, "LCMScheduler"),
)


def find_schedule(name: str) -> Schedule:
    """Look a schedule type up by name, label or alias, ignoring case ("karras", "Karras", "SGMUniform")."""
    wanted = name.strip().lower()
    for schedule in SCHEDULES:
        if wanted in (schedule.name, schedule.label.lower(), *(alias.lower() for alias in schedule.aliases)):
            return schedule
    labels = ", ".join(schedule.label for schedule in SCHEDULES)
    raise HypernetError(f'schedule type "{name}" is unknown; expected one of: {labels}.')


def resolve_sampler(name: str, schedule: str = "Automatic") -> tuple[Sampler, Schedule]:
    """Find the sampler and schedule type meant by A1111-style names.

    Names and aliases match without regard to case. An old combined name such as ``"DPM++ 2M Karras"`` is split
    into sampler and schedule type, and its schedule wins over ``schedule``, as in A1111 1.9+. Unlike A1111, an
    unknown sampler is an error rather than a silent switch to the default sampler. "Automatic" stays "Automatic";
    :attr:`Sampler.automatic_schedule` says what it stands for.
    """
    requested = find_schedule(schedule)
    sampler = _lookup_sampler(name)
    if sampler is not None:
        return sampler, requested
    combined = _split_combined_name(name)
    if combined is not None:
        return combined
    names = ", ".join(s.name for s in SAMPLERS)
    raise HypernetError(
        f'sampler "{name}" is unknown; expected one of: {names} (optionally followed by a schedule type).'
    )


def make_scheduler(
    name: str, schedule: str, base_config: Mapping[str, Any], prediction_type: str | None = None
) -> SchedulerMixin:
    """Build the diffusers scheduler for an A1111 sampler and schedule type.

    ``base_config`` is the pipeline's ``scheduler.config``: the model's training schedule (betas, number of
    timesteps, prediction type) comes from it; sampler and schedule settings replace what it says about solver
    and sigma grid. ``prediction_type`` ("epsilon", "v_prediction") overrides the config's, for checkpoints whose
    config does not say. "Automatic" means the sampler's A1111 default (Karras for DPM++ 2M, the even grid for
    Euler, A1111's DDIM timesteps for DDIM and PLMS). Combinations diffusers cannot express raise
    :class:`HypernetError` naming the schedule types that work with the sampler.
    """
    sampler, chosen = resolve_sampler(name, schedule)
    if not sampler.supported:
        usable = ", ".join(s.name for s in SAMPLERS if s.supported)
        raise HypernetError(f'sampler "{sampler.name}" has no diffusers equivalent; use one of: {usable}.')
    effective = find_schedule(sampler.automatic_schedule) if chosen.name == "automatic" else chosen
    for package in (sampler.requires, effective.requires):
        if package is not None and importlib.util.find_spec(package) is None:
            what = f'sampler "{sampler.name}"' if package == sampler.requires else f'schedule type "{effective.label}"'
            raise HypernetError(f"{what} needs the Python package {package}; install it with: pip install {package}.")

    cls = getattr(diffusers, sampler.scheduler_class)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    overrides = _schedule_config(effective, accepted)
    if overrides is None:
        usable = [s.label for s in SCHEDULES if s.name == "automatic" or _schedule_config(s, accepted) is not None]
        if effective.config is None:
            problem = f'has no diffusers equivalent; with sampler "{sampler.name}"'
        else:
            problem = f'is not available for sampler "{sampler.name}" (diffusers\' {cls.__name__} lacks it);'
        raise HypernetError(f'schedule type "{effective.label}" {problem} use one of: {", ".join(usable)}.')

    config = {key: value for key, value in base_config.items() if key in accepted}
    config.update({flag: False for flag in _SIGMA_FLAGS if flag in accepted})
    config.update(sampler.config)
    config.update(overrides)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    return cls.from_config(config)


def _lookup_sampler(name: str) -> Sampler | None:
    wanted = name.strip().lower()
    for sampler in SAMPLERS:
        if wanted in (sampler.name.lower(), *(alias.lower() for alias in sampler.aliases)):
            return sampler
    return None


def _split_combined_name(name: str) -> tuple[Sampler, Schedule] | None:
    """Split an old combined name ("DPM++ 2M Karras") into its sampler and schedule type."""
    lowered = name.strip().lower()
    for schedule in SCHEDULES:
        for label in (schedule.label, *schedule.aliases):
            if lowered.endswith(" " + label.lower()):
                sampler = _lookup_sampler(lowered[: -len(label) - 1])
                if sampler is not None:
                    return sampler, schedule
    return None


def _schedule_config(schedule: Schedule, accepted: set[str]) -> dict[str, Any] | None:
    """The config entries for ``schedule`` on a class taking ``accepted`` arguments; None when it cannot."""
    if schedule.config is None:
        return None
    sets_sigmas = any(flag in schedule.config for flag in _SIGMA_FLAGS)
    config = {}
    for key, value in schedule.config.items():
        if key in accepted:
            config[key] = value
        elif not (sets_sigmas and key in ("timestep_spacing", "steps_offset")):
            # A class without a spacing option has its own grid; that only matters when no sigma flag replaces it.
            return None
    return config
