"""hypernet.engine.checkpoints: every family and format loads back offline with identical weights, and bad input
gets a one-sentence HypernetError naming the file."""

from __future__ import annotations

import shutil
import socket
import sys
import types

import numpy as np
import pytest
import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from hypernet.engine.checkpoints import (
    family_configs,
    infer_configs,
    load_pipeline,
    load_vae,
    read_state_dict,
)
from hypernet.errors import HypernetError
from hypernet.fileio import sha256_file
from hypernet.testing import (
    TEXT_WIDTHS,
    ldm_state_dict,
    save_diffusers,
    save_single_file,
    skeleton_pipeline,
    tiny_pipeline,
    vae_to_ldm,
)

VARIANTS = ["sd1", "sd2", "sd2-v", "sdxl"]
FORMATS = [".safetensors", ".ckpt", "diffusers"]
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def pipes():
    return {variant: tiny_pipeline(variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def files(pipes, tmp_path_factory):
    """variant -> format -> path of the tiny model saved that way."""
    root = tmp_path_factory.mktemp("models")
    return {
        variant: {
            ".safetensors": save_single_file(pipe, root / f"tiny-{variant}.safetensors", variant),
            ".ckpt": save_single_file(pipe, root / f"tiny-{variant}.ckpt", variant),
            "diffusers": save_diffusers(pipe, root / f"tiny-{variant}"),
        }
        for variant, pipe in pipes.items()
    }


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("hypernet tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _config(model) -> dict:
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    volatile = {"transformers_version", "dtype"}  # saving records these on the model's config
    return {key: value for key, value in config.items() if not key.startswith("_") and key not in volatile}


def assert_same_models(original, loaded):
    for name in COMPONENTS:
        a, b = getattr(original, name, None), getattr(loaded, name, None)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert _config(a) == _config(b), name
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[key], sb[key]) for key in sa), name


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip(pipes, files, no_network, variant, fmt):
    path = files[variant][fmt]
    pipe, info = load_pipeline(path)
    assert_same_models(pipes[variant], pipe)
    assert type(pipe) is type(pipes[variant])
    assert type(pipe.scheduler) is type(pipes[variant].scheduler)  # e.g. SD2-768's DDIM
    assert info.family == ("sd2" if variant == "sd2-v" else variant)
    assert info.prediction_type == ("v_prediction" if variant == "sd2-v" else "epsilon")
    assert pipe.scheduler.config.prediction_type == info.prediction_type
    assert info.text_widths == TEXT_WIDTHS[variant]
    assert info.path == str(path)
    assert info.name == f"tiny-{variant}"
    assert info.short_hash == (None if fmt == "diffusers" else sha256_file(path)[:10])
    assert pipe.tokenizer.pad_token_id == pipes[variant].tokenizer.pad_token_id
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    if variant == "sdxl":
        assert pipe.tokenizer_2.pad_token_id == 0


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "family", "prediction"), [
    ("sd1", "sd1", "epsilon"), ("sd2", "sd2", "epsilon"), ("sd2-v", "sd2", "v_prediction"), ("sdxl", "sdxl", "epsilon"),
])
def test_real_size_configs_are_inferred_from_shapes(variant, family, prediction):
    """The real SD1.5 / SD2.1 / SDXL architectures, on the meta device: the configs inferred from their LDM shapes
    build exactly the shipped real configs."""
    state = ldm_state_dict(skeleton_pipeline(variant), variant)
    inferred, shipped = infer_configs(state, family, prediction), family_configs(variant)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in shipped:
            assert _config(_meta_model(name, inferred[name])) == _config(_meta_model(name, shipped[name])), name


def _meta_model(name, config):
    with init_empty_weights():
        if name == "unet":
            return UNet2DConditionModel.from_config(config)
        if name == "vae":
            return AutoencoderKL.from_config(config)
        model_cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        return model_cls(CLIPTextConfig.from_dict(config))


@pytest.mark.slow
def test_dtype(files):
    pipe, _ = load_pipeline(files["sdxl"][".safetensors"], dtype=torch.float16)
    for name in COMPONENTS:
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.float16}, name


def test_half_precision_file(pipes, tmp_path):
    state = {k: v.half() if v.is_floating_point() else v for k, v in ldm_state_dict(pipes["sd1"], "sd1").items()}
    safetensors.torch.save_file(state, tmp_path / "pruned-fp16.safetensors")
    pipe, _ = load_pipeline(tmp_path / "pruned-fp16.safetensors")
    assert pipe.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(pipe.unet.conv_in.weight, pipes["sd1"].unet.conv_in.weight.half().float())


# --- prediction type -------------------------------------------------------------------------------------------


def _copy(path, tmp_path, name):
    return shutil.copy(path, tmp_path / name)


def test_a1111_yaml_beside_the_file(files, tmp_path):
    v_file = _copy(files["sd2"][".safetensors"], tmp_path, "plain.safetensors")
    (tmp_path / "plain.yaml").write_text('model:\n  target: LatentDiffusion\n  params:\n    parameterization: "v"\n')
    assert load_pipeline(v_file)[1].prediction_type == "v_prediction"
    eps_file = _copy(files["sd2-v"][".safetensors"], tmp_path, "probe-says-v.safetensors")
    (tmp_path / "probe-says-v.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert load_pipeline(eps_file)[1].prediction_type == "epsilon"


def test_broken_yaml(files, tmp_path):
    path = _copy(files["sd1"][".safetensors"], tmp_path, "m.safetensors")
    (tmp_path / "m.yaml").write_text("- just\n- a list\n")
    with pytest.raises(HypernetError, match=r"m\.yaml is not an LDM model config"):
        load_pipeline(path)


@pytest.mark.slow
def test_v_pred_key_marks_v_prediction(pipes, tmp_path):
    state = ldm_state_dict(pipes["sdxl"], "sdxl") | {"v_pred": torch.tensor([])}
    safetensors.torch.save_file(state, tmp_path / "vpred-xl.safetensors")
    pipe, info = load_pipeline(tmp_path / "vpred-xl.safetensors")
    assert info.prediction_type == pipe.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [".safetensors", "diffusers"])
def test_prediction_type_override(files, fmt):
    pipe, info = load_pipeline(files["sd2-v"][fmt], prediction_type="epsilon")
    assert info.prediction_type == pipe.scheduler.config.prediction_type == "epsilon"
    with pytest.raises(HypernetError, match="prediction_type must be"):
        load_pipeline(files["sd1"][fmt], prediction_type="v")


# --- separate VAE ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_separate_vae_in_ldm_layout(files, tmp_path):
    other = tiny_pipeline("sd1", seed=7).vae
    # as VAE .pt files come: wrapped in "state_dict", with the training loss's weights beside the model's
    state = {"state_dict": vae_to_ldm(other) | {"loss.logvar": torch.zeros(())}}
    torch.save(state, tmp_path / "other.vae.pt")
    pipe, _ = load_pipeline(files["sd1"][".safetensors"], vae=tmp_path / "other.vae.pt")
    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(), other.state_dict().values()))
    assert pipe.vae.config.scaling_factor == 0.18215


def test_separate_vae_in_diffusers_layout(files, tmp_path):
    vae_file = files["sdxl"]["diffusers"] / "vae" / "diffusion_pytorch_model.safetensors"
    vae = load_vae(vae_file, family="sdxl")
    assert vae.config.scaling_factor == 0.13025
    # the attention names diffusers used before 0.14, still found in old VAE downloads
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in safetensors.torch.load_file(vae_file).items():
        for new, old in legacy.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        state[key] = value
    safetensors.torch.save_file(state, tmp_path / "legacy.safetensors")
    old = load_vae(tmp_path / "legacy.safetensors", family="sdxl")
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), vae.state_dict().values()))


def test_vae_file_that_is_not_a_vae(files, tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(HypernetError, match=r"x\.pt is not a VAE"):
        load_pipeline(files["sd1"][".safetensors"], vae=tmp_path / "x.pt")


# --- other real-world files ------------------------------------------------------------------------------------


def test_inpainting_checkpoint(pipes, tmp_path):
    state = ldm_state_dict(pipes["sd1"], "sd1")
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(32, 9, 3, 3)
    safetensors.torch.save_file(state, tmp_path / "inpaint.safetensors")
    pipe, info = load_pipeline(tmp_path / "inpaint.safetensors")
    assert isinstance(pipe, StableDiffusionInpaintPipeline) and pipe.unet.config.in_channels == 9
    assert info.family == "sd1"


@pytest.mark.slow
def test_lightning_training_checkpoint(pipes, tmp_path, monkeypatch):
    """Training-run .ckpt files pickle lightning's callback and numpy scalars beside the weights."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = [types.ModuleType(name) for name in names]
    callback = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules[-1].ModelCheckpoint = callback
    for module in modules:
        monkeypatch.setitem(sys.modules, module.__name__, module)
    checkpoint = {
        "state_dict": ldm_state_dict(pipes["sd1"], "sd1"),
        "callbacks": {callback: {"best_model_score": np.float64(0.5)}},
        "global_step": 470000,
    }
    torch.save(checkpoint, tmp_path / "trained.ckpt")
    for name in names:  # as on a machine without lightning
        monkeypatch.delitem(sys.modules, name)
    pipe, info = load_pipeline(tmp_path / "trained.ckpt")
    assert info.family == "sd1"
    assert torch.equal(pipe.unet.conv_in.weight, pipes["sd1"].unet.conv_in.weight)


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    torch.save({"state_dict": {}, "evil": shutil.rmtree}, tmp_path / "evil.ckpt")
    with pytest.raises(HypernetError, match=r"evil\.ckpt could not be read"):
        read_state_dict(tmp_path / "evil.ckpt")


# --- errors ----------------------------------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(HypernetError, match=r"missing\.safetensors: no such checkpoint file"):
        load_pipeline(tmp_path / "missing.safetensors")
    with pytest.raises(HypernetError, match="no such file"):
        load_vae(tmp_path / "missing.pt", family="sd1")


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(HypernetError, match="is not a diffusers pipeline"):
        load_pipeline(tmp_path)


def test_hub_id_offline_fails_fast(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HypernetError, match="stabilityai/stable-diffusion-2-1: no such file or folder.*offline"):
        load_pipeline("stabilityai/stable-diffusion-2-1")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file(files, tmp_path, suffix):
    data = files["sd1"][suffix].read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(HypernetError, match=rf"cut\{suffix} could not be read .* truncated or corrupt"):
        load_pipeline(tmp_path / f"cut{suffix}")


def test_garbage_file(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(HypernetError, match=r"junk\.safetensors could not be read"):
        load_pipeline(tmp_path / "junk.safetensors")


def test_hypernetwork_file_is_not_a_checkpoint(conformance_dir):
    path = sorted((conformance_dir / "hypernetworks").glob("*.pt"))[0]
    with pytest.raises(HypernetError, match="is not a Stable Diffusion checkpoint.*hypernetwork"):
        load_pipeline(path)


def test_lora_file_is_not_a_checkpoint(tmp_path):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}
    safetensors.torch.save_file(lora, tmp_path / "style.safetensors")
    with pytest.raises(HypernetError, match=r"style\.safetensors is not a Stable Diffusion checkpoint"):
        load_pipeline(tmp_path / "style.safetensors")


def test_unrecognised_architecture(pipes, tmp_path):
    state = ldm_state_dict(pipes["sdxl"], "sdxl")
    refiner_like = {k: v for k, v in state.items() if not k.startswith("conditioner.embedders.0.")}
    safetensors.torch.save_file(refiner_like, tmp_path / "refiner.safetensors")
    with pytest.raises(HypernetError, match=r"refiner\.safetensors has an unrecognised architecture"):
        load_pipeline(tmp_path / "refiner.safetensors")


def test_mismatched_text_width(pipes, tmp_path):
    state = ldm_state_dict(pipes["sd1"], "sd1") | ldm_state_dict(pipes["sdxl"], "sdxl")
    state = {k: v for k, v in state.items() if not k.startswith("conditioner.")}  # SDXL UNet, SD1 text encoder
    safetensors.torch.save_file(state, tmp_path / "mixed.safetensors")
    with pytest.raises(HypernetError, match=r"mixed\.safetensors has an unrecognised"):
        load_pipeline(tmp_path / "mixed.safetensors")


def test_missing_weights(pipes, tmp_path):
    state = ldm_state_dict(pipes["sd1"], "sd1")
    del state["model.diffusion_model.middle_block.1.proj_out.weight"]
    safetensors.torch.save_file(state, tmp_path / "pruned.safetensors")
    with pytest.raises(HypernetError, match=r"pruned\.safetensors has an unrecognised UNet: 1 weights missing"):
        load_pipeline(tmp_path / "pruned.safetensors")
