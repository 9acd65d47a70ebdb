"""The best affine stand-in for a non-linear hypernetwork, fitted on the contexts it really sees.

A LoRA can only change ``to_k``/``to_v`` linearly, so for a network with an activation or layer norm the export
fits, for every attention layer, ``ctx + m·f(ctx) ≈ ctx + D·ctx + d`` by least squares over contexts captured while
sampling with the network applied: the text embeddings of the prompts (cross-attention) and the hidden states of
the UNet's own tokens (self-attention), layer by layer. The fit is optimal in context space, and so also after any
projection (``W_k``, ``W_v``), because the residual is orthogonal to every linear function of the context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import Attention

from hypernet.engine.attention import HypernetworkStack
from hypernet.engine.generate import Generator, Settings
from hypernet.export.deltas import AffineMap, Entries, LayerDelta, attention_layers, layer_delta
from hypernet.network import apply_stack

# Varied subjects, media and lighting, so the fitted text-width map sees more than one kind of prompt.
DEFAULT_PROMPTS = (
    "a portrait photo of an old man with a beard, studio lighting",
    "a watercolor painting of a harbor at sunset",
    "a red sports car on a mountain road, motion blur",
    "an oil painting of a bowl of fruit on a wooden table",
    "a futuristic city skyline at night, neon lights, rain",
    "a cute cat sleeping on a sofa",
    "a medieval castle on a hill, fog, dramatic sky",
    "an anime girl with blue hair, detailed eyes",
    "a pencil sketch of a horse running",
    "a bowl of ramen, food photography",
    "a forest path in autumn, sunlight through the trees",
    "a robot playing chess, digital art",
)


@dataclass
class FitOptions:
    """Where the contexts come from: each prompt is sampled ``seeds`` times for ``steps`` steps."""

    prompts: Sequence[str] = DEFAULT_PROMPTS
    seeds: int = 1
    steps: int = 10
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0
    tokens_per_call: int = 256  # self-attention rows kept per layer call (SD1 at 512 px has 4096)
    ridge: float = 1e-6  # relative to the mean context power: directions never seen stay unchanged


@dataclass
class _Moments:
    """Running sums for the least-squares fit of each branch's effect ``E = f(X) - X`` on ``[X, 1]``."""

    xtx: torch.Tensor
    xte: list[torch.Tensor]
    ete: list[float] = field(default_factory=lambda: [0.0, 0.0])


class ContextRecorder:
    """A forward pre-hook on each layer's ``to_k`` that sees the raw context (before the stack's own hook rewrites
    it) and accumulates that layer's (context, network effect) moments."""

    def __init__(self, stack: HypernetworkStack, tokens_per_call: int, seed: int = 0) -> None:
        self.stack = stack
        self.tokens_per_call = tokens_per_call
        self.moments: dict[int, _Moments] = {}
        self.rng = torch.Generator().manual_seed(seed)

    def hook(self, attn: Attention) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(linear: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            active = self.stack.active(args[0].shape[-1])
            if active:
                self._record(attn, args[0], active)
        return record

    @torch.no_grad()
    def _record(self, attn: Attention, context: torch.Tensor, active: Entries) -> None:
        x = context.reshape(-1, context.shape[-1])
        if x.shape[0] > self.tokens_per_call:
            x = x[torch.randperm(x.shape[0], generator=self.rng)[: self.tokens_per_call].to(x.device)]
        ctx_k, ctx_v = apply_stack(active, x.float())
        x64 = x.double().cpu()
        xa = torch.cat([x64, torch.ones(x64.shape[0], 1, dtype=torch.float64)], dim=1)
        m = self.moments.get(id(attn))
        if m is None:
            n = xa.shape[1]
            m = self.moments[id(attn)] = _Moments(torch.zeros(n, n, dtype=torch.float64),
                                                 [torch.zeros(n, x.shape[1], dtype=torch.float64) for _ in range(2)])
        m.xtx += xa.T @ xa
        for i, y in enumerate((ctx_k, ctx_v)):
            effect = y.double().cpu() - x64
            m.xte[i] += xa.T @ effect
            m.ete[i] += float(effect.square().sum())


def _solve(m: _Moments, ridge: float) -> tuple[list[torch.Tensor], list[float]]:
    """Θ for each branch (``E ≈ [X,1]·Θ``) and the relative residual ``‖E - [X,1]Θ‖ / ‖E‖``."""
    n = m.xtx.shape[0]
    scale = float(m.xtx.diagonal()[:-1].mean()) or 1.0
    regular = m.xtx + ridge * scale * torch.eye(n, dtype=torch.float64)
    thetas, errors = [], []
    for xte, ete in zip(m.xte, m.ete):
        theta = torch.linalg.solve(regular, xte)
        residual = ete - 2 * float((theta * xte).sum()) + float((theta * (m.xtx @ theta)).sum())
        thetas.append(theta)
        errors.append(max(residual, 0.0) ** 0.5 / ete**0.5 if ete > 0 else 0.0)
    return thetas, errors


def fitted_deltas(generator: Generator, entries: Entries, options: FitOptions,
                  progress: Callable[[int, int], None] | None = None) -> list[LayerDelta]:
    """Sample ``options.prompts`` with ``entries`` applied, fit each attention layer's affine map, and return the
    deltas that map makes (with the fit's relative residual per branch in ``fit_error``)."""
    unet = generator.pipe.unet
    recorder = ContextRecorder(generator.stack, options.tokens_per_call)
    layers = attention_layers(unet)
    # prepended, so each hook sees the raw context before the stack's own hook rewrites it
    handles = [attn.to_k.register_forward_pre_hook(recorder.hook(attn), prepend=True) for _, attn in layers]
    total = len(options.prompts) * options.seeds
    try:
        for i, prompt in enumerate(options.prompts):
            for s in range(options.seeds):
                settings = Settings(prompt, steps=options.steps, cfg_scale=options.cfg_scale, width=options.width,
                                    height=options.height, seed=1000 + 97 * i + s)
                generator.generate(settings, extra_networks=entries)
                if progress:
                    progress(i * options.seeds + s + 1, total)
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for name, attn in layers:
        m = recorder.moments.get(id(attn))
        if m is None:
            continue
        (tk, tv), errors = _solve(m, options.ridge)
        affine = AffineMap(dk=tk[:-1].T.contiguous(), bk=tk[-1], dv=tv[:-1].T.contiguous(), bv=tv[-1])
        delta = layer_delta(name, attn, affine)
        delta.fit_error = (errors[0], errors[1])
        out.append(delta)
    return out
