"""A1111 sampler/schedule names -> diffusers schedulers, built from an SD 1.5 scheduler config."""

from __future__ import annotations

import importlib.util
import re

import pytest

from hypernet.engine.samplers import SAMPLERS, SCHEDULES, find_schedule, make_scheduler, resolve_sampler
from hypernet.errors import HypernetError

# diffusers' schedulers mix torch tensors into numpy 2 calls in deprecated ways; that noise is not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

# scheduler/scheduler_config.json of the Stable Diffusion 1.5 repository.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def _missing(package: str | None) -> bool:
    return package is not None and importlib.util.find_spec(package) is None


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_every_sampler_builds_or_says_why_not(sampler) -> None:
    if not sampler.supported:
        with pytest.raises(HypernetError, match=re.escape(f'sampler "{sampler.name}" has no diffusers')):
            make_scheduler(sampler.name, "Automatic", SD15_CONFIG)
    elif _missing(sampler.requires):
        with pytest.raises(HypernetError, match=f"needs the Python package {sampler.requires}"):
            make_scheduler(sampler.name, "Automatic", SD15_CONFIG)
    else:
        scheduler = make_scheduler(sampler.name, "Automatic", SD15_CONFIG)
        assert type(scheduler).__name__ == sampler.scheduler_class
        scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) >= 4
        assert scheduler.config.beta_schedule == "scaled_linear"


def test_every_combination_builds_or_raises_a_clear_error() -> None:
    built = 0
    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            try:
                scheduler = make_scheduler(sampler.name, schedule.label, SD15_CONFIG)
            except HypernetError as err:
                assert sampler.name in str(err) or schedule.label in str(err)
                continue
            scheduler.set_timesteps(4)
            built += 1
    assert built > 80


def test_automatic_uses_the_samplers_own_schedule() -> None:
    assert make_scheduler("DPM++ 2M", "Automatic", SD15_CONFIG).config.use_karras_sigmas
    assert make_scheduler("DPM++ 2M SDE", "Automatic", SD15_CONFIG).config.use_exponential_sigmas
    euler = make_scheduler("Euler", "Automatic", SD15_CONFIG)
    assert not euler.config.use_karras_sigmas
    euler.set_timesteps(4)
    assert euler.timesteps.tolist() == [999, 666, 333, 0]  # A1111's uniform grid
    ddim = make_scheduler("DDIM", "Automatic", SD15_CONFIG)
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [751, 501, 251, 1]  # A1111's DDIM timesteps


def test_karras_gives_a1111_sigmas() -> None:
    euler = make_scheduler("Euler", "Karras", SD15_CONFIG)
    assert euler.config.use_karras_sigmas
    euler.set_timesteps(4)
    assert [round(s, 3) for s in euler.sigmas.tolist()] == [14.615, 3.169, 0.447, 0.029, 0.0]


def test_base_config_sigma_flags_do_not_leak() -> None:
    scheduler = make_scheduler("Euler", "Uniform", {**SD15_CONFIG, "use_karras_sigmas": True})
    assert not scheduler.config.use_karras_sigmas


@pytest.mark.parametrize(
    ("name", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "Exponential"),
        ("DPM++ 2M SGMUniform", "DPM++ 2M", "SGM Uniform"),
        ("Euler a", "Euler a", "Automatic"),
        ("k_euler_a", "Euler a", "Automatic"),
        ("euler A", "Euler a", "Automatic"),
        ("DDIM", "DDIM", "Automatic"),
    ],
)
def test_legacy_and_alias_names(name: str, sampler: str, schedule: str) -> None:
    found_sampler, found_schedule = resolve_sampler(name)
    assert (found_sampler.name, found_schedule.label) == (sampler, schedule)


def test_legacy_name_builds_with_its_schedule() -> None:
    assert make_scheduler("DPM++ 2M Karras", "Automatic", SD15_CONFIG).config.use_karras_sigmas
    assert make_scheduler("Euler Karras", "Automatic", SD15_CONFIG).config.use_karras_sigmas


def test_schedule_names_labels_and_aliases() -> None:
    assert find_schedule("automatic").label == "Automatic"
    assert find_schedule("Karras").name == "karras"
    assert find_schedule("SGMUniform").name == "sgm_uniform"


def test_prediction_type_is_kept_and_overridable() -> None:
    v_config = {**SD15_CONFIG, "prediction_type": "v_prediction"}
    assert make_scheduler("Euler a", "Automatic", v_config).config.prediction_type == "v_prediction"
    overridden = make_scheduler("DPM++ 2M", "Karras", SD15_CONFIG, prediction_type="v_prediction")
    assert overridden.config.prediction_type == "v_prediction"


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(HypernetError, match=r'sampler "Eular" is unknown; expected one of: DPM\+\+ 2M, .*UniPC'):
        make_scheduler("Eular", "Automatic", SD15_CONFIG)
    with pytest.raises(HypernetError, match=r'schedule type "Karas" is unknown; expected one of: Automatic, .*Karras'):
        make_scheduler("Euler", "Karas", SD15_CONFIG)


def test_unsupported_combination_names_what_works() -> None:
    with pytest.raises(HypernetError, match=r'"Karras" is not available for sampler "Euler a".*use one of: Automatic'):
        make_scheduler("Euler a", "Karras", SD15_CONFIG)
    with pytest.raises(HypernetError, match=r'"KL Optimal" has no diffusers equivalent'):
        make_scheduler("Euler", "KL Optimal", SD15_CONFIG)


def test_api_listings_have_a1111_shapes() -> None:
    samplers = [s.as_api() for s in SAMPLERS]
    assert samplers[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert {"Euler a", "Euler", "PLMS", "DDIM", "UniPC", "DPM++ 2M"} <= {s["name"] for s in samplers}
    schedules = [s.as_api() for s in SCHEDULES]
    assert schedules[0] == {
        "name": "automatic",
        "label": "Automatic",
        "aliases": None,
        "default_rho": -1.0,
        "need_inner_model": False,
    }
    assert schedules[5]["aliases"] == ["SGMUniform"]
