"""Exporting hypernetworks as LoRA files and baking them into checkpoints, checked the way loaders read them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_unet_state_dict_to_peft

from hypernet.cli import main
from hypernet.engine.checkpoints import ModelInfo, load_pipeline
from hypernet.engine.generate import Generator, Hooks, Settings
from hypernet.errors import HypernetError
from hypernet.export import FitOptions, bake, export_lora, parse_network_spec, resolve_networks
from hypernet.export.deltas import Factor, LayerDelta, attention_layers
from hypernet.export.lora import ExportedLayer, LoraPlan, kohya_state_dict
from hypernet.network import Hypernetwork
from hypernet.testing import TEXT_WIDTHS, ldm_state_dict, save_single_file, skeleton_pipeline, tiny_pipeline, unet_to_ldm

pytestmark = pytest.mark.usefixtures("one_thread")

INFO = ModelInfo("sd1", "epsilon", TEXT_WIDTHS["sd1"], "tiny", "", None)


def linear_net(name: str, seed: int, widths=(48, 32, 64), bias: float = 0.3) -> Hypernetwork:
    """A linear network with clearly non-zero weights and biases (fresh networks are nearly the identity)."""
    net = Hypernetwork.create(name, list(widths), weight_init="XavierNormal", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * bias)
    return net


@pytest.fixture(scope="module")
def hn_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hn")
    linear_net("lin", 2).save(folder / "lin.pt")
    linear_net("lin2", 3, widths=(48, 64)).save(folder / "lin2.pt")
    linear_net("nobias", 4, bias=0.0).save(folder / "nobias.pt")
    Hypernetwork.create("swishy", [48, 32, 64], activation_func="swish", weight_init="XavierNormal",
                        seed=5).save(folder / "swishy.pt")
    return folder


def final_latent(pipe, prompt: str, hn_dir: Path) -> torch.Tensor:
    latents: list[torch.Tensor] = []
    Generator(pipe, INFO, hn_dir).generate(
        Settings(prompt, steps=6, width=64, height=64, seed=11, cfg_scale=5.0),
        hooks=Hooks(latents=lambda z: latents.append(z.clone())),
    )
    return latents[-1]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reference(hn_dir) -> dict[str, torch.Tensor]:
    """Final latents with the tags (what the exports must reproduce) and without any network."""
    prompts = {"lin": "a cat <hypernet:lin:0.8>", "stack": "a cat <hypernet:lin:0.8> <hypernet:lin2:-0.5>",
               "nobias": "a cat <hypernet:nobias:1>", "plain": "a cat"}
    return {key: final_latent(tiny_pipeline("sd1"), prompt, hn_dir) for key, prompt in prompts.items()}


def a1111_layer(key: str, layer_names: set[str]) -> str | None:
    """The compvis layer A1111's Lora extension (v1.10) resolves a kohya UNet key to (spec §3), or None."""
    name = key.partition(".")[0]
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        name = f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{m[4]}"
    elif m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        name = f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else 2 * int(m[2])}_{m[3]}"
    elif m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        name = f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{m[4]}"
    if name in layer_names:
        return name
    name = name.replace("lora_unet", "diffusion_model")
    return name if name in layer_names else None


def ldm_layers(pipe, variant: str) -> dict[str, torch.Tensor]:
    """A1111's layer table for the UNet: compvis name (``diffusion_model_...``) -> weight/bias tensors."""
    return {key[len("model."):].replace(".", "_"): t for key, t in ldm_state_dict(pipe, variant).items()
            if key.startswith("model.diffusion_model.")}


def apply_like_a1111(pipe, state: dict[str, torch.Tensor], variant: str, multiplier: float = 1.0) -> None:
    """Merge a kohya file into ``pipe``'s UNet with A1111's math: ΔW = up·down·alpha/rank·m; full: diff, diff_b·m."""
    table = ldm_layers(pipe, variant)
    names = {k.rsplit("_", 1)[0] for k in table}
    by_memory = {(t.data_ptr(), t.shape): k for k, t in pipe.unet.state_dict().items()}
    ldm_to_diffusers = {"diffusion_model_" + k.replace(".", "_"): by_memory[t.data_ptr(), t.shape] for k, t in unet_to_ldm(pipe.unet).items()}
    params = dict(pipe.unet.named_parameters())
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        prefix, _, part = key.partition(".")
        groups.setdefault(prefix, {})[part] = tensor.double()
    with torch.no_grad():
        for prefix, w in groups.items():
            layer = a1111_layer(prefix, names)
            assert layer is not None, f"A1111 would not find a layer for {prefix}"
            weight = params[ldm_to_diffusers[layer + "_weight"]]
            if "lora_up.weight" in w:
                rank = w["lora_down.weight"].shape[0]
                delta = w["lora_up.weight"] @ w["lora_down.weight"] * float(w["alpha"]) / rank
                weight += (delta * multiplier).float()
            else:
                weight += (w["diff"] * multiplier).float()
                bias = params[ldm_to_diffusers[layer + "_bias"]]
                bias += (w["diff_b"] * multiplier).float()


@pytest.mark.slow
def test_linear_full_export_loads_in_diffusers_and_equals_the_tag(hn_dir, reference, tmp_path) -> None:
    pipe = tiny_pipeline("sd1")
    entries = resolve_networks(["lin:0.8"], hn_dir)
    report = export_lora(Generator(pipe, INFO), entries, tmp_path / "lin.safetensors", format="diffusers")
    assert report.method == "exact" and report.overall_error < 1e-9
    assert report.value_bias_norm > 0.1  # the bias matters here: a loader without it would be off
    lora = tiny_pipeline("sd1")
    lora.load_lora_weights(str(tmp_path / "lin.safetensors"))
    assert relative(final_latent(lora, "a cat", hn_dir), reference["lin"]) <= 1e-4
    assert relative(reference["plain"], reference["lin"]) > 1e-2  # the network visibly changes the latent


@pytest.mark.slow
def test_linear_full_kohya_export_as_a1111_and_comfyui_apply_it(hn_dir, reference, tmp_path) -> None:
    pipe = tiny_pipeline("sd1")
    entries = resolve_networks(["lin:0.8", "lin2:-0.5"], hn_dir)  # a chained stack folds to one affine map
    out = tmp_path / "stack.safetensors"
    report = export_lora(Generator(pipe, INFO), entries, out)
    assert report.format == "kohya" and report.rank is None
    state = safetensors.torch.load_file(out)
    assert any(k.endswith(".diff_b") for k in state) and all(v.dtype == torch.float32 for v in state.values())
    target = tiny_pipeline("sd1")
    apply_like_a1111(target, state, "sd1")
    assert relative(final_latent(target, "a cat", hn_dir), reference["stack"]) <= 1e-4
    # diffusers refuses kohya files with diff/diff_b keys as a whole (documented in the report's note)
    with pytest.raises(ValueError, match="not been correctly renamed"):
        tiny_pipeline("sd1").load_lora_weights(str(out))
    assert "diffusers" in report.notes[0]


def lora_latent(pipe, prompt: str, hn_dir: Path, lora_dir: Path) -> torch.Tensor:
    """The final latent of ``prompt`` generated by hypernet itself, ``<lora:...>`` tags read from ``lora_dir``."""
    latents: list[torch.Tensor] = []
    Generator(pipe, INFO, hn_dir, lora_dirs=[lora_dir]).generate(
        Settings(prompt, steps=6, width=64, height=64, seed=11, cfg_scale=5.0),
        hooks=Hooks(latents=lambda z: latents.append(z.clone())),
    )
    return latents[-1]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_exports_through_hypernets_own_lora_path_equal_the_tags(hn_dir, reference, tmp_path, fmt) -> None:
    """An exact export used as ``<lora:NAME:1>`` in hypernet's own prompts gives the hypernetwork tags' image, and a
    rank-r export applied by hypernet equals the same file merged with A1111's formula."""
    loras = tmp_path / "Lora"
    entries = resolve_networks(["lin:0.8", "lin2:-0.5"], hn_dir)
    export_lora(Generator(tiny_pipeline("sd1"), INFO), entries, loras / "stack.safetensors", format=fmt)
    pipe = tiny_pipeline("sd1")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert relative(lora_latent(pipe, "a cat <lora:stack:1>", hn_dir, loras), reference["stack"]) <= 1e-4
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # restored bit for bit
    if fmt == "kohya":
        export_lora(Generator(tiny_pipeline("sd1"), INFO), entries, loras / "r8.safetensors", rank=8,
                    include_bias=False)
        target = tiny_pipeline("sd1")
        apply_like_a1111(target, safetensors.torch.load_file(loras / "r8.safetensors"), "sd1", multiplier=0.7)
        ours = lora_latent(tiny_pipeline("sd1"), "a cat <lora:r8:0.7>", hn_dir, loras)
        assert relative(ours, final_latent(target, "a cat", hn_dir)) <= 1e-5


@pytest.mark.slow
def test_kohya_without_bias_loads_in_diffusers(hn_dir, reference, tmp_path) -> None:
    out = tmp_path / "nobias.safetensors"
    entries = resolve_networks(["nobias"], hn_dir)
    report = export_lora(Generator(tiny_pipeline("sd1"), INFO), entries, out, include_bias=False)
    assert report.value_bias_norm == 0.0  # a network without biases has no value bias to lose
    target = tiny_pipeline("sd1")
    target.load_lora_weights(str(out))
    assert relative(final_latent(target, "a cat", hn_dir), reference["nobias"]) <= 1e-4


@pytest.mark.slow
def test_bake_equals_the_tag_with_no_tag(hn_dir, reference, tmp_path) -> None:
    ckpt = save_single_file(tiny_pipeline("sd1"), tmp_path / "tiny.safetensors", "sd1")
    pipe, info = load_pipeline(ckpt)
    out = tmp_path / "baked.safetensors"
    report = bake(Generator(pipe, info), ckpt, resolve_networks(["lin:0.8"], hn_dir), out)
    assert report.kind == "checkpoint" and report.method == "exact"
    meta = safetensors.safe_open(out, "pt").metadata()
    assert "lin" in meta["hypernet_baked"] and meta["hypernet_method"] == "exact"
    baked, _ = load_pipeline(out)
    assert relative(final_latent(baked, "a cat", hn_dir), reference["lin"]) <= 1e-4
    original = safetensors.torch.load_file(ckpt)
    changed = {k for k, v in safetensors.torch.load_file(out).items() if not torch.equal(v, original[k])}
    assert changed and all(re.search(r"\.attn[12]\.(to_k\.weight|to_v\.weight|to_out\.0\.bias)$", k) for k in changed)


def test_bake_refuses_non_linear_networks_without_approximate(hn_dir, tmp_path) -> None:
    ckpt = save_single_file(tiny_pipeline("sd1"), tmp_path / "tiny.safetensors", "sd1")
    pipe, info = load_pipeline(ckpt)
    with pytest.raises(HypernetError, match="'swishy' cannot be folded exactly: its activation 'swish'.*--approximate"):
        bake(Generator(pipe, info), ckpt, resolve_networks(["swishy"], hn_dir), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_rank_error_falls_with_rank(hn_dir, tmp_path) -> None:
    generator = Generator(tiny_pipeline("sd1"), INFO)
    entries = resolve_networks(["lin"], hn_dir)
    errors = [export_lora(generator, entries, tmp_path / f"r{r}.safetensors", rank=r).overall_error
              for r in (4, 8, 16, 32)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert 0 < errors[-1] < errors[0] < 1
    state = safetensors.torch.load_file(tmp_path / "r8.safetensors")
    downs = [v for k, v in state.items() if k.endswith("lora_down.weight")]
    assert downs and all(v.shape[0] == 8 and v.dtype == torch.float16 for v in downs)
    assert all(float(v) == 8.0 for k, v in state.items() if k.endswith(".alpha"))


@pytest.mark.slow
def test_non_linear_export_is_fitted_and_reported(hn_dir, tmp_path) -> None:
    generator = Generator(tiny_pipeline("sd1"), INFO)
    entries = resolve_networks(["swishy"], hn_dir)
    options = FitOptions(prompts=["a cat", "a red house", "a dog on grass"], steps=4, width=64, height=64)
    report = export_lora(generator, entries, tmp_path / "fit.safetensors", fit=options, check_prompts=["a cat"],
                         check_steps=4, size=64)
    assert report.method == "fit"
    fit_errors = [row["fit_error"] for row in report.layers]
    assert len(fit_errors) == 2 * len(attention_layers(generator.pipe.unet))
    assert all(0 <= e < 1 for e in fit_errors)
    assert report.images is not None and report.images.latent_relative < report.images.effect_relative
    with pytest.raises(HypernetError, match="cannot be folded exactly"):
        export_lora(generator, entries, tmp_path / "no.safetensors", approximate=False)


def layout_plan(pipe, family: str) -> LoraPlan:
    """A rank-4 plan with random factors of every attention layer's real shape (no SVD of real-size deltas)."""
    layers = []
    for name, attn in attention_layers(pipe.unet):
        factors = [Factor(torch.randn(lin.out_features, 4, dtype=torch.float64),
                          torch.randn(4, lin.in_features, dtype=torch.float64), 4, 0.1) for lin in (attn.to_k, attn.to_v)]
        delta = LayerDelta(name, attn.to_k.in_features, torch.empty(0), torch.empty(attn.to_v.out_features, 0),
                           torch.randn(attn.to_out[0].out_features, dtype=torch.float64), 0.0)
        layers.append(ExportedLayer(delta, *factors))
    return LoraPlan(layers, family, int(pipe.unet.config.layers_per_block), "svd")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sd1", "sd2", "sdxl"])
def test_kohya_keys_resolve_in_every_loader_for_real_layouts(variant) -> None:
    pipe = skeleton_pipeline(variant)
    plan = layout_plan(pipe, variant)
    state = kohya_state_dict(plan, torch.float16)
    layers = ldm_layers(pipe, variant)
    names = {k.rsplit("_", 1)[0] for k in layers}
    prefixes = {k.partition(".")[0] for k in state}
    assert len(prefixes) == 3 * len(plan.layers)
    blocks = ("input_blocks", "middle_block", "output_blocks") if variant == "sdxl" else ("down", "mid", "up")
    assert all(p.startswith(tuple(f"lora_unet_{b}_" for b in blocks)) for p in prefixes)  # kohya's naming
    for prefix in prefixes:
        # A1111: the conversion table, then the lora_unet -> diffusion_model fallback; shapes must match
        layer = a1111_layer(prefix, names)
        assert layer is not None, prefix
        weight = layers[layer + "_weight"]
        if prefix + ".lora_up.weight" in state:
            up, down = state[prefix + ".lora_up.weight"], state[prefix + ".lora_down.weight"]
            assert (up.shape[0], down.shape[1]) == tuple(weight.shape[:2]) and float(state[prefix + ".alpha"]) == 4
        else:
            assert state[prefix + ".diff"].shape == weight.shape
            assert state[prefix + ".diff_b"].shape == layers[layer + "_bias"].shape
        # ComfyUI maps lora_unet_ + the original name directly, and diffusers names of standard UNets
        assert prefix.replace("lora_unet", "diffusion_model") in names or a1111_layer(prefix, names) == layer
    # diffusers: every lora_down/lora_up key converts to an existing module of the right shape
    lora_only = {k: v for k, v in state.items() if ".diff" not in k}
    converted, alphas = StableDiffusionPipeline.lora_state_dict(lora_only, unet_config=pipe.unet.config)
    modules = dict(pipe.unet.named_modules())
    assert len(converted) == 4 * len(plan.layers) and len(alphas) == 2 * len(plan.layers)
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    assert len(peft) == len(converted)
    for key, tensor in peft.items():
        module_name, _, part = key.rpartition(".lora_")
        linear = modules[module_name]
        expected = (4, linear.in_features) if part == "A.weight" else (linear.out_features, 4)
        assert tuple(tensor.shape) == expected, key


@pytest.mark.slow
def test_bad_input(hn_dir, tmp_path) -> None:
    generator = Generator(tiny_pipeline("sd1"), INFO)
    entries = resolve_networks(["lin"], hn_dir)
    with pytest.raises(HypernetError, match="rank 0 must be at least 1"):
        export_lora(generator, entries, tmp_path / "a.safetensors", rank=0)
    with pytest.raises(HypernetError, match="format 'onnx' must be one of: kohya, diffusers"):
        export_lora(generator, entries, tmp_path / "a.safetensors", format="onnx")  # type: ignore[arg-type]
    with pytest.raises(HypernetError, match=r"a\.pt: a LoRA is written as .safetensors"):
        export_lora(generator, entries, tmp_path / "a.pt")
    with pytest.raises(HypernetError, match="'nope' is not in"):
        resolve_networks(["nope"], hn_dir)
    with pytest.raises(HypernetError, match="multiplier after ':' must be a number"):
        parse_network_spec("lin:x")
    assert parse_network_spec("lin:0.5") == ("lin", 0.5) and parse_network_spec("lin") == ("lin", 1.0)
    sd1only = Hypernetwork.create("sd1only", [768, 320], seed=3)
    with pytest.raises(HypernetError, match="match no attention layer"):
        export_lora(generator, [(sd1only, 1.0)], tmp_path / "b.safetensors")
    with pytest.raises(HypernetError, match="single-file checkpoint"):
        bake(generator, tmp_path, entries, tmp_path / "c.safetensors")
    other = save_single_file(tiny_pipeline("sd2"), tmp_path / "sd2.safetensors", "sd2")
    with pytest.raises(HypernetError, match="does not match the loaded model"):
        bake(generator, other, entries, tmp_path / "c.safetensors")
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["sd2.safetensors"]  # nothing half-written
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.slow
def test_cli_export_lora_and_bake(hn_dir, tmp_path, capsys, monkeypatch) -> None:
    ckpt = save_single_file(tiny_pipeline("sd1"), tmp_path / "tiny.safetensors", "sd1")
    monkeypatch.chdir(tmp_path)  # default outputs: models/Lora and models/Stable-diffusion
    main(["export-lora", "lin:0.8", "--model", str(ckpt), "--dir", str(hn_dir), "--check", "0", "--rank", "4"])
    out = capsys.readouterr().out
    assert "method svd" in out and (tmp_path / "models/Lora/lin.safetensors").is_file()
    meta = safetensors.safe_open(tmp_path / "models/Lora/lin.safetensors", "pt").metadata()
    assert meta["hypernet_method"] == "svd rank 4" and meta["hypernet_multiplier"] == "0.8"
    assert '"sha256": "' in meta["hypernet_source"] and meta["ss_network_dim"] == "4"
    main(["bake", str(ckpt), "lin:0.8", "--dir", str(hn_dir), "--check", "0", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "checkpoint" and report["path"] == "models/Stable-diffusion/tiny+lin.safetensors"
    for argv, message in [
        (["export-lora", "lin", "--rank", "4", "--full"], "either --rank R or --full"),
        (["bake", str(ckpt), "swishy", "--dir", str(hn_dir)], "pass --approximate"),
        (["bake", str(tmp_path / "missing.safetensors"), "lin", "--dir", str(hn_dir)], "single-file checkpoint"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
