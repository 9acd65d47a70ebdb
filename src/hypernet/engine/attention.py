"""The network stack: hypernetworks rewrite the inputs of ``to_k``/``to_v``, whatever attention processor runs.

A1111 computes ``k = to_k(hn_k(context))`` and ``v = to_v(hn_v(context))`` in every attention layer (self-attention:
the context is the block's hidden states; cross-attention: the text embedding). hypernet does exactly that through
forward pre-hooks on each layer's ``to_k`` and ``to_v`` (as ComfyUI's attn1/attn2 patches transform k/v inputs), so
the model keeps its own processor (SDPA, xformers, IP-Adapter, LoRA through PEFT ...) and no class is patched.

Shortcuts make inference nearly free, chosen per layer and never during training (grad enabled):

* a purely linear stack is one affine map ``x -> x @ M.T + d`` per width (composed once, kept while the networks,
  multipliers and weights stay the same), and each self-attention layer takes the cheapest exact way to use it:
  *fold* it into the layer (its ``to_k``/``to_v`` parameters swapped for ``W @ M`` and ``W @ d + b`` for the scope,
  made in float32: ``out x in x in`` multiply-adds once, nothing per token), *apply the map* to the tokens
  (``in x in`` per token) or, where composing the map is not worth it, run the networks (their MACs per token).
  The caller says how many calls to expect; a layer folds once the tokens it has seen with these networks (this
  scope's expected ones and earlier scopes') would have cost more than the fold, as a rent-or-buy rule: a one-off
  short generation never pays a fold it cannot earn back, a server that keeps using a network folds it and keeps
  the fold for every later request;
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
        # the composed affine maps of the signature they were made for (kept across scopes with the same networks)
        self._affine: dict[int, tuple[torch.Tensor, ...] | None] = {}
        self._affine_signature = self._signature
        self._text: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._folds: weakref.WeakKeyDictionary[torch.nn.Linear, _Fold] = weakref.WeakKeyDictionary()
        # tokens each layer has taken with a signature, this scope's expected ones included: the rent-or-buy count
        self._seen: weakref.WeakKeyDictionary[torch.nn.Linear, tuple[_Signature, int]] = weakref.WeakKeyDictionary()
        self._swapped: dict[torch.nn.Linear, tuple[torch.nn.Parameter, torch.nn.Parameter | None]] = {}
        self._plans: dict[torch.nn.Linear, str] = {}  # this scope's way per layer: "fold", "map" or "networks"
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
        self._plans.clear()
        self._expected_calls = expected_calls
        signature = _Signature.of(entries, dtype)
        if signature != self._signature:
            self._signature = signature
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
            self._plans.clear()
            self.entries, self._signature, self._expected_calls = previous
            self._hook(bool(self.entries))

    def clear_caches(self) -> None:
        """Forget folds, composed maps and cached contexts (e.g. after changing weights without an in-place op)."""
        self._restore_weights()
        self._folds.clear()
        self._seen.clear()
        self._affine.clear()
        self._text.clear()
        self._plans.clear()
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
        if self._affine_signature != self._signature:
            self._affine.clear()
            self._affine_signature = self._signature
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

    def plan(self, linear: torch.nn.Linear, context: torch.Tensor) -> str:
        """How this scope feeds a self-attention ``linear``: ``"fold"``, ``"map"`` or ``"networks"`` (see the
        module docstring), chosen at its first call in the scope by multiply-add counts."""
        plan = self._plans.get(linear)
        if plan is not None:
            return plan
        width = linear.in_features
        if linear.weight.device.type == "meta":  # offloaded layer by layer: nothing to fold into
            plan = "networks"
        elif self._expected_calls is None:  # a long scope (a server, a long generation): anything linear folds
            plan = "fold" if self.affine(width) is not None else "networks"
        else:
            rows = context.numel() // width
            seen = self._seen.get(linear)
            tokens = (seen[1] if seen is not None and seen[0] == self._signature else 0) + rows * self._expected_calls
            self._seen[linear] = (self._signature, tokens)
            if not self._worth_composing(width, rows) or self.affine(width) is None:
                plan = "networks"
            else:  # rent (apply the map) until the tokens seen would have paid for buying (the fold)
                plan = "fold" if linear.out_features <= tokens else "map"
        self._plans[linear] = plan
        return plan

    def _worth_composing(self, width: int, rows: int) -> bool:
        """Composing the networks into one map per width costs products of their weight matrices, repaid by every
        token that then takes ``width x width`` instead of the networks' MACs (estimated: every self-attention layer
        of this width gets as many tokens as this one)."""
        if self._affine_signature == self._signature and width in self._affine:
            return True
        compose, per_row = 0, 0
        for i, (hn, _) in enumerate(self.active(width)):
            weights = [p for p in hn.modules_for(width)[0].parameters() if p.ndim == 2]  # type: ignore[index]
            per_row += sum(w.numel() for w in weights)
            compose += sum(w.numel() * width for w in weights[1:]) + (width**3 if i else 0)
        layers = sum(1 for to_k, _, cross in self._layers if not cross and to_k.in_features == width)
        tokens = layers * rows * (self._expected_calls or 1)
        return compose + tokens * width * width < tokens * per_row

    def map_context(self, context: torch.Tensor, which: int) -> torch.Tensor:
        """``context @ M.T + d``: the composed affine map applied to the tokens (float32, as the fold is made)."""
        maps = self.affine(context.shape[-1])
        assert maps is not None
        m, d = maps[2 * which].to(context.device), maps[2 * which + 1].to(context.device)
        return torch.nn.functional.linear(context.float(), m, d).to(context.dtype)

    def swap_in_fold(self, linear: torch.nn.Linear, which: int) -> None:
        """Give ``linear`` the folded parameters for this scope, reusing the fold made for the same networks and
        the same layer weights, else making it."""
        if linear in self._swapped:
            return
        base = (linear.weight._version, linear.weight, linear.bias)
        fold = self._folds.get(linear)
        stale = fold is None or fold.signature != self._signature or fold.base[0] != base[0] or fold.base[1] is not base[1]
        if stale or fold.weight.device != linear.weight.device or fold.weight.dtype != linear.weight.dtype:
            maps = self.affine(linear.in_features)
            assert maps is not None
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

    def _restore_weights(self) -> None:
        for linear, (weight, bias) in self._swapped.items():
            linear.weight, linear.bias = weight, bias  # type: ignore[assignment]
        self._swapped.clear()


class _ContextHook:
    """``to_k``/``to_v`` forward pre-hook: the input becomes ``hn_k(context)`` (or ``hn_v``), computed by the
    networks or by their composed map, or the layer's parameters are the folded ones and the input passes
    unchanged."""

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
        plan = stack.plan(linear, context)
        if plan == "fold":
            stack.swap_in_fold(linear, self.which)
            return None
        if plan == "map":
            return (stack.map_context(context, self.which),)
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
