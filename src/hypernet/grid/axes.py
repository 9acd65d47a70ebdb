"""The X/Y/Z plot's axis types and value syntax, numbered as A1111's txt2img "X/Y/Z plot" numbers them.

API clients name an axis by its index in A1111's txt2img list (``script_args[0]`` = 4 means Steps), so the table
keeps A1111's order and labels, including axes hypernet cannot vary (choosing one is a clear error). A1111 removed
its hypernetwork axes in 2023; hypernet puts them back after the list A1111 ships (0-41) and its built-in Hypertile
extension (42-50): 51 "Hypernetwork" (a network per column: training snapshots, or any set of networks) and 52
"Hypernet str." (the multiplier of the prompt's ``<hypernet:...>`` tags).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hypernet.engine.generate import Settings
from hypernet.sampling import find_schedule, resolve_sampler
from hypernet.errors import HypernetError
from hypernet.prompt.tags import EXTRA_NETWORK_TAG, HYPERNET_TAG_TYPE


@dataclass
class Cell:
    """One image of the plot before it is generated: the generation settings plus what is not a setting."""

    settings: Settings
    checkpoint: str | None = None  # None: the loaded model
    network: str | None = None  # the Hypernetwork axis' value ("None": no network); None: no such axis
    strength: float | None = None  # the Hypernet str. axis' value; None: no such axis

    def finished(self) -> Settings:
        """The settings to generate with: the network and strength written into the prompt as A1111 tags, so the
        image's infotext reproduces it with a single ``generate``."""
        prompt = self.settings.prompt
        if self.network is not None:
            prompt = with_network(prompt, self.network)
        if self.strength is not None and self.network != "None":  # the plain model's column has nothing to scale
            prompt = with_strength(prompt, self.strength)
        return replace(self.settings, prompt=prompt)


Apply = Callable[[Cell, Any, Sequence[Any]], None]  # (cell, value, all of the axis' values)


@dataclass(frozen=True)
class AxisType:
    """One entry of A1111's axis list. ``apply`` None: hypernet cannot vary it (naming it is an error)."""

    label: str
    kind: type  # int, float or str: how the value text is parsed
    apply: Apply | None = None
    label_style: str = "add"  # "add": "Label: v"; "bare": v; "basename": file name; "join": "a, b"; "none": ""
    cost: float = 0.0  # A1111's loop order: the costliest axis is the outer loop
    permutations: bool = False  # Prompt order: the values are every ordering of the items
    seed: bool = False  # "Keep -1 for seeds" applies

    @property
    def supported(self) -> bool:
        return self.apply is not None

    def format(self, value: Any) -> str:
        """A column/row label as A1111 writes it (floats rounded to 8 places)."""
        if self.label_style == "none":
            return ""
        if self.label_style == "join":
            return ", ".join(value)
        if self.label_style == "basename":
            return os.path.basename(str(value))
        if isinstance(value, float):
            value = round(value, 8)
        return str(value) if self.label_style == "bare" else f"{self.label}: {value}"


def _field(name: str, convert: Callable[[Any], Any] = lambda v: v) -> Apply:
    def apply(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
        setattr(cell.settings, name, convert(value))

    return apply


def _prompt_sr(cell: Cell, value: Any, values: Sequence[Any]) -> None:
    """A1111's Prompt S/R: the first value is searched for; every value replaces it in prompt and negative."""
    search, s = str(values[0]), cell.settings
    if search not in s.prompt and search not in s.negative_prompt:
        raise HypernetError(f"Prompt S/R did not find {search!r} in the prompt or negative prompt; the first value "
                            "of a Prompt S/R axis is the text to replace.")
    s.prompt = s.prompt.replace(search, str(value))
    s.negative_prompt = s.negative_prompt.replace(search, str(value))


def _prompt_order(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    """A1111's Prompt order: the items' occurrences in the prompt are rewritten in ``value``'s order."""
    prompt = cell.settings.prompt
    for token in value:
        if token not in prompt:
            raise HypernetError(f"Prompt order: {token!r} is not in the prompt.")
    positions = sorted((prompt.find(token), token) for token in value)
    pieces, rest = [], prompt
    for _, token in positions:  # the text before each occurrence, in prompt order
        n = rest.find(token)
        pieces.append(rest[:n])
        rest = rest[n + len(token):]
    cell.settings.prompt = "".join(piece + token for piece, token in zip(pieces, value)) + rest


def _sampler(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    resolve_sampler(str(value))  # an unknown name fails before anything runs
    cell.settings.sampler_name = str(value)


def _schedule(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    cell.settings.scheduler = find_schedule(str(value)).label


def _size(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(value))
    if not match:
        raise HypernetError(f"Size axis value {value!r} must look like 512x768.")
    cell.settings.width, cell.settings.height = int(match[1]), int(match[2])


def _checkpoint(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    cell.checkpoint = str(value)


def _network(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    cell.network = str(value)


def _strength(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
    cell.strength = float(value)


_NOT_HERE = None  # an A1111 axis that needs a feature hypernet does not have (hires fix, refiner, VAE choice, ...)

TXT2IMG_AXES: tuple[AxisType, ...] = (
    AxisType("Nothing", str, lambda cell, value, values: None, label_style="none"),
    AxisType("Seed", int, _field("seed"), seed=True),
    AxisType("Var. seed", int, _NOT_HERE, seed=True),
    AxisType("Var. strength", float, _NOT_HERE),
    AxisType("Steps", int, _field("steps")),
    AxisType("Hires steps", int, _NOT_HERE),
    AxisType("CFG Scale", float, _field("cfg_scale")),
    AxisType("Prompt S/R", str, _prompt_sr, label_style="bare"),
    AxisType("Prompt order", str, _prompt_order, label_style="join", permutations=True),
    AxisType("Sampler", str, _sampler, label_style="bare"),
    AxisType("Hires sampler", str, _NOT_HERE, label_style="bare"),
    AxisType("Checkpoint name", str, _checkpoint, label_style="basename", cost=1.0),
    AxisType("Negative Guidance minimum sigma", float, _NOT_HERE),
    AxisType("Sigma Churn", float, _NOT_HERE),
    AxisType("Sigma min", float, _NOT_HERE),
    AxisType("Sigma max", float, _NOT_HERE),
    AxisType("Sigma noise", float, _NOT_HERE),
    AxisType("Schedule type", str, _schedule),
    AxisType("Schedule min sigma", float, _NOT_HERE),
    AxisType("Schedule max sigma", float, _NOT_HERE),
    AxisType("Schedule rho", float, _NOT_HERE),
    AxisType("Beta schedule alpha", float, _NOT_HERE),
    AxisType("Beta schedule beta", float, _NOT_HERE),
    AxisType("Eta", float, _NOT_HERE),
    AxisType("Clip skip", int, _field("clip_skip")),
    AxisType("Denoising", float, _NOT_HERE),
    AxisType("Initial noise multiplier", float, _NOT_HERE),
    AxisType("Extra noise", float, _NOT_HERE),
    AxisType("Hires upscaler", str, _NOT_HERE),
    AxisType("VAE", str, _NOT_HERE, cost=0.7),
    AxisType("Styles", str, _NOT_HERE),
    AxisType("UniPC Order", int, _NOT_HERE, cost=0.5),
    AxisType("Face restore", str, _NOT_HERE, label_style="bare"),
    AxisType("Token merging ratio", float, _NOT_HERE),
    AxisType("Token merging ratio high-res", float, _NOT_HERE),
    AxisType("Always discard next-to-last sigma", str, _NOT_HERE),
    AxisType("SGM noise multiplier", str, _NOT_HERE),
    AxisType("Refiner checkpoint", str, _NOT_HERE, cost=1.0),
    AxisType("Refiner switch at", float, _NOT_HERE),
    AxisType("RNG source", str, _NOT_HERE),
    AxisType("FP8 mode", str, _NOT_HERE, cost=0.9),
    AxisType("Size", str, _size),
    *(AxisType(f"[Hypertile] {name}", str, _NOT_HERE) for name in (
        "Unet First pass Enabled", "Unet Second pass Enabled", "Unet Max Depth", "Unet Max Tile Size",
        "Unet Swap Size", "VAE Enabled", "VAE Max Depth", "VAE Max Tile Size", "VAE Swap Size")),
    AxisType("Hypernetwork", str, _network, label_style="bare"),
    AxisType("Hypernet str.", float, _strength),
)
HYPERNETWORK_AXIS = 51
STRENGTH_AXIS = 52
SEED_AXIS = 1


def find_axis(type_: int | str | None) -> int:
    """An axis index from A1111's int, or (ours) its label, case-insensitive; None means Nothing (0)."""
    if type_ is None or type_ == "":
        return 0
    if isinstance(type_, bool):
        raise HypernetError(f"X/Y/Z axis type {type_!r} must be an index into the axis list or an axis label.")
    if isinstance(type_, (int, float)) or (isinstance(type_, str) and type_.strip().lstrip("-").isdigit()):
        index = int(type_)
        if not 0 <= index < len(TXT2IMG_AXES) or index != float(type_):
            raise HypernetError(f"X/Y/Z axis type {type_} is not an axis index (0-{len(TXT2IMG_AXES) - 1}).")
    else:
        labels = {a.label.lower(): i for i, a in enumerate(TXT2IMG_AXES)}
        labels |= {"strength": STRENGTH_AXIS, "hypernetwork strength": STRENGTH_AXIS, "cfg": 6, "scheduler": 17,
                   "checkpoint": 11, "model": 11}
        index = labels.get(str(type_).strip().lower(), -1)
        if index < 0:
            raise HypernetError(f"X/Y/Z axis {type_!r} is unknown; supported axes: {', '.join(supported_labels())}.")
    if not TXT2IMG_AXES[index].supported:
        raise HypernetError(f"X/Y/Z axis {index} ({TXT2IMG_AXES[index].label}) is not supported by hypernet; "
                            f"supported axes: {', '.join(supported_labels())}.")
    return index


def supported_labels() -> list[str]:
    return [f"{a.label} ({i})" for i, a in enumerate(TXT2IMG_AXES) if a.supported and i]


# A1111's range syntax. The "." in the float patterns is a regex wildcard there too; where that makes a plain
# number such as 1e-3 look like a range that does not parse, the text is read as one number instead.
_INT_STEP = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*(?:\]|$))\s*")
_FLOAT_STEP = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*\])?\s*")


def _number(text: str, kind: type) -> Any:
    return kind(text.replace(" ", ""))


def _expand_int(item: str) -> list[int]:
    if m := _INT_STEP.fullmatch(item):
        step = _number(m[3], int) if m[3] else 1
        return list(range(_number(m[1], int), _number(m[2], int) + 1, step))
    if m := _INT_COUNT.fullmatch(item):
        return [int(v) for v in np.linspace(_number(m[1], int), _number(m[2], int), int(m[3]))]
    return [int(item)]


def _expand_float(item: str) -> list[float]:
    try:
        if m := _FLOAT_STEP.fullmatch(item):
            start, end = _number(m[1], float), _number(m[2], float)
            step = _number(m[3], float) if m[3] else 1.0
            return [float(v) for v in np.arange(start, end + step, step)]
        if m := _FLOAT_COUNT.fullmatch(item):
            return [float(v) for v in np.linspace(_number(m[1], float), _number(m[2], float), int(float(m[3])))]
    except ValueError:
        pass
    return [float(item)]


def split_values(text: str) -> list[str]:
    """A1111's value text: comma-separated CSV (quotes protect commas), items stripped, empty items skipped."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [item.strip() for row in rows for item in row if item.strip()]


@dataclass
class Axis:
    """An axis of one plot: its type, its parsed values, and the text they came from (for the infotext)."""

    index: int
    values: list[Any]
    text: str = ""
    fixed: bool = False  # a seed axis whose -1 values were made concrete (infotext "Fixed X Values")

    @property
    def type(self) -> AxisType:
        return TXT2IMG_AXES[self.index]

    @property
    def labels(self) -> list[str]:
        return [self.type.format(v) for v in self.values]


def parse_axis(type_: int | str | None, text: str = "", dropdown: Sequence[Any] | None = None,
               csv_mode: bool = True, which: str = "X") -> Axis:
    """Parse one axis as A1111 does: a dropdown list (choice axes, ``csv_mode`` off) or the value text."""
    index = find_axis(type_)
    kind = TXT2IMG_AXES[index]
    if index == 0:
        return Axis(0, [None], "")
    if not csv_mode and dropdown is not None and kind.kind is str and not kind.permutations:
        items = [str(v) for v in dropdown]
        text = ",".join(f'"{v}"' if "," in v else v for v in items)
    else:
        items = split_values(text)
    try:
        if kind.kind is int:
            values: list[Any] = [v for item in items for v in _expand_int(item)]
        elif kind.kind is float:
            values = [v for item in items for v in _expand_float(item)]
        elif kind.permutations:
            values = list(itertools.permutations(items))
        else:
            values = list(items)
    except ValueError:
        raise HypernetError(f"{which} axis ({kind.label}): {text!r} is not a list of "
                            f"{'integers' if kind.kind is int else 'numbers'} or ranges such as 1-5, 1-10 (+2) "
                            "or 1-10 [5].") from None
    if not values:
        raise HypernetError(f"{which} axis ({kind.label}) has no values; give comma-separated values.")
    return Axis(index, values, text)


def with_network(prompt: str, name: str) -> str:
    """The prompt with hypernetwork ``name``: the first ``<hypernet:...>`` tag renamed (keeping its multiplier),
    else a ``<hypernet:name:1>`` tag appended; ``None`` removes every hypernet tag (the plain model)."""
    tags = [m for m in EXTRA_NETWORK_TAG.finditer(prompt) if m[1] == HYPERNET_TAG_TYPE]
    if name == "None":
        return EXTRA_NETWORK_TAG.sub(lambda m: "" if m[1] == HYPERNET_TAG_TYPE else m[0], prompt).strip()
    if not tags:
        return f"{prompt} <{HYPERNET_TAG_TYPE}:{name}:1>".strip()
    first = tags[0]
    rest = first[2].split(":", 1)[1:] or ["1"]
    return f"{prompt[:first.start()]}<{HYPERNET_TAG_TYPE}:{name}:{rest[0]}>{prompt[first.end():]}"


def with_strength(prompt: str, strength: float) -> str:
    """Every ``<hypernet:NAME...>`` tag's multiplier set to ``strength``."""
    if not any(m[1] == HYPERNET_TAG_TYPE for m in EXTRA_NETWORK_TAG.finditer(prompt)):
        raise HypernetError("the Hypernet str. axis sets the multiplier of the prompt's <hypernet:...> tags, but the "
                            "prompt has none; add a tag or a Hypernetwork axis.")

    def swap(m: re.Match[str]) -> str:
        if m[1] != HYPERNET_TAG_TYPE:
            return m[0]
        return f"<{HYPERNET_TAG_TYPE}:{m[2].split(':', 1)[0]}:{strength:g}>"

    return EXTRA_NETWORK_TAG.sub(swap, prompt)


def axis_from_text(text: str, which: str = "X") -> Axis:
    """An axis as a user writes it on the command line: ``"Hypernet str.: 0.5, 1"`` (label, colon, values)."""
    for a in TXT2IMG_AXES:  # a label such as "Prompt S/R" or "Hypernet str." is matched whole; values may hold ":"
        if text.lower().startswith(a.label.lower() + ":"):
            return parse_axis(a.label, text[len(a.label) + 1:], which=which)
    label, sep, values = text.partition(":")
    if not sep:
        raise HypernetError(f"--{which.lower()} {text!r} must look like \"LABEL: VALUES\", e.g. \"Seed: 1, 2\"; "
                            f"axes: {', '.join(supported_labels())}.")
    return parse_axis(label.strip(), values, which=which)
