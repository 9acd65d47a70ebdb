"""The per-model-instance attention processor that feeds hypernetwork-transformed contexts to ``to_k``/``to_v``.

Where A1111 monkey-patches the attention forward globally, hypernet installs one processor object per UNet
instance; the networks and multipliers it applies live on a :class:`HypernetworkStack` the caller owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from hypernet.network.hypernetwork import Hypernetwork, apply_stack


@dataclass
class HypernetworkStack:
    """The ordered (network, multiplier) list a model applies now; empty means "plain model"."""

    entries: list[tuple[Hypernetwork, float]] = field(default_factory=list)

    def set(self, entries: Sequence[tuple[Hypernetwork, float]]) -> None:
        for hn, _ in entries:
            hn.check_runnable()
        self.entries = list(entries)


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
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        ctx_k, ctx_v = apply_stack(self.stack.entries, encoder_hidden_states)
        key = attn.to_k(ctx_k)
        value = attn.to_v(ctx_v)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=attn.scale
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


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
