"""The network stack: hypernetworks rewrite the inputs of ``to_k``/``to_v``, whatever attention processor runs.

A1111 computes ``k = to_k(hn_k(context))`` and ``v = to_v(hn_v(context))`` in every attention layer (self-attention:
the context is the block's hidden states; cross-attention: the text embedding). hypernet does exactly that through
forward pre-hooks on each layer's ``to_k`` and ``to_v`` (as ComfyUI's attn1/attn2 patches transform k/v inputs), so
the model keeps its own processor (SDPA, xformers, IP-Adapter, LoRA through PEFT ...) and no class is patched.

Two shortcuts make inference nearly free, chosen per layer and never during training (grad enabled):

* a purely linear stack is *folded*: for the duration of a scope the layer's ``to_k``/``to_v`` parameters are
  swapped for ``W @ M`` and ``W @ d + b`` (made in float32), when making them costs less than applying the map to
  every token of every call (the caller says how many calls to expect); folds are kept for the next scope with the
  same networks, multipliers and weights, so a server pays them once;
* a cross-attention text context, identical in every layer of a width and every step, is transformed once.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from torch.utils.hooks import RemovableHandle

from hypernet.network.hypernetwork import Hypernetwork, apply_stack

Entries = Sequence[tuple[Hypernetwork, float]]


@dataclass(frozen=True)
class _Signature:
    """What a fold depends on: the networks (held, so their ids cannot be reused), multipliers, modes, weights."""

    networks: tuple[Hypernetwork, ...]
    multipliers: tuple[float, ...]
    state: tuple[tuple[bool, tuple[int, ...]], ...]
    dtype: torch.dtype | None

    @classmethod
    def of(cls, entries: Entries, dtype: torch.dtype | None) -> _Signature:
        return cls(
            tuple(hn for hn, _ in entries),
            tuple(m for _, m in entries),
            tuple((hn.training, tuple(p._version for p in hn.parameters())) for hn, _ in entries),
            dtype,
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Signature)
            and len(self.networks) == len(other.networks)
            and all(a is b for a, b in zip(self.networks, other.networks))
            and (self.multipliers, self.state, self.dtype) == (other.multipliers, other.state, other.dtype)
        )

    def __hash__(self) -> int:
        return hash((tuple(map(id, self.networks)), self.multipliers, self.state, self.dtype))


@dataclass
class _Fold:
    signature: _Signature
    base: tuple[int, torch.nn.Parameter, torch.nn.Parameter | None]  # (weight version, weight, bias) it was made from
    weight: torch.nn.Parameter
    bias: torch.nn.Parameter


class HypernetworkStack:
    """The ordered (network, multiplier) list one model applies, with the hooks and caches that apply it.

    Made by :func:`install_hypernetworks`; ``with stack.applied(entries):`` activates networks for a scope and
    restores what was there before, so a generation inside a training run leaves the run's network in place.
    """

    def __init__(self, layers: Sequence[Attention] = ()) -> None:
        # (to_k, to_v, is cross-attention) of each layer: hooked while networks are active, never otherwise, so a
        # model with nothing applied runs exactly its own code
        self._layers = [(a.to_k, a.to_v, bool(a.is_cross_attention)) for a in layers]
        self.entries: list[tuple[Hypernetwork, float]] = []
        self._signature = _Signature.of([], None)
        self._expected_calls: int | None = None  # forward calls the current scope expects; None: many
        self._handles: list[RemovableHandle] = []
        self._affine: dict[int, tuple[torch.Tensor, ...] | None] = {}
        self._text: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._folds: weakref.WeakKeyDictionary[torch.nn.Linear, _Fold] = weakref.WeakKeyDictionary()
        self._swapped: dict[torch.nn.Linear, tuple[torch.nn.Parameter, torch.nn.Parameter | None]] = {}
        self._declined: set[torch.nn.Linear] = set()  # layers this scope applies by tokens instead of folding
        self._low_precision: tuple[_Signature, list[tuple[Hypernetwork, float]]] | None = None  # dtype copies

    # ------------------------------------------------------------------ lifecycle
    def set(self, entries: Entries, *, dtype: torch.dtype | None = None, expected_calls: int | None = None) -> None:
        """Activate ``entries`` in order until the next ``set``. ``dtype`` (e.g. bfloat16) runs the networks in lower
        precision, faster on hardware that has it, at ~1e-3 relative error: only when the user asks; files stay
        fp32. ``expected_calls`` (e.g. sampling steps) lets each layer choose between folding and applying."""
        for hn, _ in entries:
            hn.check_runnable()
        self._restore_weights()
        self._text.clear()
        self._declined.clear()
        self._expected_calls = expected_calls
        signature = _Signature.of(entries, dtype)
        if signature != self._signature:
            self._signature = signature
            self._affine.clear()
            if dtype is not None and dtype != torch.float32:
                if self._low_precision is None or self._low_precision[0] != signature:
                    self._low_precision = (signature, [(copy.deepcopy(hn).to(dtype), m) for hn, m in entries])
                entries = self._low_precision[1]
            self.entries = list(entries)
        self._hook(bool(self.entries))

    @contextlib.contextmanager
    def applied(
        self, entries: Entries, *, dtype: torch.dtype | None = None, expected_calls: int | None = None
    ) -> Iterator[HypernetworkStack]:
        """Apply ``entries`` inside the ``with`` block; afterwards the previous entries apply again and every
        layer has its own weights back (folds are kept for the next scope with the same networks)."""
        previous = (list(self.entries), self._signature, self._expected_calls)
        self.set(entries, dtype=dtype, expected_calls=expected_calls)
        try:
            yield self
        finally:
            self._restore_weights()
            self._text.clear()
            self._declined.clear()
            self.entries, self._signature, self._expected_calls = previous
            self._affine.clear()
            self._hook(bool(self.entries))

    def clear_caches(self) -> None:
        """Forget folds and cached contexts (e.g. after changing weights without an in-place op)."""
        self._restore_weights()
        self._folds.clear()
        self._affine.clear()
        self._text.clear()
        self._declined.clear()
        self._low_precision = None

    def uninstall(self) -> None:
        """Remove every hook and give each layer its own weights back; the model is as it was before install."""
        self.clear_caches()
        self.entries = []
        self._signature = _Signature.of([], None)
        self._hook(False)
        self._layers = []

    def _hook(self, on: bool) -> None:
        if on and not self._handles:
            for to_k, to_v, cross in self._layers:
                self._handles.append(to_k.register_forward_pre_hook(_ContextHook(self, cross, 0)))
                self._handles.append(to_v.register_forward_pre_hook(_ContextHook(self, cross, 1)))
        elif not on:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    # ------------------------------------------------------------------ what the hooks compute
    def active(self, width: int) -> list[tuple[Hypernetwork, float]]:
        """Entries that change a context of this width (multiplier 0 is the identity, so it is skipped)."""
        return [(hn, m) for hn, m in self.entries if m != 0 and hn.modules_for(width) is not None]

    def affine(self, width: int) -> tuple[torch.Tensor, ...] | None:
        """``(Mk, dk, Mv, dv)`` with ``ctx_k = ctx @ Mk.T + dk`` if every active network is affine, else None."""
        if width not in self._affine:
            active = self.active(width)
            maps: list[torch.Tensor] | None = []
            for i in (0, 1):
                pieces = [hn.modules_for(width)[i].affine() for hn, _ in active]  # type: ignore[index]
                if maps is None or any(p is None for p in pieces):
                    maps = None
                    break
                # x -> x + m (A x + c), composed in stack order; the first map needs no d x d product
                (a0, c0), m0 = pieces[0], active[0][1]  # type: ignore[misc]
                m_total = torch.eye(width, dtype=a0.dtype, device=a0.device) + m0 * a0
                d_total = m0 * c0
                for (a, c), (_, mult) in zip(pieces[1:], active[1:]):  # type: ignore[misc]
                    m_total, d_total = m_total + mult * (a @ m_total), d_total + mult * (a @ d_total + c)
                maps += [m_total, d_total]
            self._affine[width] = tuple(maps) if maps is not None else None
        return self._affine[width]

    def text_contexts(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``apply_stack`` for a cross-attention context, reusing the result while the same tensor comes back."""
        width = context.shape[-1]
        hit = self._text.get(width)
        if hit is not None and hit[0] is context:
            return hit[1], hit[2]
        ctx_k, ctx_v = apply_stack(self.active(width), context)
        self._text[width] = (context, ctx_k, ctx_v)
        return ctx_k, ctx_v

    def _fold(self, linear: torch.nn.Linear, which: int, context: torch.Tensor) -> bool:
        """Swap ``linear``'s parameters for the folded ones if that is the cheaper way; True if they are swapped."""
        if linear in self._swapped:
            return True
        if linear in self._declined or linear.weight.device.type == "meta":  # meta: offloaded layer by layer
            return False
        base = (linear.weight._version, linear.weight, linear.bias)
        fold = self._folds.get(linear)
        stale = fold is None or fold.signature != self._signature or fold.base[0] != base[0] or fold.base[1] is not base[1]
        if stale or fold.weight.device != linear.weight.device or fold.weight.dtype != linear.weight.dtype:
            width = linear.in_features
            if not self._worth_folding(linear, context):
                self._declined.add(linear)
                return False
            maps = self.affine(width)
            if maps is None:
                self._declined.add(linear)
                return False
            m, d = maps[2 * which], maps[2 * which + 1]
            w = linear.weight.detach().float()
            m, d = m.to(w.device, torch.float32), d.to(w.device, torch.float32)
            b = w @ d + (linear.bias.detach().float() if linear.bias is not None else 0)
            fold = self._folds[linear] = _Fold(
                self._signature,
                base,
                torch.nn.Parameter((w @ m).to(linear.weight.dtype), requires_grad=False),
                torch.nn.Parameter(b.to(linear.weight.dtype), requires_grad=False),
            )
        self._swapped[linear] = (linear.weight, linear.bias)
        linear.weight, linear.bias = fold.weight, fold.bias
        return True

    def _worth_folding(self, linear: torch.nn.Linear, context: torch.Tensor) -> bool:
        """Folding costs ``out x in x in`` multiply-adds once; applying costs the networks' MACs for every token of
        every call. With no expected call count, a scope is assumed long (a server, a long generation)."""
        if self._expected_calls is None:
            return True
        width = linear.in_features
        per_row = 0
        for hn, _ in self.active(width):
            pair = hn.modules_for(width)
            assert pair is not None
            per_row += sum(p.numel() for p in pair[0].parameters() if p.ndim == 2)
        rows = context.numel() // width
        return linear.out_features * width * width < self._expected_calls * rows * per_row

    def _restore_weights(self) -> None:
        for linear, (weight, bias) in self._swapped.items():
            linear.weight, linear.bias = weight, bias  # type: ignore[assignment]
        self._swapped.clear()


class _ContextHook:
    """``to_k``/``to_v`` forward pre-hook: the input becomes ``hn_k(context)`` (or ``hn_v``), or the layer's
    parameters are the folded ones and the input passes unchanged."""

    def __init__(self, stack: HypernetworkStack, cross: bool, which: int) -> None:
        self.stack, self.cross, self.which = stack, cross, which

    def __call__(self, linear: torch.nn.Linear, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        stack = self.stack
        context = args[0]
        active = stack.active(context.shape[-1])
        if torch.is_grad_enabled():  # training: weights change every step, nothing may be cached or swapped
            stack._restore_weights()
            return (_chain(active, context, self.which),) if active else None
        if not active:
            return None
        if self.cross:  # 77 text tokens: transformed once per prompt, cheaper than a fold
            return (stack.text_contexts(context)[self.which],)
        if stack._fold(linear, self.which, context):
            return None
        return (_chain(active, context, self.which),)


def _chain(entries: Entries, context: torch.Tensor, which: int) -> torch.Tensor:
    """One of ``apply_stack``'s two chains (0: k, 1: v): the other is the other layer's hook's business."""
    x = context
    for hn, multiplier in entries:
        module = hn.modules_for(context.shape[-1])[which]  # type: ignore[index]
        x = module(x.to(module.linear[0].weight.dtype), multiplier)
    return x.to(context.dtype)


def attention_widths(model: torch.nn.Module) -> dict[int, int]:
    """How many attention layers of ``model`` take a context of each width (what a hypernetwork module can hit)."""
    counts: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            counts[module.to_k.in_features] = counts.get(module.to_k.in_features, 0) + 1
    return counts


def installed_stack(model: torch.nn.Module) -> HypernetworkStack | None:
    """The stack :func:`install_hypernetworks` put on ``model``, or None."""
    stack = model.__dict__.get("hypernetwork_stack")
    return stack if isinstance(stack, HypernetworkStack) else None


def install_hypernetworks(model: torch.nn.Module) -> HypernetworkStack:
    """Give ``model`` (a UNet, or a single Attention) a stack that hooks the ``to_k``/``to_v`` of its attention layers
    while networks are applied, and return it; a model that has one keeps it (a trainer and a generator on one
    model share it). Only this instance changes; its processors stay as they are, and with nothing applied no hook
    is present. :func:`uninstall_hypernetworks` takes the stack off again."""
    existing = installed_stack(model)
    if existing is not None:
        return existing
    stack = HypernetworkStack([m for m in model.modules() if isinstance(m, Attention)])
    model.hypernetwork_stack = stack  # type: ignore[assignment]  # an instance attribute: uninstall finds it here
    return stack


def uninstall_hypernetworks(model: torch.nn.Module) -> None:
    """Remove the stack :func:`install_hypernetworks` put on ``model``: hooks gone, every layer's own weights
    back, processors untouched. Does nothing if none is installed."""
    stack = installed_stack(model)
    if stack is not None:
        del model.__dict__["hypernetwork_stack"]
        stack.uninstall()
