"""The per-model-instance attention processor that feeds hypernetwork-transformed contexts to ``to_k``/``to_v``.

Where A1111 monkey-patches the attention forward globally, hypernet installs one processor object per UNet
instance; the networks and multipliers it applies live on a :class:`HypernetworkStack` the caller owns.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from hypernet.network.hypernetwork import Hypernetwork, apply_stack


@dataclass
class HypernetworkStack:
    """The ordered (network, multiplier) list a model applies now, plus caches that make it nearly free.

    At inference (no grad): a purely linear stack is folded once into each self-attention layer's
    ``to_k``/``to_v`` weights, and a cross-attention text context, identical in every layer of a width and every
    step, is transformed once. Folds survive ``set()`` with the same networks, multipliers and weights (any
    in-place change, e.g. an optimizer step, bumps a tensor version and invalidates them).
    """

    entries: list[tuple[Hypernetwork, float]] = field(default_factory=list)
    _signature: tuple = field(default=(), repr=False)
    _affine: dict[int, tuple[torch.Tensor, ...] | None] = field(default_factory=dict, repr=False)
    _folded: dict[int, tuple[tuple[int, int], tuple[torch.Tensor, ...]]] = field(default_factory=dict, repr=False)
    _text: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def set(self, entries: Sequence[tuple[Hypernetwork, float]], *, dtype: torch.dtype | None = None) -> None:
        """Activate ``entries`` in order. ``dtype`` (e.g. bfloat16) runs the networks in lower precision, faster
        on hardware that has it, at ~1e-3 relative error: only when the user asks; files stay fp32."""
        for hn, _ in entries:
            hn.check_runnable()
        signature = tuple(
            (id(hn), m, hn.training, tuple(p._version for p in hn.parameters())) for hn, m in entries
        ) + (dtype,)
        self._text.clear()
        if signature != self._signature:
            self._signature = signature
            self._affine.clear()
            self._folded.clear()
            if dtype is not None and dtype != torch.float32:
                entries = [(copy.deepcopy(hn).to(dtype), m) for hn, m in entries]
            self.entries = list(entries)

    def clear_caches(self) -> None:
        """Forget folded weights and cached contexts (e.g. after changing weights without an in-place op)."""
        self._signature = ()
        self._affine.clear()
        self._folded.clear()
        self._text.clear()

    def active(self, width: int) -> list[tuple[Hypernetwork, float]]:
        """Entries that change a context of this width (multiplier 0 is the identity, so it is skipped)."""
        return [(hn, m) for hn, m in self.entries if m != 0 and hn.modules_for(width) is not None]

    def affine(self, width: int) -> tuple[torch.Tensor, ...] | None:
        """``(Mk, dk, Mv, dv)`` with ``ctx_k = ctx @ Mk.T + dk`` if every active network is affine, else None."""
        if width not in self._affine:
            maps: list[torch.Tensor] = []
            for i in (0, 1):
                pieces = [hn.modules_for(width)[i].affine() for hn, _ in self.active(width)]  # type: ignore[index]
                if any(p is None for p in pieces):
                    self._affine[width] = None
                    return None
                # x -> x + m (A x + c), composed in stack order; the first map needs no d x d product
                (a0, c0), m0 = pieces[0], self.active(width)[0][1]  # type: ignore[misc]
                eye = torch.eye(width, dtype=a0.dtype, device=a0.device)
                m_total, d_total = eye + m0 * a0, m0 * c0
                for (a, c), (_, mult) in zip(pieces[1:], self.active(width)[1:]):  # type: ignore[misc]
                    m_total, d_total = m_total + mult * (a @ m_total), d_total + mult * (a @ d_total + c)
                maps += [m_total, d_total]
            self._affine[width] = tuple(maps)
        return self._affine[width]

    def folded(self, attn: Attention, width: int) -> tuple[torch.Tensor, ...] | None:
        """``(Wk, bk, Wv, bv)``: this layer's ``to_k``/``to_v`` with the linear stack folded in, made once."""
        if type(attn.to_k) is not torch.nn.Linear or type(attn.to_v) is not torch.nn.Linear:
            return None
        versions = (attn.to_k.weight._version, attn.to_v.weight._version)
        cached = self._folded.get(id(attn))
        if cached is None or cached[0] != versions:
            maps = self.affine(width)
            if maps is None:
                return None
            mk, dk, mv, dv = maps
            fold = []
            for lin, m, d in ((attn.to_k, mk, dk), (attn.to_v, mv, dv)):
                w = lin.weight.detach().float()
                m, d = m.to(w.device, torch.float32), d.to(w.device, torch.float32)
                b = w @ d + (lin.bias.detach().float() if lin.bias is not None else 0)
                fold += [(w @ m).to(lin.weight.dtype), b.to(lin.weight.dtype)]
            cached = self._folded[id(attn)] = (versions, tuple(fold))
        return cached[1]

    def text_contexts(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``apply_stack`` for a cross-attention context, reusing the result while the same tensor comes back."""
        width = context.shape[-1]
        hit = self._text.get(width)
        if hit is not None and hit[0] is context:
            return hit[1], hit[2]
        ctx_k, ctx_v = apply_stack(self.active(width), context)
        self._text[width] = (context, ctx_k, ctx_v)
        return ctx_k, ctx_v


class HypernetworkAttnProcessor:
    """diffusers' SDPA attention with ``k = to_k(hn_k(ctx))`` and ``v = to_v(hn_v(ctx))``; the query is untouched.

    Used on self-attention (context = the block's hidden states, widths 320/640/1280) and cross-attention
    (context = text embedding, 768/1024/2048), exactly where A1111's hook acts.
    """

    def __init__(self, stack: HypernetworkStack) -> None:
        self.stack = stack

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key, value = self._key_value(attn, encoder_hidden_states, is_cross)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attn.upcast_attention and query.dtype in (torch.float16, torch.bfloat16):
            # SD2-768 sets upcast_attention: its half-precision attention overflows into black images otherwise
            query, key, value = query.float(), key.float(), value.float()
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=attn.scale
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(attn.to_q.weight.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


    def _key_value(self, attn: Attention, context: torch.Tensor, is_cross: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = context.shape[-1]
        if not self.stack.active(width):
            return attn.to_k(context), attn.to_v(context)
        if torch.is_grad_enabled():  # training: weights change every step, nothing may be cached
            ctx_k, ctx_v = apply_stack(self.stack.active(width), context)
            return attn.to_k(ctx_k), attn.to_v(ctx_v)
        if is_cross:  # 77 text tokens: transformed once per prompt, cheaper than a fold
            ctx_k, ctx_v = self.stack.text_contexts(context)
            return attn.to_k(ctx_k), attn.to_v(ctx_v)
        fold = self.stack.folded(attn, width)
        if fold is not None:
            wk, bk, wv, bv = fold
            return F.linear(context, wk, bk), F.linear(context, wv, bv)
        ctx_k, ctx_v = apply_stack(self.stack.active(width), context)
        return attn.to_k(ctx_k), attn.to_v(ctx_v)


def attention_widths(model: torch.nn.Module) -> dict[int, int]:
    """How many attention layers of ``model`` take a context of each width (what a hypernetwork module can hit)."""
    counts: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            counts[module.to_k.in_features] = counts.get(module.to_k.in_features, 0) + 1
    return counts


def install_hypernetworks(model: torch.nn.Module, stack: HypernetworkStack | None = None) -> HypernetworkStack:
    """Give every attention layer of ``model`` (a UNet, or a single Attention) a processor reading ``stack``.

    Only this instance changes; no class is patched. Returns the stack to ``set()`` networks on.
    """
    stack = stack if stack is not None else HypernetworkStack()
    processor = HypernetworkAttnProcessor(stack)
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)
    return stack
