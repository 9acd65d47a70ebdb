"""Every case of ../shared/conformance (made by A1111's own code) at the manifest's tolerances."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file

import hypernet
from hypernet.engine.attention import install_hypernetworks

CONFORMANCE = Path(os.environ.get("HYPERNET_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "conformance"
MANIFEST = json.loads((CONFORMANCE / "manifest.json").read_text()) if (CONFORMANCE / "manifest.json").exists() else {}
FILES = MANIFEST.get("hypernetwork_files", {})
LOADABLE = [name for name, e in FILES.items() if e["a1111_load"] == "ok"]
FAILING = [name for name, e in FILES.items() if e["a1111_load"] != "ok"]


@pytest.fixture(scope="module")
def inputs(conformance_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(conformance_dir / "inputs.safetensors")


def _load(conformance_dir: Path, name: str) -> hypernet.Hypernetwork:
    return hypernet.load_hypernetwork(conformance_dir / FILES[name]["file"])


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: dict) -> None:
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"])


def test_manifest_is_complete(conformance_dir: Path) -> None:
    assert len(LOADABLE) >= 30 and FAILING, "the conformance manifest was not found or is incomplete"


@pytest.mark.parametrize("name", LOADABLE)
def test_loaded_attributes_match_a1111(conformance_dir: Path, name: str) -> None:
    entry = FILES[name]
    hn = _load(conformance_dir, name)
    want = entry["loaded_attributes"]
    got = {
        "name": hn.name,
        "step": hn.step,
        "layer_structure": hn.arch.layer_structure,
        "activation_func": hn.arch.activation_func,
        "weight_init": hn.arch.weight_init,
        "add_layer_norm": hn.arch.add_layer_norm,
        "use_dropout": hn.arch.use_dropout,
        "activate_output": hn.arch.activate_output,
        "last_layer_dropout": hn.arch.last_layer_dropout,
        "dropout_structure": hn.arch.dropout_structure,
        "sd_checkpoint": hn.sd_checkpoint,
        "sd_checkpoint_name": hn.sd_checkpoint_name,
        "optional_info": hn.optional_info,
        "optimizer_name": hn.optimizer_name,
    }
    assert got == want
    for width, layout in entry["loaded_layout"].items():
        k, v = hn.modules_for(int(width))
        for module in (k, v):
            assert [str(layer) for layer in module.linear] == layout["sequential"]
            assert module.training is layout["training"]


@pytest.mark.parametrize("name", [n for n in LOADABLE if FILES[n]["expected"]["tensors"]])
def test_module_outputs_and_single_network_path(conformance_dir: Path, inputs: dict, name: str) -> None:
    entry = FILES[name]
    expected = load_file(conformance_dir / entry["expected"]["file"])
    tol = entry["expected"]["tolerance"]
    hn = _load(conformance_dir, name)
    with torch.no_grad():
        for tensor_name in entry["expected"]["tensors"]:
            kind, which, dim, *rest = tensor_name.split(".", 3)
            ctx = inputs[f"ctx.{dim}"]
            if kind == "out":
                multiplier = float(rest[0].removeprefix("m"))
                k_mod, v_mod = hn.modules_for(int(dim[1:]))
                actual = (k_mod if which == "k" else v_mod)(ctx, multiplier)
            else:  # "apply": what A1111 computes for <hypernet:NAME:0.75>
                apply = entry["expected"]["apply"]
                ((loaded_name, multiplier),) = apply["loaded"]
                assert loaded_name == hn.name
                actual = hn.apply(ctx, multiplier)[0 if which == "k" else 1]
            _close(actual, expected[tensor_name], tol)
        apply = entry["expected"]["apply"] or {"passthrough_dims": []}
        for dim in apply["passthrough_dims"]:
            ctx = inputs[f"ctx.d{dim}"]
            k, v = hn.apply(ctx, apply["multiplier"])
            assert torch.equal(k, ctx) and torch.equal(v, ctx)


@pytest.mark.parametrize("name", [n for n in LOADABLE if FILES[n].get("forward_errors")])
def test_networks_a1111_cannot_run_give_a_clear_error(conformance_dir: Path, inputs: dict, name: str) -> None:
    hn = _load(conformance_dir, name)
    with pytest.raises(hypernet.HypernetError, match=hn.arch.activation_func):
        hn.apply(inputs[f"ctx.d{hn.widths[0]}"])


@pytest.mark.parametrize("name", FAILING)
def test_files_a1111_cannot_load_are_refused_naming_file_and_keys(conformance_dir: Path, name: str) -> None:
    entry = FILES[name]
    with pytest.raises(hypernet.HypernetError) as err:
        _load(conformance_dir, name)
    message = str(err.value)
    assert Path(entry["file"]).name in message
    for key in ("linear.5.weight", "linear.6.weight"):
        assert (key in message) == (key in entry["a1111_load_error"])


@pytest.mark.parametrize("stack_name", list(MANIFEST.get("stacks", {})))
def test_stacks(conformance_dir: Path, inputs: dict, stack_name: str) -> None:
    entry = MANIFEST["stacks"][stack_name]
    expected = load_file(conformance_dir / entry["file"])
    stack = [(_load(conformance_dir, e["name"]), e["multiplier"]) for e in entry["shared_loaded_hypernetworks"]]
    with torch.no_grad():
        for dim in entry["dims"]:
            k, v = hypernet.apply_stack(stack, inputs[f"ctx.d{dim}"])
            _close(k, expected[f"stack.k.d{dim}"], entry["tolerance"])
            _close(v, expected[f"stack.v.d{dim}"], entry["tolerance"])


@pytest.mark.parametrize("case_name", list(MANIFEST.get("attention", {})))
def test_attention_through_a_real_attention_layer(conformance_dir: Path, inputs: dict, case_name: str) -> None:
    case = MANIFEST["attention"][case_name]
    spec = case["cross_attention"]
    expected = load_file(conformance_dir / case["file"])
    attn = Attention(
        query_dim=spec["query_dim"],
        cross_attention_dim=spec["context_dim"],
        heads=spec["heads"],
        dim_head=spec["dim_head"],
        out_bias=True,
    ).eval()
    assert attn.scale == pytest.approx(spec["scale"])
    weights = {k.removeprefix("attn_weights."): t for k, t in expected.items() if k.startswith("attn_weights.")}
    attn.load_state_dict(weights, strict=True)
    stack = install_hypernetworks(attn)
    x = inputs[case["x"]]
    context = inputs[case["context"]] if case["context"] else None
    with torch.no_grad():
        _close(attn(x, encoder_hidden_states=context), expected["attn_out.no_hypernetwork"], case["tolerance"])
        stack.set([(_load(conformance_dir, n), m) for n, m in case["shared_loaded_hypernetworks"]])
        out = attn(x, encoder_hidden_states=context)
    _close(out, expected["attn_out.with_hypernetworks"], case["tolerance"])
    assert not torch.allclose(out, expected["attn_out.no_hypernetwork"], atol=1e-3)
