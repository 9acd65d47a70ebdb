"""LoRA networks as A1111 applies them, on tiny SD 1.x / 2.x / XL checkpoints: the image equals one generated from
a checkpoint with the delta merged by the formula, weights come back bit-identical, merges are cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hypernet import Hypernetwork, HypernetError
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext
from hypernet.engine.lora import LayerTable, compvis_name, names_from_hashes, parse_network_hashes
from hypernet.network.lora import list_loras, lora_hash, module_delta, resolve_lora
from hypernet.testing import kohya_lora, save_single_file, save_tensors, tiny_pipeline

FAST = dict(steps=2, width=64, height=64, seed=3, sampler_name="Euler")
# A1111 maps diffusers-named SDXL up_blocks_0 upsampler keys to a layer that does not exist (output_blocks_2_1)
A1111_MISSES = {"sdxl": {"lora_unet_up_blocks_0_upsamplers_0_conv"}}


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def setup(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"lora-{family}")
    checkpoint = save_single_file(tiny_pipeline(family), root / f"tiny-{family}.safetensors", family)
    pipe, info = load_pipeline(checkpoint)
    lora_dir = root / "Lora"
    state, modules = kohya_lora(pipe, family, seed=1, alpha=1.0)
    save_tensors(state, lora_dir / "x.safetensors", {"ss_output_name": "x_alias", "ss_network_dim": "2"})
    hn_dir = root / "hypernetworks"
    text = sum(info.text_widths)
    Hypernetwork.create("style", [text, 32, 64], activation_func="swish", weight_init="XavierNormal", seed=1).save(hn_dir / "style.pt")
    return family, checkpoint, Generator(pipe, info, hn_dir, lora_dirs=[lora_dir]), (state, modules), root


def merged_by_formula(checkpoint: Path, state, modules, *, te: float = 1.0, unet: float = 1.0, skip=()) -> Generator:
    """A generator on a fresh copy of the checkpoint with ``W + m * (up @ down) * alpha / rank`` written in."""
    pipe, info = load_pipeline(checkpoint)
    with torch.no_grad():
        for layer, path in modules.items():
            if layer in skip:
                continue
            component, _, name = path.partition(".")
            module = getattr(pipe, component).get_submodule(name)
            up, down = state[f"{layer}.lora_up.weight"], state[f"{layer}.lora_down.weight"]
            rank = down.shape[0]
            alpha = float(state[f"{layer}.alpha"]) if f"{layer}.alpha" in state else rank
            multiplier = te if component.startswith("text_encoder") else unet
            delta = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(module.weight.shape)
            module.weight.data = module.weight.data + delta * (alpha / rank) * multiplier
    return Generator(pipe, info, checkpoint.parent / "hypernetworks")


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in result.images])


def snapshot(gen: Generator) -> dict[str, torch.Tensor]:
    pipe = gen.pipe
    parts = {"unet": pipe.unet, "te": pipe.text_encoder, "te2": getattr(pipe, "text_encoder_2", None)}
    return {f"{p}.{k}": v.clone() for p, m in parts.items() if m is not None for k, v in m.state_dict().items()}


@pytest.mark.slow
def test_lora_zero_is_plain_and_one_is_the_formula(setup) -> None:
    family, checkpoint, gen, (state, modules), _ = setup
    before = snapshot(gen)
    plain = gen.generate(Settings("a castle", **FAST))
    zero = gen.generate(Settings("a castle <lora:x:0>", **FAST))
    one = gen.generate(Settings("a castle <lora:x:1>", **FAST))
    assert np.array_equal(pixels(zero), pixels(plain))
    assert np.abs(pixels(one) - pixels(plain)).mean() > 0.5
    reference = merged_by_formula(checkpoint, state, modules, skip=A1111_MISSES.get(family, ()))
    assert np.array_equal(pixels(one), pixels(reference.generate(Settings("a castle", **FAST))))
    after = snapshot(gen)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert [(a.name, a.te, a.unet) for a in one.loras] == [("x", 1.0, 1.0)]
    assert one.loras[0].layers == len(modules) - len(A1111_MISSES.get(family, ()))


@pytest.mark.slow
def test_text_and_unet_multipliers_are_separate(setup) -> None:
    family, checkpoint, gen, (state, modules), _ = setup
    result = gen.generate(Settings("a tree <lora:x:te=0.5:unet=-0.3>", **FAST))
    reference = merged_by_formula(checkpoint, state, modules, te=0.5, unet=-0.3, skip=A1111_MISSES.get(family, ()))
    assert np.array_equal(pixels(result), pixels(reference.generate(Settings("a tree", **FAST))))


@pytest.mark.slow
def test_lora_composes_with_hypernetworks(setup) -> None:
    family, checkpoint, gen, (state, modules), _ = setup
    both = gen.generate(Settings("a tree <hypernet:style:0.8> <lora:x_alias:0.7>", **FAST))
    reference = merged_by_formula(checkpoint, state, modules, te=0.7, unet=0.7, skip=A1111_MISSES.get(family, ()))
    by_hand = reference.generate(Settings("a tree <hypernet:style:0.8>", **FAST))
    assert np.array_equal(pixels(both), pixels(by_hand))
    assert both.applied[0].name == "style" and both.loras[0].name == "x_alias"


@pytest.mark.slow
def test_merge_is_cached_across_generations(setup) -> None:
    _, _, gen, _, _ = setup
    before = gen.lora_merger.merges
    a = gen.generate(Settings("a house <lora:x:0.6>", **FAST))
    gen.generate(Settings("a house", **FAST))
    b = gen.generate(Settings("a house <lora:x:0.6>", **FAST))
    assert np.array_equal(pixels(a), pixels(b))
    gen.generate(Settings("a house <lora:x:0.5>", **FAST))
    assert gen.lora_merger.merges - before == 2  # 0.6 once, then 0.5; the plain generation did not drop the cache
    with torch.no_grad():
        gen.pipe.unet.mid_block.resnets[0].conv1.weight.add_(0)  # the model's weights changed in place: the cached merge is stale
    gen.generate(Settings("a house <lora:x:0.5>", **FAST))
    assert gen.lora_merger.merges - before == 3


def test_infotext_lora_hashes_written_and_read(setup) -> None:
    _, _, gen, _, root = setup
    result = gen.generate(Settings("a house <lora:x_alias:0.6>", **FAST))
    fields = parse_infotext(result.infotexts[0])
    file = list_loras([root / "Lora"])["x"]
    assert fields["Lora hashes"] == f"x_alias: {lora_hash(file)[:12]}"
    assert parse_network_hashes(fields["Lora hashes"]) == {"x_alias": lora_hash(file)[:12]}
    assert "<lora:x_alias:0.6>" in fields["Prompt"]
    pasted = names_from_hashes("<lora:renamed:0.6>", f"renamed: {lora_hash(file)[:12]}", gen.loras)
    assert pasted == "<lora:x_alias:0.6>"


@pytest.mark.slow
def test_sdxl_files_with_ldm_names_and_sd1_te_keys(setup) -> None:
    family, checkpoint, gen, _, root = setup
    if family != "sdxl":
        pytest.skip("SDXL key variants")
    state, modules = kohya_lora(gen.pipe, family, seed=2, alpha=None, unet_names="ldm")
    # SD1-style lora_te_ keys do nothing on SDXL in A1111
    extra = {k.replace("lora_te1_", "lora_te_"): v.clone() for k, v in state.items() if k.startswith("lora_te1_")}
    save_tensors(state | extra, root / "Lora" / "sdxl_ldm.safetensors")
    gen.loras.available(refresh=True)
    result = gen.generate(Settings("a cat <lora:sdxl_ldm:1>", **FAST))
    reference = merged_by_formula(checkpoint, state, modules)  # LDM names reach the upsampler too
    assert np.array_equal(pixels(result), pixels(reference.generate(Settings("a cat", **FAST))))
    assert result.loras[0].layers == len(modules)


def test_openclip_attention_needs_all_four_parts(setup) -> None:
    family, _, gen, _, _ = setup
    if family == "sd1":
        pytest.skip("OpenCLIP text encoders only")
    table = LayerTable.of(gen.pipe, family)
    prefix = "lora_te_" if family == "sd2" else "lora_te2_"
    q = table.resolve(f"{prefix}text_model_encoder_layers_0_self_attn_q_proj")
    out = table.resolve(f"{prefix}text_model_encoder_layers_0_self_attn_out_proj")
    assert q is not None and q.group == out.group and q.member == "q_proj"
    assert table.resolve(f"{prefix}text_model_encoder_layers_0_layer_norm1") is None  # ignored in A1111
    assert table.resolve(f"{prefix}text_model_encoder_layers_0_mlp_fc1") is not None


def test_key_conversion_matches_a1111() -> None:
    assert compvis_name("lora_unet_down_blocks_1_attentions_0_proj_in", False) == "diffusion_model_input_blocks_4_1_proj_in"
    assert compvis_name("lora_unet_up_blocks_1_resnets_2_conv1", False) == "diffusion_model_output_blocks_5_0_in_layers_2"
    assert compvis_name("lora_unet_mid_block_resnets_1_time_emb_proj", False) == "diffusion_model_middle_block_2_emb_layers_1"
    assert compvis_name("lora_unet_up_blocks_0_upsamplers_0_conv", False) == "diffusion_model_output_blocks_2_1_conv"
    assert compvis_name("lora_unet_time_embedding_linear_2", False) == "diffusion_model_time_embed_2"
    assert compvis_name("lora_te_text_model_encoder_layers_3_mlp_fc2", True) == "model_transformer_resblocks_3_mlp_c_proj"
    assert compvis_name("lora_te2_text_model_encoder_layers_3_self_attn_q_proj", False) == "1_model_transformer_resblocks_3_attn_q_proj"


def test_network_types_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    up, down = torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)
    delta, _ = module_delta({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.0)}, w, 0.5)
    assert torch.allclose(delta, up @ down * 0.5 * 0.5)
    delta, _ = module_delta({"lora_B.weight": up, "lora_A.weight": down}, w, 1.0, dyn=1)  # dyn: first rank only
    assert torch.allclose(delta, up[:, :1] @ down[:1])
    diff, diff_b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    delta, bias = module_delta({"diff": diff, "diff_b": diff_b}, w, 2.0)
    assert torch.equal(delta, diff * 2.0) and torch.equal(bias, diff_b * 2.0)
    w1a, w1b, w2a, w2b = (torch.randn(*s, generator=g) for s in [(6, 2), (2, 4), (6, 2), (2, 4)])
    delta, _ = module_delta({"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b,
                             "alpha": torch.tensor(4.0)}, w, 1.0)
    assert torch.allclose(delta, (w1a @ w1b) * (w2a @ w2b) * 2.0)
    k1, k2 = torch.randn(2, 2, generator=g), torch.randn(3, 2, generator=g)
    delta, _ = module_delta({"lokr_w1": k1, "lokr_w2": k2}, w, 1.0)
    assert torch.allclose(delta, torch.kron(k1, k2))
    conv = torch.randn(6, 4, 3, 3, generator=g)
    cdown, cup, mid = torch.randn(2, 4, generator=g), torch.randn(6, 2, generator=g), torch.randn(2, 2, 3, 3, generator=g)
    delta, _ = module_delta({"lora_up.weight": cup, "lora_down.weight": cdown, "lora_mid.weight": mid}, conv, 1.0)
    assert torch.allclose(delta, torch.einsum("nmkl,in,mj->ijkl", mid, cup, cdown))
    magnitude = torch.rand(1, 4, generator=g) + 0.5  # DoRA: the merged weight's input-channel norms rescaled
    delta, _ = module_delta({"lora_up.weight": up, "lora_down.weight": down, "dora_scale": magnitude}, w, 0.5)
    merged = w + up @ down
    assert torch.allclose(delta, (merged * magnitude / merged.norm(dim=0, keepdim=True) - w) * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        module_delta({"lora_up.weight": up, "lora_down.weight": down}, torch.zeros(5, 4), 1.0)


def test_diffusers_peft_file_applies_with_a_warning(setup) -> None:
    family, checkpoint, gen, _, root = setup
    if family != "sd1":
        pytest.skip("one family is enough for the layout")
    state, modules = kohya_lora(gen.pipe, family, seed=4, alpha=None)
    peft = {}
    for layer, path in modules.items():
        component, _, name = path.partition(".")
        if component == "text_encoder" and not name.startswith("text_model."):
            path = f"{component}.text_model.{name}"  # as diffusers and PEFT name it
        peft[f"{path}.lora_A.weight"] = state[f"{layer}.lora_down.weight"]
        peft[f"{path}.lora_B.weight"] = state[f"{layer}.lora_up.weight"]
    save_tensors(peft, root / "Lora" / "peft.safetensors")
    gen.loras.available(refresh=True)
    result = gen.generate(Settings("a dog <lora:peft:1>", **FAST))
    reference = merged_by_formula(checkpoint, state, modules)
    assert np.array_equal(pixels(result), pixels(reference.generate(Settings("a dog", **FAST))))
    assert any("diffusers/PEFT-layout" in w for w in result.warnings)


def test_discovery_names_aliases_and_errors(tmp_path: Path) -> None:
    lora = {"lora_unet_a.lora_up.weight": torch.zeros(2, 1), "lora_unet_a.lora_down.weight": torch.zeros(1, 2)}
    save_tensors(lora, tmp_path / "b" / "Style10.safetensors", {"ss_output_name": "pretty"})
    save_tensors(lora, tmp_path / "a" / "Style2.pt")
    save_tensors(lora, tmp_path / "None.safetensors", {"ss_output_name": "pretty"})
    found = list_loras([tmp_path])
    assert list(found) == ["None", "Style2", "Style10"]  # A1111's walk: a folder's files, then its sub-folders
    assert found["Style10"].alias == "pretty" and found["Style2"].alias == "Style2"
    with pytest.raises(HypernetError, match="Unknown LoRA 'pretty'"):
        resolve_lora("pretty", found)  # an alias two files share resolves by stem only, as in A1111
    assert resolve_lora("Style2", found).path.name == "Style2.pt"
    assert resolve_lora("None", found).name == "None"  # forbidden alias: by stem only
    with pytest.raises(HypernetError, match=r"Unknown LoRA 'style2'; did you mean 'Style2'"):
        resolve_lora("style2", found)


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, "Stable Diffusion checkpoint"),
        ({"emb_params": torch.zeros(1, 4)}, "textual inversion embedding"),
        ({"lora_unet_a.oft_blocks": torch.zeros(1, 2, 2)}, "OFT layers are not supported"),
    ],
)
def test_wrong_kinds_of_file_are_named(setup, state, kind) -> None:
    family, _, gen, _, root = setup
    if family != "sd1":
        pytest.skip("once is enough")
    save_tensors(state, root / "Lora" / "wrong.safetensors")
    gen.loras.available(refresh=True)
    with pytest.raises(HypernetError, match=kind):
        gen.generate(Settings("a <lora:wrong:1>", **FAST))
    (root / "Lora" / "wrong.safetensors").unlink()


def test_hypernetwork_in_the_lora_folder_is_named(setup) -> None:
    family, _, gen, _, root = setup
    if family != "sd1":
        pytest.skip("once is enough")
    Hypernetwork.create("hn", [48, 32], seed=1).save(root / "Lora" / "hn.pt")
    gen.loras.available(refresh=True)
    with pytest.raises(HypernetError, match="hypernetwork file, not a LoRA"):
        gen.generate(Settings("a <lora:hn:1>", **FAST))
    (root / "Lora" / "hn.pt").unlink()
    with pytest.raises(HypernetError, match=r"Unknown LoRA 'X'; did you mean 'x'"):
        gen.generate(Settings("a <lora:X:1>", **FAST))
