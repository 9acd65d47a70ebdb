"""A1111 sampling behaviour beyond the vectors: img2img step selection, per-image noise, every name runnable."""

from __future__ import annotations

import pytest
import torch

from hypernet.errors import HypernetError
from hypernet.sampling import SAMPLERS, SCHEDULES, draw_noise, img2img_steps, plan, resolve_sampler, sample_latent
from hypernet.sampling.schedules import ModelSigmas
from hypernet.sampling.timesteps import a1111_timesteps
from hypernet.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = {"Seed": 5, "Size": "64x64", "CFG scale": 5, "RNG": "CPU"}


@pytest.fixture(scope="module")
def tiny() -> tuple:
    pipe = tiny_pipeline("sd1")
    width = pipe.unet.config.cross_attention_dim
    cond = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(1))
    uncond = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(2))
    return pipe.unet.eval(), cond, uncond, pipe.scheduler.alphas_cumprod


def _sample(tiny: tuple, params: dict, **kw: object) -> tuple[torch.Tensor, int]:
    unet, cond, uncond, ac = tiny
    calls: list[int] = []
    with torch.no_grad():
        x = sample_latent(unet, cond, uncond, {**BASE, **params}, alphas_cumprod=ac, model_calls=calls, **kw)
    return x, calls[0]


def test_img2img_step_selection_follows_a1111() -> None:
    p = plan({"Steps": 20, "Denoising strength": 0.75})
    assert img2img_steps(p) == (20, 15)  # sigmas[4:] of a 20-step schedule: 16 steps
    assert img2img_steps(plan({"Steps": 20, "Denoising strength": 0.75, "img2img fix steps": True})) == (26, 19)
    assert img2img_steps(plan({"Steps": 100, "Denoising strength": 0.29})) == (100, 28)  # int(0.29 * 100)
    assert img2img_steps(plan({"Steps": 30, "Denoising strength": 0.7}), steps=20) == (28, 19)  # hires pass


def test_img2img_runs_t_enc_plus_one_k_steps_from_the_noised_init(tiny: tuple) -> None:
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []
    params = {"Sampler": "Euler", "Steps": 20, "Denoising strength": 0.5}
    _, calls = _sample(tiny, params, init_latent=init, callback=lambda i, n, x, d: seen.append(x))
    assert calls == 11 and len(seen) == 11
    sigmas = ModelSigmas(tiny[3].float()).get_sigmas(20)
    noise = draw_noise(params | BASE, 1)[0]
    torch.testing.assert_close(seen[0], init + noise * sigmas[20 - 10 - 1])


def test_img2img_ddim_noises_to_the_t_enc_timestep(tiny: tuple) -> None:
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    params = {"Sampler": "DDIM", "Steps": 10, "Denoising strength": 0.6}
    _, calls = _sample(tiny, params, init_latent=init)
    assert calls == 5  # ts[:t_enc] with t_enc = 6: DDIM loops len - 1 times
    ts = a1111_timesteps(10)
    assert ts.tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901] and ts[6] == 601


def test_an_image_does_not_depend_on_its_batch() -> None:
    batch = draw_noise({**BASE, "Batch size": 3}, 2)
    for i in range(3):
        single = draw_noise({**BASE, "Seed": 5 + i}, 2)
        assert torch.equal(batch[0][i], single[0][0]) and torch.equal(batch[1][i], single[1][0])
    varied = draw_noise({**BASE, "Batch size": 2, "Variation seed": 9, "Variation seed strength": 0.4}, 1)[0]
    second = draw_noise({**BASE, "Variation seed": 10, "Variation seed strength": 0.4}, 1)[0]
    assert torch.equal(varied[1], second[0]), "with a variation strength the seed stays and the subseed counts up"


def test_nv_is_cudas_randn_and_gpu_falls_back_to_it_off_cuda() -> None:
    nv = draw_noise({"Seed": 0, "Size": "64x64", "RNG": "NV"}, 1)[0]
    assert nv.flatten()[:4].tolist() == pytest.approx([-0.92466259, -0.42534415, -2.6438457, 0.14518388], abs=1e-6)
    gpu = draw_noise({"Seed": 0, "Size": "64x64"}, 1)[0]
    assert torch.equal(gpu, nv) or torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in SAMPLERS])
def test_every_sampler_runs_and_is_deterministic(tiny: tuple, name: str) -> None:
    params = {"Sampler": name, "Steps": 4, "RNG": "NV"}
    a, _ = _sample(tiny, params)
    b, _ = _sample(tiny, params)
    assert a.shape == (1, 4, 8, 8) and torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("label", [s.label for s in SCHEDULES])
def test_every_schedule_type_runs(tiny: tuple, label: str) -> None:
    x, calls = _sample(tiny, {"Sampler": "Euler", "Schedule type": label, "Steps": 6})
    assert torch.isfinite(x).all() and calls == (7 if label == "DDIM" else 6)


def test_names_and_errors() -> None:
    sampler, schedule = resolve_sampler("dpm++ 2m karras")
    assert (sampler.name, schedule.label) == ("DPM++ 2M", "Karras")
    assert plan({"Sampler": "DPM++ 2M", "Seed": 1}).infotext_fields()["Schedule type"] == "Karras"
    with pytest.raises(HypernetError, match="sampler"):
        resolve_sampler("Euler b")
    with pytest.raises(HypernetError, match='"RNG"'):
        plan({"RNG": "TPU", "Seed": 1})
    with pytest.raises(HypernetError, match='"Size"'):
        plan({"Size": "big", "Seed": 1})


def test_interrupt_returns_the_latest_prediction(tiny: tuple) -> None:
    seen: list[torch.Tensor] = []
    x, calls = _sample(tiny, {"Sampler": "Euler", "Steps": 10}, callback=lambda i, n, x, d: seen.append(d),
                       interrupted=lambda: len(seen) >= 3)
    assert calls == 3 and torch.equal(x, seen[-1]), "A1111 returns the latest x0 prediction"
