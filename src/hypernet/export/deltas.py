"""The weight changes that reproduce a hypernetwork inside the UNet's own attention weights.

A hypernetwork rewrites an attention layer's key and value contexts: ``k = W_k·(ctx + m·f_k(ctx))``. When ``f`` is
affine (only Linear layers), ``ctx + m·f(ctx) = ctx + D·ctx + d`` and

- ``to_k`` gains ``ΔW_k = W_k·D_k``; its bias ``W_k·d_k`` is the same for every token, so it shifts every score of a
  query by one constant and cancels in the softmax (Stable Diffusion's attention has no mask): it is dropped;
- ``to_v`` gains ``ΔW_v = W_v·D_v``; its bias ``W_v·d_v`` passes through attention unchanged (each query's weights
  sum to 1) and becomes ``Δb = W_out·W_v·d_v`` on ``to_out.0``.

Chained networks compose to one affine map. A non-affine network (activation, layer norm) has no such map; its
best affine stand-in is fitted elsewhere (:mod:`hypernet.export.fit`) and goes through the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention

from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork

Entries = Sequence[tuple[Hypernetwork, float]]


@dataclass
class AffineMap:
    """``ctx_k = ctx + Dk·ctx + dk`` and ``ctx_v = ctx + Dv·ctx + dv`` (float64) for one attention layer's context."""

    dk: torch.Tensor
    bk: torch.Tensor
    dv: torch.Tensor
    bv: torch.Tensor


@dataclass
class LayerDelta:
    """What one attention layer (diffusers path ``module``) needs so that it acts as if the networks were applied."""

    module: str
    width: int
    key: torch.Tensor  # ΔW of to_k, float64 (out x in)
    value: torch.Tensor  # ΔW of to_v
    out_bias: torch.Tensor  # Δb of to_out.0
    dropped_key_bias: float  # ‖W_k·d_k‖: cancels in the softmax, so leaving it out changes nothing
    fit_error: tuple[float, float] | None = None  # approximations only: relative residual of the (k, v) linear fit


def nonlinear_reason(net: Hypernetwork) -> str | None:
    """Why ``net`` is not an affine map of its context (so cannot be folded exactly), or None if it is."""
    for width in net.widths:
        for module in net.modules_for(width) or ():
            if module.affine() is None:
                a = net.arch
                if a.activation_func not in (None, "linear"):
                    return f"its activation {a.activation_func!r} is not linear"
                if a.add_layer_norm:
                    return "its layer norm is not an affine function of the context"
                return "it has layers other than Linear ones"
    return None


def compose_affine(entries: Entries, width: int) -> AffineMap | None:
    """The stack's map at ``width`` in float64, composed in stack order as ``apply_stack`` chains them; None if no
    network acts at this width. Raises HypernetError naming the network if one is not affine."""
    maps: list[torch.Tensor] = []
    active = [(net, m) for net, m in entries if m != 0 and net.modules_for(width) is not None]
    if not active:
        return None
    for branch in (0, 1):
        delta = torch.zeros(width, width, dtype=torch.float64)
        shift = torch.zeros(width, dtype=torch.float64)
        for net, m in active:
            piece = net.modules_for(width)[branch].affine()  # type: ignore[index]
            if piece is None:
                raise HypernetError(
                    f"hypernetwork {net.name!r} cannot be folded exactly: {nonlinear_reason(net)}; "
                    "use an approximation (--rank with a fitted export, or bake --approximate)."
                )
            a, c = piece[0].double().cpu(), piece[1].double().cpu()
            # x -> x + m(A x + c) applied to (I + delta) x + shift
            delta, shift = delta + m * (a + a @ delta), shift + m * (a @ shift + c)
        maps += [delta, shift]
    return AffineMap(*maps)


def attention_layers(unet: torch.nn.Module) -> list[tuple[str, Attention]]:
    """Every attention module of ``unet`` with its diffusers path: where hypernetworks act."""
    return [(name, module) for name, module in unet.named_modules() if isinstance(module, Attention)]


def layer_delta(name: str, attn: Attention, affine: AffineMap) -> LayerDelta:
    """The to_k/to_v weight deltas and the to_out.0 bias of one layer for an affine context map."""
    wk = attn.to_k.weight.detach().to("cpu", torch.float64)
    wv = attn.to_v.weight.detach().to("cpu", torch.float64)
    wout = attn.to_out[0].weight.detach().to("cpu", torch.float64)
    return LayerDelta(
        module=name,
        width=attn.to_k.in_features,
        key=wk @ affine.dk,
        value=wv @ affine.dv,
        out_bias=wout @ (wv @ affine.bv),
        dropped_key_bias=float((wk @ affine.bk).norm()),
    )


def exact_deltas(unet: torch.nn.Module, entries: Entries) -> list[LayerDelta]:
    """Exact deltas for linear networks (a HypernetError names any network that is not linear)."""
    for net, _ in entries:
        net.check_runnable()
    maps: dict[int, AffineMap | None] = {}
    out = []
    for name, attn in attention_layers(unet):
        width = attn.to_k.in_features
        if width not in maps:
            maps[width] = compose_affine(entries, width)
        if maps[width] is not None:
            out.append(layer_delta(name, attn, maps[width]))  # type: ignore[arg-type]
    if not out:
        names = ", ".join(net.name for net, _ in entries)
        raise HypernetError(f"hypernetwork(s) {names} match no attention layer of this model (wrong model family?).")
    return out


@dataclass
class Factor:
    """``ΔW ≈ up @ down`` of rank ``rank``, with the relative (Frobenius) error of that approximation."""

    up: torch.Tensor
    down: torch.Tensor
    rank: int
    error: float


def factorize(delta: torch.Tensor, rank: int | None) -> Factor:
    """Best rank-``rank`` approximation (SVD); ``rank=None`` keeps the numerical rank, i.e. the exact delta."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    total = float(s.square().sum())
    if rank is None:
        tol = float(s.max()) * max(delta.shape) * torch.finfo(torch.float64).eps if len(s) else 0.0
        rank = max(1, int((s > tol).sum()))
    rank = max(1, min(rank, len(s)))
    root = s[:rank].sqrt()  # split the singular values evenly: both factors stay in fp16's range
    error = math.sqrt(float(s[rank:].square().sum()) / total) if total > 0 else 0.0
    return Factor(up=u[:, :rank] * root, down=root[:, None] * vh[:rank], rank=rank, error=error)

