"""The attention processor: A1111 semantics, and the fast paths (folding, text-context cache) equal the plain path."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from hypernet import Hypernetwork, apply_stack
from hypernet.engine.attention import HypernetworkAttnProcessor, install_hypernetworks


def attention(query_dim: int, context_dim: int | None, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=query_dim, cross_attention_dim=context_dim, heads=2, dim_head=8).eval()
    return attn


def reference(attn: Attention, x: torch.Tensor, ctx: torch.Tensor | None, stack) -> torch.Tensor:
    """A1111's computation written out: q = to_q(x); k/v from the hypernetwork-transformed context."""
    context = x if ctx is None else ctx
    ck, cv = apply_stack(stack, context)
    q, k, v = attn.to_q(x), attn.to_k(ck), attn.to_v(cv)
    b, h = x.shape[0], attn.heads
    q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
    w = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
    out = (w @ v).transpose(1, 2).reshape(b, -1, h * q.shape[-1])
    return attn.to_out[0](out)


def nets(kind: str) -> list[tuple[Hypernetwork, float]]:
    widths = (16, 24)
    if kind == "linear":
        return [(Hypernetwork.create("a", widths, weight_init="XavierNormal", seed=1), 0.8)]
    if kind == "linear-stack":
        deep = Hypernetwork.create("b", widths, layer_structure=(1, 2, 0.5, 1), weight_init="XavierUniform", seed=2)
        with_dropout = Hypernetwork.create("c", widths, dropout_structure=(0, 0.3, 0), weight_init="XavierNormal", seed=3)
        return [(deep, 0.5), (with_dropout, -0.7)]
    return [
        (Hypernetwork.create("s", widths, activation_func="swish", add_layer_norm=True, weight_init="XavierNormal", seed=4), 0.6),
        (Hypernetwork.create("l", widths, weight_init="XavierNormal", seed=5), 1.3),
    ]


@pytest.mark.parametrize("kind", ["linear", "linear-stack", "nonlinear"])
@pytest.mark.parametrize("cross", [True, False])
def test_processor_matches_a1111_semantics(kind: str, cross: bool) -> None:
    attn = attention(16, 24 if cross else None)
    x = torch.randn(2, 10, 16)
    ctx = torch.randn(2, 7, 24) if cross else None
    stack_entries = nets(kind)
    stack = install_hypernetworks(attn)
    stack.set(stack_entries)
    with torch.no_grad():
        fast = attn(x, encoder_hidden_states=ctx)
        want = reference(attn, x, ctx, stack_entries)
    torch.testing.assert_close(fast, want, atol=2e-5, rtol=1e-5)
    # with grad enabled (training) the plain path runs; same numbers
    stack.clear_caches()
    slow = attn(x, encoder_hidden_states=ctx)
    torch.testing.assert_close(slow.detach(), want, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(want, reference(attn, x, ctx, []), atol=1e-3)


def test_linear_networks_are_folded_once_and_never_run_per_call() -> None:
    attn = attention(16, None)  # self-attention: every latent token, where folding pays
    entries = nets("linear-stack")
    stack = install_hypernetworks(attn)
    stack.set(entries)
    calls = []
    for hn, _ in entries:
        for module in hn.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        for _ in range(3):
            attn(torch.randn(2, 5, 16))
        folded = stack._folded[id(attn)]
        stack.set(entries)  # the next generation with the same networks keeps the fold
        attn(torch.randn(2, 5, 16))
        assert stack._folded[id(attn)] is folded
    assert calls == []


def test_fold_follows_weight_changes() -> None:
    attn = attention(16, None)
    entries = nets("linear")
    stack = install_hypernetworks(attn)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        stack.set(entries)
        before = attn(x)
        for p in entries[0][0].parameters():  # e.g. an optimizer step between previews
            p.mul_(1.5)
        stack.set(entries)
        after = attn(x)
        torch.testing.assert_close(after, reference(attn, x, None, entries), atol=2e-5, rtol=1e-5)
        attn.to_k.weight.mul_(0.5)  # the model's own weights changed
        torch.testing.assert_close(attn(x), reference(attn, x, None, entries), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(before, after)


def test_text_context_is_transformed_once_per_prompt() -> None:
    layers = [attention(16, 24, seed=i) for i in range(3)]
    model = torch.nn.ModuleList(layers)
    entries = nets("nonlinear")
    stack = install_hypernetworks(model)
    stack.set(entries)
    counted = []
    entries[0][0].modules_for(24)[0].register_forward_hook(lambda *a: counted.append(1))
    ctx = torch.randn(2, 7, 24)
    with torch.no_grad():
        for _step in range(4):
            for layer in layers:
                layer(torch.randn(2, 5, 16), encoder_hidden_states=ctx)
        assert len(counted) == 1
        layers[0](torch.randn(2, 5, 16), encoder_hidden_states=torch.randn(2, 7, 24))  # a new prompt
        assert len(counted) == 2


def test_multiplier_zero_and_empty_stack_are_exactly_plain() -> None:
    attn = attention(16, 24)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        plain = attn(x, encoder_hidden_states=ctx)
        stack = install_hypernetworks(attn)
        assert torch.equal(attn(x, encoder_hidden_states=ctx), plain)
        stack.set([(hn, 0.0) for hn, _ in nets("nonlinear")])
        assert torch.equal(attn(x, encoder_hidden_states=ctx), plain)


def test_install_is_per_instance() -> None:
    a, b = attention(16, 24), attention(16, 24)
    install_hypernetworks(a)
    assert isinstance(a.processor, HypernetworkAttnProcessor)
    assert not isinstance(b.processor, HypernetworkAttnProcessor)


def test_half_precision_model_keeps_fp32_networks() -> None:
    attn = attention(16, 24).to(torch.bfloat16)
    entries = nets("nonlinear")
    stack = install_hypernetworks(attn)
    stack.set(entries)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        out = attn(x.bfloat16(), encoder_hidden_states=ctx.bfloat16())
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for hn, _ in entries for p in hn.parameters())
    want = reference(attention(16, 24), x, ctx, entries)
    torch.testing.assert_close(out.float(), want, atol=0.1, rtol=0.05)


def test_low_precision_networks_when_asked() -> None:
    attn = attention(16, 24)
    entries = nets("nonlinear")
    stack = install_hypernetworks(attn)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        stack.set(entries, dtype=torch.bfloat16)
        low = attn(x, encoder_hidden_states=ctx)
        copies = stack.entries
        stack.set(entries, dtype=torch.bfloat16)
        assert stack.entries is copies, "the low-precision copies are made once, not per generation"
        assert all(p.dtype == torch.float32 for hn, _ in entries for p in hn.parameters()), "originals stay fp32"
        assert all(p.dtype == torch.bfloat16 for hn, _ in copies for p in hn.parameters())
        want = reference(attn, x, ctx, entries)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, want, atol=0.05, rtol=0.02)
    assert not torch.equal(low, want)


def test_upcast_attention_runs_softmax_in_fp32_for_half_models() -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=24, heads=2, dim_head=8, upcast_attention=True).eval()
    install_hypernetworks(attn).set(nets("nonlinear"))
    x, ctx = torch.randn(2, 5, 16) * 30, torch.randn(2, 7, 24) * 30  # large activations, as in SD2-768
    with torch.no_grad():
        want = attn(x, encoder_hidden_states=ctx)
        half = attn.to(torch.bfloat16)(x.bfloat16(), encoder_hidden_states=ctx.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), want, atol=0.5, rtol=0.1)
