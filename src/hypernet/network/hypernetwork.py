"""The hypernetwork: one (key, value) module pair per context width, plus the metadata A1111 files carry."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypernet.defaults import DEFAULT_WIDTHS
from hypernet.errors import HypernetError
from hypernet.network.module import WEIGHT_INITS, WIDTH_CHANGING_ACTIVATIONS, HypernetworkModule, check_activation
from hypernet.network.writing import save_hypernetwork


@dataclass
class Architecture:
    """What a module looks like; identical for every width of one network (A1111's metadata keys)."""

    layer_structure: list[float] = field(default_factory=lambda: [1, 2, 1])
    activation_func: str | None = None
    add_layer_norm: bool = False
    activate_output: bool = False
    dropout_structure: list[float] = field(default_factory=lambda: [0, 0, 0])
    use_dropout: bool = False
    last_layer_dropout: bool = False
    weight_init: str = "Normal"  # informational once created; A1111 ignores it on load


def parse_numbers(value: str | Sequence[float], what: str) -> list[float]:
    """A layer or dropout structure as A1111's form and API give it, ``"1, 2, 1"`` or a list, as floats."""
    try:
        if isinstance(value, str):
            return [float(x) for x in value.split(",") if x.strip()]
        return [float(x) for x in value]
    except (TypeError, ValueError):
        raise HypernetError(f"{what} {value!r} must be comma-separated numbers, e.g. \"1, 2, 1\"") from None


def check_architecture(arch: Architecture, *, creating: bool = False) -> None:
    """Refuse structures A1111 would assert on (or silently mis-build), with a sentence saying what is expected."""
    ls = arch.layer_structure
    if len(ls) < 2 or not all(isinstance(m, (int, float)) and math.isfinite(m) and m > 0 for m in ls):
        raise HypernetError(f"layer structure {ls} must be at least two positive numbers, e.g. [1, 2, 1]")
    if ls[0] != 1 or ls[-1] != 1:
        raise HypernetError(f"layer structure {ls} must start and end with 1, e.g. [1, 2, 1]")
    check_activation(arch.activation_func)
    if creating and arch.activation_func in WIDTH_CHANGING_ACTIVATIONS:
        raise HypernetError(
            f"activation {arch.activation_func!r} cannot be used in a hypernetwork: "
            f"{WIDTH_CHANGING_ACTIVATIONS[arch.activation_func]}"
        )
    if creating and arch.weight_init not in WEIGHT_INITS:
        raise HypernetError(f"unknown weight initialization {arch.weight_init!r}; expected one of: {', '.join(WEIGHT_INITS)}")
    ds = arch.dropout_structure
    if creating and len(ds) != len(ls):
        raise HypernetError(f"dropout structure {ds} must have one entry per layer structure entry ({len(ls)})")
    for p in ds[1:]:
        if not (p == 0 or 0 < p < 1):
            raise HypernetError(f"dropout structure {ds}: every value must be 0 (no dropout) or between 0 and 1 exclusive")


class Hypernetwork(nn.Module):
    """A1111 hypernetwork: ``layers[str(width)] = ModuleList([k_module, v_module])`` plus file metadata.

    Modules are fp32 and live on the CPU until the caller moves them; ``apply`` casts the context to the
    module dtype and back, as A1111 does when it upcasts.
    """

    def __init__(
        self,
        widths: Iterable[int],
        arch: Architecture,
        *,
        name: str,
        step: int = 0,
        sd_checkpoint: str | None = None,
        sd_checkpoint_name: str | None = None,
        optional_info: str | None = None,
        training_seed: int | None = None,
        lineage: str | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.name = name
        self.step = step
        self.sd_checkpoint = sd_checkpoint
        self.sd_checkpoint_name = sd_checkpoint_name
        self.optional_info = optional_info
        # hypernet's resume record (A1111 ignores both keys): the seed of the run that trained it, so that a run
        # continuing from this file draws the same data, noise and timesteps; and the short hash of the file that
        # run started from, which tells the snapshots of an interrupted run from those of any other run.
        self.training_seed = training_seed
        self.lineage = lineage
        self.filename: str | None = None  # where it was loaded from, for messages and hashes
        self.optimizer_name = "AdamW"
        self.optimizer_state_dict: dict[str, Any] | None = None
        self.layers = nn.ModuleDict()
        for width in widths:
            if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
                raise HypernetError(f"hypernetwork widths must be positive integers, got {width!r}")
            self.layers[str(width)] = nn.ModuleList([self._build_module(width), self._build_module(width)])
        self.eval()

    def _build_module(self, width: int) -> HypernetworkModule:
        a = self.arch
        return HypernetworkModule(
            width, a.layer_structure, a.activation_func, a.add_layer_norm, a.activate_output, a.dropout_structure
        )

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        name: str,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        *,
        layer_structure: Sequence[float] = (1.0, 2.0, 1.0),
        activation_func: str = "linear",
        weight_init: str = "Normal",
        add_layer_norm: bool = False,
        dropout_structure: Sequence[float] | None = None,
        activate_output: bool = False,
        seed: int | None = None,
    ) -> Hypernetwork:
        """A new network, as A1111's "Create hypernetwork" form makes it (same defaults, checks and init).

        With ``seed`` the weights equal those A1111 creates after ``torch.manual_seed(seed)``; the global RNG is
        left untouched.
        """
        ls = [float(m) if isinstance(m, str) else m for m in layer_structure]
        ds = list(dropout_structure) if dropout_structure is not None else [0.0] * len(ls)
        use_dropout = any(p != 0 for p in ds)
        arch = Architecture(
            layer_structure=list(ls),
            activation_func=activation_func,
            add_layer_norm=add_layer_norm,
            activate_output=activate_output,
            dropout_structure=ds,
            use_dropout=use_dropout,
            last_layer_dropout=len(ds) >= 2 and ds[-2] != 0,
            weight_init=weight_init,
        )
        check_architecture(arch, creating=True)
        if not widths:
            raise HypernetError("a hypernetwork needs at least one width, e.g. 768,320,640,1280")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            net = cls([], arch, name=name)
            # Build and initialise width by width, k then v: the RNG draw order A1111 uses.
            for width in widths:
                if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
                    raise HypernetError(f"hypernetwork widths must be positive integers, got {width!r}")
                pair = []
                for _ in range(2):
                    module = net._build_module(width)
                    module.initialize(weight_init)
                    pair.append(module)
                net.layers[str(width)] = nn.ModuleList(pair)
        net.eval()
        return net

    # ----------------------------------------------------------------- applying
    @property
    def widths(self) -> list[int]:
        """Context widths this network has modules for, in file order."""
        return [int(w) for w in self.layers]

    def modules_for(self, width: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (k, v) module pair for a context width, or None if the network has none."""
        pair = self.layers[str(width)] if str(width) in self.layers else None
        return (pair[0], pair[1]) if pair is not None else None  # type: ignore[return-value]

    def apply(self, context: torch.Tensor, multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context_k, context_v)`` for a tensor whose last dim is a width; unchanged if no module matches."""
        return apply_stack([(self, multiplier)], context)

    def check_runnable(self) -> None:
        """Refuse networks that load but cannot compute (A1111 fails on them at the first forward pass)."""
        act = self.arch.activation_func
        if act in WIDTH_CHANGING_ACTIVATIONS:
            where = f" ({self.filename})" if self.filename else ""
            raise HypernetError(
                f"hypernetwork {self.name!r}{where} uses activation {act!r}, which cannot run: "
                f"{WIDTH_CHANGING_ACTIVATIONS[act]}"
            )

    # ----------------------------------------------------------------- metadata and files
    def metadata(self) -> dict[str, Any]:
        """Every metadata key A1111's save() writes, so A1111's legacy defaults never kick in."""
        a = self.arch
        return {
            "step": self.step,
            "name": self.name,
            "layer_structure": list(a.layer_structure),
            "activation_func": a.activation_func,
            "is_layer_norm": a.add_layer_norm,
            "weight_initialization": a.weight_init,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "activate_output": a.activate_output,
            "use_dropout": a.use_dropout,
            "dropout_structure": list(a.dropout_structure),
            "last_layer_dropout": a.last_layer_dropout,
            "optional_info": self.optional_info,
            **({"hypernet_training_seed": self.training_seed} if self.training_seed is not None else {}),
            **({"hypernet_lineage": self.lineage} if self.lineage is not None else {}),
        }

    def module_state_dicts(self) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """``{width: (k_state_dict, v_state_dict)}`` of fp32 CPU tensors, the layout of A1111 files."""
        out = {}
        for width in self.widths:
            k, v = self.layers[str(width)]
            out[width] = (_cpu_fp32(k.state_dict()), _cpu_fp32(v.state_dict()))
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | os.PathLike[str], *, optimizer: torch.optim.Optimizer | None = None) -> Path:
        """Write atomically; the format follows the extension (``.pt`` for A1111, ``.safetensors``).

        With ``optimizer``, an A1111 ``.pt.optim`` sidecar is written next to a ``.pt`` for exact resume.
        """
        return save_hypernetwork(self, path, optimizer=optimizer)


def _cpu_fp32(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in sd.items()}


def apply_stack(
    stack: Sequence[tuple[Hypernetwork, float]], context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain networks in list order, k and v separately, as A1111 does: ``k = hn2.k(hn1.k(ctx))``.

    A network without a module for ``context.shape[-1]`` leaves both chains unchanged.
    """
    width = context.shape[-1]
    ctx_k = ctx_v = context
    for hn, multiplier in stack:
        pair = hn.modules_for(width)
        if pair is None:
            continue
        hn.check_runnable()
        k_mod, v_mod = pair
        dtype = k_mod.linear[0].weight.dtype
        ctx_k = k_mod(ctx_k.to(dtype), multiplier)
        ctx_v = v_mod(ctx_v.to(dtype), multiplier)
    return ctx_k.to(context.dtype), ctx_v.to(context.dtype)
