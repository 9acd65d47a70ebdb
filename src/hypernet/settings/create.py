"""A new hypernetwork: A1111's "Create hypernetwork" form (``POST /sdapi/v1/create/hypernetwork``, ``hypernet create``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hypernet.defaults import DEFAULT_WIDTHS
from hypernet.settings import limits as L
from hypernet.settings.base import On, SettingsModel

# What ``Hypernetwork.create`` builds (tests compare it with the network package's own table): A1111's fixed names,
# then torch.nn's activations lower-cased, without those that need arguments or change the width.
Activation = Literal[
    "linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "celu", "gelu", "hardshrink", "hardsigmoid",
    "hardswish", "hardtanh", "logsigmoid", "logsoftmax", "mish", "prelu", "rrelu", "relu6", "selu", "silu", "softmax",
    "softmax2d", "softmin", "softplus", "softshrink", "softsign", "tanhshrink",
]
WeightInit = Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"]
NAME_EXTRA_CHARS = "._- "  # besides letters and digits of any script (A1111 keeps what str.isalnum() accepts)


def parse_number_list(value: Any) -> Any:
    """``"1, 2, 1"`` (A1111's form and API) or a list -> a list; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parameter_count(widths: list[int], layers: list[float], layer_norm: bool) -> int:
    """Weights and biases of a network with these widths and structure (two modules, k and v, per width)."""
    total = 0
    for width in widths:
        sizes = [int(width * m) for m in layers]
        per_module = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        if layer_norm:
            per_module += sum(2 * b for b in sizes[1:-1])
        total += 2 * per_module
    return total


class CreateSettings(SettingsModel):
    """A new network's shape; the defaults are A1111's."""

    name: Annotated[str, Field(min_length=1, max_length=200, description="The network's name and file stem: letters "
                                                                         "(of any script), digits and '._- ' only."),
                    On(cli=("NAME",), ui="Name")] = ""
    enable_sizes: Annotated[list[Annotated[int, Field(ge=1, le=L.MAX_NETWORK_WIDTH)]],
                            Field(min_length=1, max_length=L.MAX_NETWORK_WIDTHS,
                                  description="Context widths to give modules to (SD1: 768, 320, 640, 1280; SD2: 1024, "
                                              "...); the command line's default is the widths of --model."),
                            On(cli=("--sizes",), ui="Modules for these widths",
                               expect=f"1 to {L.MAX_NETWORK_WIDTHS} widths, each from 1 to {L.MAX_NETWORK_WIDTH}")
                            ] = list(DEFAULT_WIDTHS)
    layer_structure: Annotated[list[Annotated[float, Field(gt=0, le=L.MAX_LAYER_MULTIPLIER)]],
                               Field(min_length=2, max_length=L.MAX_LAYER_ENTRIES,
                                     description='Layer sizes as multiples of the width, e.g. "1, 2, 1"; starts and '
                                                 'ends with 1.'),
                               On(cli=("--layers",), ui="Layer structure",
                                  expect=f'2 to {L.MAX_LAYER_ENTRIES} numbers above 0 and at most '
                                         f'{L.MAX_LAYER_MULTIPLIER:g}, starting and ending with 1, e.g. "1, 2, 1"')
                               ] = [1.0, 2.0, 1.0]
    activation_func: Annotated[Activation, Field(description="Activation after each hidden layer ('swish' is "
                                                             "A1111's Hardswish)."),
                               On(cli=("--activation",), ui="Activation function")] = "linear"
    weight_init: Annotated[WeightInit, Field(description="Weight initialization."),
                           On(cli=("--init",), ui="Weight initialization")] = "Normal"
    add_layer_norm: Annotated[bool, Field(description="Add LayerNorm after every Linear."),
                              On(cli=("--layer-norm",), ui="Add layer normalization")] = False
    use_dropout: Annotated[bool, Field(description="Use the dropout structure (A1111: off ignores it)."),
                           On(cli=("--use-dropout",), ui="Use dropout")] = False
    dropout_structure: Annotated[list[Annotated[float, Field(ge=0, lt=1)]] | None,
                                 Field(max_length=L.MAX_LAYER_ENTRIES,
                                       description='Dropout per layer, e.g. "0, 0.1, 0"; one value per layer.'),
                                 On(cli=("--dropout",), ui="Dropout structure",
                                    expect='one number per layer, each 0 or more and below 1, e.g. "0, 0.1, 0"')
                                 ] = None
    overwrite_old: Annotated[bool, Field(description="Replace an existing file of that name."),
                             On(cli=("--overwrite",), ui="Overwrite old hypernetwork")] = False
    activate_output: Annotated[bool, Field(description="Also apply the activation after the last layer."),
                               On(cli=("--activate-output",), ui="Activate output")] = False
    seed: Annotated[int | None, Field(ge=0, le=L.SEED_MAX, description="Seed for reproducible initial weights."),
                    On(ui="Seed (empty: random)", expect=f"a whole number from 0 to {L.SEED_MAX}")] = None

    @field_validator("layer_structure", "dropout_structure", "enable_sizes", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return parse_number_list(value)

    @field_validator("name", mode="after")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        plain = all(ch.isalnum() or ch in NAME_EXTRA_CHARS for ch in value)
        if value.strip() in ("", ".", "..") or not plain or value != value.strip():
            raise ValueError(f"name {value!r} is not a plain file name; use letters, digits and '._- ' only, "
                             "without leading or trailing spaces (A1111 would silently rename it).")
        return value

    @model_validator(mode="after")
    def _shape(self) -> CreateSettings:
        ls = self.layer_structure
        if ls[0] != 1 or ls[-1] != 1:
            raise ValueError(f"layer_structure {_numbers(ls)} must start and end with 1, e.g. \"1, 2, 1\".")
        for width in self.enable_sizes:
            hidden = [int(width * m) for m in ls]
            if 0 in hidden:
                raise ValueError(f"layer_structure {_numbers(ls)} gives a layer of width 0 at width {width}; every "
                                 "layer needs at least one unit (raise the multiplier).")
        if len(set(self.enable_sizes)) != len(self.enable_sizes):
            raise ValueError(f"enable_sizes {self.enable_sizes} names a width twice.")
        if self.dropout_structure is not None and self.use_dropout and len(self.dropout_structure) != len(ls):
            raise ValueError(f"dropout_structure {_numbers(self.dropout_structure)} needs one value per "
                             f"layer_structure entry ({len(ls)}).")
        count = parameter_count(self.enable_sizes, ls, self.add_layer_norm)
        if count > L.MAX_NETWORK_PARAMETERS:
            raise ValueError(f"enable_sizes {self.enable_sizes} with layer_structure {_numbers(ls)} makes "
                             f"{count:,} parameters; at most {L.MAX_NETWORK_PARAMETERS:,} are allowed.")
        return self

    @property
    def dropout(self) -> list[float]:
        """The dropout the network gets: the structure when dropout is on, else zeros (A1111)."""
        if self.use_dropout and self.dropout_structure is not None:
            return list(self.dropout_structure)
        return [0.0] * len(self.layer_structure)

    def network_arguments(self) -> dict[str, Any]:
        """``Hypernetwork.create``'s arguments for these settings, so every surface builds the same network:
        ``Hypernetwork.create(**settings.network_arguments())`` (kept here as data: settings load without torch)."""
        return dict(name=self.name, widths=list(self.enable_sizes), layer_structure=self.layer_structure,
                    activation_func=self.activation_func, weight_init=self.weight_init,
                    add_layer_norm=self.add_layer_norm, dropout_structure=self.dropout,
                    activate_output=self.activate_output, seed=self.seed)


def _numbers(values: list[float]) -> str:
    return '"' + ", ".join(f"{v:g}" if math.isfinite(v) else str(v) for v in values) + '"'
