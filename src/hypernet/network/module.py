"""One hypernetwork module: the residual MLP that rewrites a key or value context of one width.

The layer order, the state-dict key numbering, the activation table and the weight initialisation follow
A1111 exactly (see ``shared/spec/hypernetwork-format.md`` §6-§9), because every file people own depends on them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from hypernet.errors import HypernetError

WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def _activation_table() -> dict[str, type[nn.Module]]:
    """A1111's name -> class table: a fixed list, then every class of torch.nn.modules.activation, lower-cased."""
    table: dict[str, type[nn.Module]] = {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "elu": nn.ELU,
        "swish": nn.Hardswish,  # A1111's long-standing quirk: "swish" is Hardswish, not SiLU
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    module = torch.nn.modules.activation
    table.update(
        {
            name.lower(): cls
            for name, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__
        }
    )
    return table


ACTIVATIONS: dict[str, type[nn.Module]] = _activation_table()

# Names A1111 lists but that cannot work in a Linear -> act -> Linear stack (hypernetwork-format.md §7).
UNBUILDABLE_ACTIVATIONS = {
    "threshold": "it needs constructor arguments",
    "multiheadattention": "it needs constructor arguments",
}
WIDTH_CHANGING_ACTIVATIONS = {"glu": "it halves the width, so the next Linear layer cannot accept its output"}


def check_activation(name: str | None) -> None:
    """Refuse activation names that A1111 cannot build either, with the reason."""
    if name is None:
        return
    if name not in ACTIVATIONS:
        raise HypernetError(
            f"unknown activation {name!r}; expected one of: {', '.join(sorted(ACTIVATIONS) + ['swish'])}"
        )
    if name in UNBUILDABLE_ACTIVATIONS:
        raise HypernetError(f"activation {name!r} cannot be used in a hypernetwork: {UNBUILDABLE_ACTIVATIONS[name]}")


def hidden_widths(width: int, layer_structure: Sequence[float]) -> list[int]:
    """Widths of every layer boundary: ``int(width * m)`` with Python's truncation, as A1111 computes them."""
    return [int(width * m) for m in layer_structure]


class HypernetworkModule(nn.Module):
    """``forward(x, m) = x + linear(x) * m``: a residual MLP at one width.

    ``linear`` is an ``nn.Sequential`` laid out exactly like A1111's, so ``state_dict()`` keys
    (``linear.<position>.weight``) match the files.
    """

    def __init__(
        self,
        width: int,
        layer_structure: Sequence[float],
        activation_func: str | None,
        add_layer_norm: bool,
        activate_output: bool,
        dropout_structure: Sequence[float],
    ) -> None:
        super().__init__()
        self.width = width
        self.activation_func = activation_func
        check_activation(activation_func)
        sizes = hidden_widths(width, layer_structure)
        last = len(layer_structure) - 2
        layers: list[nn.Module] = []
        for i in range(len(layer_structure) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if activation_func not in (None, "linear") and (i < last or activate_output):
                layers.append(ACTIVATIONS[activation_func]())
            if add_layer_norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            p = float(dropout_structure[i + 1])
            if p > 0:
                layers.append(nn.Dropout(p=p))
        self.linear = nn.Sequential(*layers)

    def initialize(self, weight_init: str) -> None:
        """Fresh weights as A1111's "Create hypernetwork" makes them (same calls, same RNG draws)."""
        nonlinearity = "leaky_relu" if self.activation_func == "leakyrelu" else "relu"
        for layer in self.linear:
            if type(layer) not in (nn.Linear, nn.LayerNorm):
                continue
            w, b = layer.weight.data, layer.bias.data
            # LayerNorm always gets N(0, 0.01) whatever the option: an A1111 quirk files depend on.
            if weight_init == "Normal" or type(layer) is nn.LayerNorm:
                nn.init.normal_(w, mean=0.0, std=0.01)
                nn.init.normal_(b, mean=0.0, std=0.0)
            elif weight_init == "XavierUniform":
                nn.init.xavier_uniform_(w)
                nn.init.zeros_(b)
            elif weight_init == "XavierNormal":
                nn.init.xavier_normal_(w)
                nn.init.zeros_(b)
            elif weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity)
                nn.init.zeros_(b)
            elif weight_init == "KaimingNormal":
                nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)
                nn.init.zeros_(b)
            else:
                raise HypernetError(f"unknown weight initialization {weight_init!r}; expected one of: {', '.join(WEIGHT_INITS)}")

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier

    def affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(A, c)`` (float32) with ``linear(x) == x @ A.T + c`` if the MLP is purely affine (only Linear layers,
        dropout inactive), else None. This is what lets the engine fold a linear network into weights."""
        a: torch.Tensor | None = None
        c: torch.Tensor | None = None
        for layer in self.linear:
            if isinstance(layer, nn.Dropout) and not self.training:
                continue
            if not isinstance(layer, nn.Linear):
                return None
            w, b = layer.weight.detach().float(), layer.bias.detach().float()
            a, c = (w, b) if a is None else (w @ a, w @ c + b)
        return (a, c) if a is not None and c is not None else None
