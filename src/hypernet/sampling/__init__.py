"""A1111's sampling, exactly: its noise sources, per-image seeds and variation seeds, every sampler and schedule type.

``draw_noise(params, count)`` and ``sample_latent(unet, cond, uncond, params, alphas_cumprod=...)`` take ``params``
keyed by A1111's infotext names, so the same seed and settings give the same latent as A1111 1.10.
"""

from hypernet.sampling.core import Interrupted, Plan, draw_noise, img2img_steps, plan, sample_latent, sigmas_for
from hypernet.sampling.names import SAMPLERS, Sampler, find_schedule, resolve_sampler, schedule_label
from hypernet.sampling.rng import SOURCES, ImageRNG
from hypernet.sampling.schedules import SCHEDULES, Schedule

__all__ = [
    "SAMPLERS", "SCHEDULES", "SOURCES", "ImageRNG", "Interrupted", "Plan", "Sampler", "Schedule", "draw_noise",
    "find_schedule", "img2img_steps", "plan", "resolve_sampler", "sample_latent", "schedule_label", "sigmas_for",
]
