"""A1111's sampler and schedule-type names (as its UI, API and infotext spell them), and what each one runs.

A1111 1.9+ names a sampler ("DPM++ 2M") and a schedule type ("Karras") separately and still accepts the old
combined names ("DPM++ 2M Karras"). Every name listed here can be run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hypernet.errors import HypernetError
from hypernet.sampling.schedules import SCHEDULES, Schedule


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler: its names, A1111's options (as ``GET /sdapi/v1/samplers`` shows them) and its solver."""

    name: str
    aliases: tuple[str, ...]
    options: Mapping[str, str]
    function: str
    """A function of :mod:`hypernet.sampling.kdiffusion` or :mod:`hypernet.sampling.timesteps`."""
    kind: str = "k"
    """"k" (sigma schedule, CFG on x0), "timesteps" (A1111's timestep grid, CFG on eps) or "lcm"."""
    takes_eta: bool = False
    churn: bool = False
    """Takes s_churn, s_tmin, s_tmax (A1111 passes them to Euler, Heun and DPM2 only)."""
    takes_s_noise: bool = False

    @property
    def default_schedule(self) -> str | None:
        """The schedule "Automatic" means (None: the model's own ``get_sigmas``)."""
        return self.options.get("scheduler")

    @property
    def flag(self) -> dict[str, bool]:
        return {key: value == "True" for key, value in self.options.items() if value in ("True", "False")}

    def as_api(self) -> dict[str, object]:
        return {"name": self.name, "aliases": list(self.aliases), "options": dict(self.options)}


_T = "True"
# A1111 1.10's samplers, in its order (the first is its default).
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"}, "dpmpp_2m"),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), {"scheduler": "karras", "second_order": _T, "brownian_noise": _T},
            "dpmpp_sde", takes_eta=True, takes_s_noise=True),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), {"scheduler": "exponential", "brownian_noise": _T},
            "dpmpp_2m_sde", takes_eta=True, takes_s_noise=True),
    Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",),
            {"scheduler": "exponential", "brownian_noise": _T, "solver_type": "heun"},
            "dpmpp_2m_sde_heun", takes_eta=True, takes_s_noise=True),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), {"scheduler": "karras", "uses_ensd": _T, "second_order": _T},
            "dpmpp_2s_ancestral", takes_eta=True, takes_s_noise=True),
    Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",),
            {"scheduler": "exponential", "discard_next_to_last_sigma": _T, "brownian_noise": _T},
            "dpmpp_3m_sde", takes_eta=True, takes_s_noise=True),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": _T}, "euler_ancestral", takes_eta=True),
    Sampler("Euler", ("k_euler",), {}, "euler", churn=True, takes_s_noise=True),
    Sampler("LMS", ("k_lms",), {}, "lms"),
    Sampler("Heun", ("k_heun",), {"second_order": _T}, "heun", churn=True, takes_s_noise=True),
    Sampler("DPM2", ("k_dpm_2",), {"scheduler": "karras", "discard_next_to_last_sigma": _T, "second_order": _T},
            "dpm_2", churn=True, takes_s_noise=True),
    Sampler("DPM2 a", ("k_dpm_2_a",),
            {"scheduler": "karras", "discard_next_to_last_sigma": _T, "uses_ensd": _T, "second_order": _T},
            "dpm_2_ancestral", takes_eta=True, takes_s_noise=True),
    Sampler("DPM fast", ("k_dpm_fast",), {"uses_ensd": _T}, "dpm_fast", takes_eta=True, takes_s_noise=True),
    Sampler("DPM adaptive", ("k_dpm_ad",), {"uses_ensd": _T}, "dpm_adaptive", takes_eta=True),
    Sampler("Restart", ("restart",), {"scheduler": "karras", "second_order": _T}, "restart"),
    Sampler("DDIM", ("ddim",), {}, "ddim", kind="timesteps", takes_eta=True),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), {}, "ddim_cfgpp", kind="timesteps", takes_eta=True),
    Sampler("PLMS", ("plms",), {}, "plms", kind="timesteps"),
    Sampler("UniPC", ("unipc",), {}, "unipc", kind="timesteps"),
    Sampler("LCM", ("k_lcm",), {}, "lcm", kind="lcm"),
)


def find_schedule(name: str) -> Schedule:
    """A schedule type by name, label or alias, ignoring case ("karras", "Karras", "SGMUniform")."""
    wanted = name.strip().lower()
    for schedule in SCHEDULES:
        if wanted in (schedule.name, schedule.label.lower(), *(alias.lower() for alias in schedule.aliases)):
            return schedule
    labels = ", ".join(schedule.label for schedule in SCHEDULES)
    raise HypernetError(f'schedule type "{name}" is unknown; expected one of: {labels}.')


def _lookup(name: str) -> Sampler | None:
    wanted = name.strip().lower()
    for sampler in SAMPLERS:
        if wanted in (sampler.name.lower(), *(alias.lower() for alias in sampler.aliases)):
            return sampler
    return None


def resolve_sampler(name: str, schedule: str = "Automatic") -> tuple[Sampler, Schedule]:
    """The sampler and schedule type meant by A1111-style names.

    An old combined name ("DPM++ 2M Karras") is split, and its schedule wins over ``schedule``, as in A1111 1.9+.
    Unlike A1111, an unknown sampler is an error rather than a silent switch to the default sampler.
    """
    requested = find_schedule(schedule or "Automatic")
    sampler = _lookup(name)
    if sampler is not None:
        return sampler, requested
    lowered = name.strip().lower()
    for sched in SCHEDULES:
        for label in (sched.label, *sched.aliases):
            if lowered.endswith(" " + label.lower()):
                sampler = _lookup(lowered[: -len(label) - 1])
                if sampler is not None:
                    return sampler, sched
    names = ", ".join(s.name for s in SAMPLERS)
    raise HypernetError(f'sampler "{name}" is unknown; expected one of: {names} (optionally followed by a schedule '
                        "type).")


def schedule_label(sampler: Sampler, schedule: Schedule) -> str:
    """What A1111's infotext writes as "Schedule type": the resolved label for k-diffusion samplers."""
    if sampler.kind == "timesteps" or schedule.name != "automatic":
        return schedule.label
    default = sampler.default_schedule
    return find_schedule(default).label if default else "Automatic"
