"""Every case of ../shared/conformance/sampling (made by A1111 1.10.1's own sampling code) at its manifest tolerance.

Noise cases compare exactly; sampler cases compare the schedule, the UNet timesteps, every step's x and x0 and the
final latent. All through the public ``draw_noise`` / ``sample_latent``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from hypernet.sampling import draw_noise, plan, sample_latent, sigmas_for
from hypernet.sampling.schedules import LCMSigmas, ModelSigmas
from hypernet.sampling.timesteps import a1111_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(conformance_dir: Path) -> Path:
    return conformance_dir / "sampling"


def _manifest(conformance_dir: Path) -> dict:
    return json.loads((_folder(conformance_dir) / "manifest.json").read_text())


def _case_ids() -> list[str]:
    shared = Path(os.environ.get("HYPERNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))  # as conftest
    path = shared / "conformance" / "sampling" / "manifest.json"
    return [c["id"] for c in json.loads(path.read_text())["cases"]] if path.exists() else ["manifest-missing"]


def _params(settings: dict) -> dict:
    """The manifest's settings as ``params`` (A1111 infotext names); "Eta (p.eta)" is the user's Eta."""
    params = {k: v for k, v in settings.items() if k not in ("seeds", "effective eta", "Eta (p.eta)") and v is not None}
    if settings.get("Eta (p.eta)") is not None:
        params["Eta"] = settings["Eta (p.eta)"]
    if "seeds" in settings:
        params["Seed"] = settings["seeds"][0]
    return params


@pytest.fixture(scope="module")
def model(conformance_dir: Path) -> tuple[UNet2DConditionModel, dict[str, torch.Tensor]]:
    folder = _folder(conformance_dir)
    unet = UNet2DConditionModel.from_config(json.loads((folder / "config.json").read_text()))
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    return unet.eval(), load_file(folder / "common.safetensors")


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], equal_nan=True, msg=lambda m: f"{what}: {m}")


def test_every_case_is_present(conformance_dir: Path) -> None:
    manifest = _manifest(conformance_dir)
    assert len(manifest["cases"]) >= 40
    assert all((_folder(conformance_dir) / case["file"]).exists() for case in manifest["cases"])


@pytest.mark.slow
@pytest.mark.parametrize("case_id", _case_ids())
def test_case(case_id: str, conformance_dir: Path, model: tuple) -> None:
    case = next(c for c in _manifest(conformance_dir)["cases"] if c["id"] == case_id)
    ref = load_file(_folder(conformance_dir) / case["file"])
    params = _params(case["settings"])
    if case["kind"] == "noise":
        noise = draw_noise(params, 3)
        for key, got in zip(("noise", "next1", "next2"), noise):
            assert torch.equal(got, ref[key]), f"{key} differs"
        return

    unet, common = model
    trace_x, trace_d, model_t = [], [], []
    hook = unet.register_forward_pre_hook(lambda m, args: model_t.append(args[1][0].float().item()))
    calls: list[int] = []
    try:
        with torch.no_grad():
            latent = sample_latent(unet, common["cond"], common["uncond"], params,
                                   alphas_cumprod=common["alphas_cumprod"], model_calls=calls,
                                   callback=lambda i, n, x, d: (trace_x.append(x.clone()), trace_d.append(d.clone())))
    finally:
        hook.remove()
    tol = case["tolerance"]
    p = plan(params)
    assert draw_noise(params, 1)[0].equal(ref["noise"])
    if "sigmas" in ref:
        table = (LCMSigmas if p.sampler.kind == "lcm" else ModelSigmas)(common["alphas_cumprod"])
        torch.testing.assert_close(sigmas_for(p, table, p.steps), ref["sigmas"], atol=1e-6, rtol=1e-6)
    if "timesteps" in ref:
        assert a1111_timesteps(p.steps).equal(ref["timesteps"])
    assert calls == [case["nfe_unet_calls"]]
    torch.testing.assert_close(torch.tensor(model_t), ref["model_t"].float(), atol=1e-3, rtol=1e-5)
    assert len(trace_x) == case["callback_steps"]
    _close(torch.stack(trace_x), ref["cb_x"], tol, "step x")
    _close(torch.stack(trace_d), ref["cb_denoised"], tol, "step x0")
    _close(latent, ref["latent"], tol, "final latent")
