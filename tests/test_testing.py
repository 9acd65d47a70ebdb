"""hypernet.testing: tiny pipelines of every family, and the A1111-layout files written from them."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import infer_diffusers_model_type

from hypernet.testing import TEXT_WIDTHS, ldm_state_dict, save_single_file, skeleton_pipeline, tiny_pipeline

VARIANTS = ["sd1", "sd2", "sd2-v", "sdxl"]


@pytest.fixture(scope="module")
def pipes():
    return {variant: tiny_pipeline(variant) for variant in VARIANTS}


def _state(pipe):
    return {
        f"{name}.{key}": value
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
        for key, value in getattr(pipe, name).state_dict().items()
    }


@pytest.mark.slow
def test_seeded_and_deterministic(pipes):
    again, other = _state(tiny_pipeline("sd1", seed=0)), _state(tiny_pipeline("sd1", seed=1))
    first = _state(pipes["sd1"])
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["unet.conv_in.weight"], other["unet.conv_in.weight"])


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline("sd1", seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_family_shapes(pipes, variant):
    pipe = pipes[variant]
    widths = TEXT_WIDTHS[variant]
    assert isinstance(pipe, StableDiffusionXLPipeline if variant == "sdxl" else StableDiffusionPipeline)
    assert pipe.text_encoder.config.hidden_size == widths[0]
    assert pipe.unet.config.cross_attention_dim == sum(widths)
    assert pipe.vae_scale_factor == 8
    assert sum(p.numel() for p in pipe.unet.parameters()) < 3_000_000
    expected = "v_prediction" if variant == "sd2-v" else "epsilon"
    assert pipe.scheduler.config.prediction_type == expected
    assert pipe.tokenizer.pad_token_id == (0 if variant.startswith("sd2") else 49407)
    if variant == "sdxl":
        assert pipe.text_encoder_2.config.hidden_size == widths[1]
        assert pipe.unet.config.addition_embed_type == "text_time"
        assert pipe.tokenizer_2.pad_token_id == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_generates(pipes, variant):
    generator = torch.Generator().manual_seed(0)
    image = pipes[variant]("a cat", num_inference_steps=1, height=32, width=32, output_type="np", generator=generator)
    assert image.images.shape == (1, 32, 32, 3)


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "diffusers_type"), [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_real_size_layout_is_what_diffusers_recognises(variant, diffusers_type):
    state = ldm_state_dict(skeleton_pipeline(variant), variant)
    assert infer_diffusers_model_type(state) == diffusers_type
    if variant == "sd1":  # well-known keys of a real SD 1.5 file
        assert state["model.diffusion_model.output_blocks.11.0.skip_connection.weight"].shape == (320, 640, 1, 1)
        assert state["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
        assert "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias" in state
    if variant == "sd2":  # OpenCLIP ViT-H: 24 blocks on disk, SD2 conditions on the 23rd
        assert state["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
        assert "cond_stage_model.model.transformer.resblocks.24.ln_1.weight" not in state
    if variant == "sdxl":
        assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
        assert state["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
        assert "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_proj.bias" in state


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_save_single_file(pipes, tmp_path, suffix):
    path = save_single_file(pipes["sd2"], tmp_path / f"model{suffix}", "sd2")
    if suffix == ".safetensors":
        state = safetensors.torch.load_file(path)
    else:
        state = torch.load(path, weights_only=True)["state_dict"]
    assert state.keys() == ldm_state_dict(pipes["sd2"], "sd2").keys()
    assert torch.equal(state["model.diffusion_model.input_blocks.0.0.weight"], pipes["sd2"].unet.conv_in.weight)
    assert "cond_stage_model.model.transformer.resblocks.2.ln_1.weight" in state  # the unused last block
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_single_file_refuses_other_suffixes(pipes, tmp_path):
    with pytest.raises(ValueError, match="expected a .safetensors or .ckpt"):
        save_single_file(pipes["sd1"], tmp_path / "model.bin", "sd1")
