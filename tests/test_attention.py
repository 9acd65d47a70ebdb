"""The network stack: A1111 semantics through to_k/to_v hooks, fast paths equal the plain path, a scoped lifecycle."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from hypernet import Hypernetwork, apply_stack
from hypernet.engine.attention import install_hypernetworks, uninstall_hypernetworks


def attention(query_dim: int, context_dim: int | None, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=query_dim, cross_attention_dim=context_dim, heads=2, dim_head=8).eval()
    return attn


def reference(attn: Attention, x: torch.Tensor, ctx: torch.Tensor | None, stack) -> torch.Tensor:
    """A1111's computation written out: q = to_q(x); k/v from the hypernetwork-transformed context.

    ``attn`` must be a layer without hypernetwork hooks (a copy made before installing)."""
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
@pytest.mark.parametrize("processor", [AttnProcessor2_0, AttnProcessor])
def test_hooks_match_a1111_semantics_under_any_processor(kind: str, cross: bool, processor: type) -> None:
    attn = attention(16, 24 if cross else None)
    twin = copy.deepcopy(attn)
    attn.set_processor(processor())  # the model's own processor stays; the hooks compose with it
    x = torch.randn(2, 10, 16)
    ctx = torch.randn(2, 7, 24) if cross else None
    stack_entries = nets(kind)
    stack = install_hypernetworks(attn)
    with stack.applied(stack_entries):
        with torch.no_grad():
            fast = attn(x, encoder_hidden_states=ctx)
            want = reference(twin, x, ctx, stack_entries)
        torch.testing.assert_close(fast, want, atol=2e-5, rtol=1e-5)
        slow = attn(x, encoder_hidden_states=ctx)  # grad enabled (training): the networks run, nothing folded
        torch.testing.assert_close(slow.detach(), want, atol=2e-5, rtol=1e-5)
    assert isinstance(attn.processor, processor)
    assert not torch.allclose(want, reference(twin, x, ctx, []), atol=1e-3)


def test_linear_networks_are_folded_once_and_kept_for_the_next_scope() -> None:
    attn = attention(16, None)  # self-attention: every latent token, where folding pays
    own = (attn.to_k.weight, attn.to_v.weight)
    entries = nets("linear-stack")
    stack = install_hypernetworks(attn)
    calls = []
    for hn, _ in entries:
        for module in hn.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        with stack.applied(entries):
            for _ in range(3):
                attn(torch.randn(2, 5, 16))
            folded = (attn.to_k.weight, attn.to_v.weight)
            assert folded[0] is not own[0]
        assert (attn.to_k.weight, attn.to_v.weight) == own, "the layer's own weights are back after the scope"
        with stack.applied(entries):  # the next generation with the same networks reuses the fold
            attn(torch.randn(2, 5, 16))
            assert attn.to_k.weight is folded[0] and attn.to_v.weight is folded[1]
    assert calls == []


def test_few_calls_apply_the_network_instead_of_folding() -> None:
    attn = attention(16, None)
    twin = copy.deepcopy(attn)
    own = attn.to_k.weight
    entries = nets("linear")
    stack = install_hypernetworks(attn)
    x = torch.randn(1, 2, 16)  # 2 tokens, one call: folding a 16x16 layer would cost more than applying
    with torch.no_grad(), stack.applied(entries, expected_calls=1):
        out = attn(x)
        assert attn.to_k.weight is own
    torch.testing.assert_close(out, reference(twin, x, None, entries), atol=2e-5, rtol=1e-5)


def test_a_short_scope_applies_the_composed_map_and_a_repeated_network_earns_its_fold() -> None:
    """Rent or buy: 3 tokens x 4 calls (12 < the layer's 16 outputs) take the composed map (not the networks, not a
    fold); the second scope with the same networks has seen 24 tokens, so the fold has paid off and is made."""
    attn = attention(16, None)
    twin = copy.deepcopy(attn)
    own = (attn.to_k.weight, attn.to_v.weight)
    entries = nets("linear")
    calls = []
    for hn, _ in entries:
        for module in hn.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda *a: calls.append(1))
    stack = install_hypernetworks(attn)
    x = torch.randn(1, 3, 16)
    want = reference(twin, x, None, entries)
    calls.clear()
    with torch.no_grad():
        with stack.applied(entries, expected_calls=4):
            for _ in range(4):
                torch.testing.assert_close(attn(x), want, atol=2e-5, rtol=1e-5)
                assert (attn.to_k.weight, attn.to_v.weight) == own, "a short scope does not fold"
        assert calls == [], "the composed map runs, not the networks"
        with stack.applied(entries, expected_calls=4):
            torch.testing.assert_close(attn(x), want, atol=2e-5, rtol=1e-5)
            assert attn.to_k.weight is not own[0] and attn.to_v.weight is not own[1], "the second scope folds"
        assert (attn.to_k.weight, attn.to_v.weight) == own
        other = [(Hypernetwork.create("z", (16, 24), weight_init="XavierNormal", seed=9), 0.5)]
        with stack.applied(other, expected_calls=4):  # other networks: their tokens start from zero again
            torch.testing.assert_close(attn(x), reference(twin, x, None, other), atol=2e-5, rtol=1e-5)
            assert (attn.to_k.weight, attn.to_v.weight) == own


def test_applied_restores_the_previous_networks() -> None:
    attn = attention(16, 24)
    twin = copy.deepcopy(attn)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    outer, inner = nets("linear"), nets("nonlinear")
    stack = install_hypernetworks(attn)
    with torch.no_grad():
        plain = attn(x, encoder_hidden_states=ctx)
        with stack.applied(outer):
            with stack.applied(inner):
                torch.testing.assert_close(attn(x, encoder_hidden_states=ctx), reference(twin, x, ctx, inner))
            torch.testing.assert_close(attn(x, encoder_hidden_states=ctx), reference(twin, x, ctx, outer))
        assert torch.equal(attn(x, encoder_hidden_states=ctx), plain)


def test_uninstall_restores_the_model() -> None:
    attn = attention(16, None)
    processor, own = attn.processor, attn.to_k.weight
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = attn(x)
        stack = install_hypernetworks(attn)
        stack.set(nets("linear"))
        changed = attn(x)
        uninstall_hypernetworks(attn)
        assert torch.equal(attn(x), plain)
    assert not torch.equal(changed, plain)
    assert attn.processor is processor and attn.to_k.weight is own
    assert not attn.to_k._forward_pre_hooks and not attn.to_v._forward_pre_hooks


def test_fold_follows_weight_changes() -> None:
    attn = attention(16, None)
    twin = copy.deepcopy(attn)
    entries = nets("linear")
    stack = install_hypernetworks(attn)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        with stack.applied(entries):
            before = attn(x)
        for p in entries[0][0].parameters():  # e.g. an optimizer step between previews
            p.mul_(1.5)
        with stack.applied(entries):
            after = attn(x)
            torch.testing.assert_close(after, reference(twin, x, None, entries), atol=2e-5, rtol=1e-5)
        attn.to_k.weight.mul_(0.5)  # the model's own weights changed
        twin.to_k.weight.mul_(0.5)
        with stack.applied(entries):
            torch.testing.assert_close(attn(x), reference(twin, x, None, entries), atol=2e-5, rtol=1e-5)
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
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        plain_b = b(x, encoder_hidden_states=ctx)
        install_hypernetworks(a).set(nets("nonlinear"))
        assert torch.equal(b(x, encoder_hidden_states=ctx), plain_b)
    assert not b.to_k._forward_pre_hooks


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
    twin = copy.deepcopy(attn)
    entries = nets("nonlinear")
    stack = install_hypernetworks(attn)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        with stack.applied(entries, dtype=torch.bfloat16):
            low = attn(x, encoder_hidden_states=ctx)
            copies = stack.entries
        with stack.applied(entries, dtype=torch.bfloat16):
            again = stack.entries
        assert all(a is b for (a, _), (b, _) in zip(again, copies)), "the copies are made once, not per generation"
        assert all(p.dtype == torch.float32 for hn, _ in entries for p in hn.parameters()), "originals stay fp32"
        assert all(p.dtype == torch.bfloat16 for hn, _ in copies for p in hn.parameters())
        want = reference(twin, x, ctx, entries)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, want, atol=0.05, rtol=0.02)
    assert not torch.equal(low, want)
