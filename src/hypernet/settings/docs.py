"""The README's settings and limits tables, written from the models (``python -m hypernet.settings.docs README.md``).

Each table sits between ``<!-- settings:NAME -->`` and ``<!-- /settings:NAME -->`` markers; a test fails when the
README's copy differs from what the models say, so the tables cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from hypernet.settings import limits as L
from hypernet.settings.base import surface_of
from hypernet.settings.cli import bounds_text, choices, is_argument
from hypernet.settings.create import CreateSettings
from hypernet.settings.folders import Folders
from hypernet.settings.generate import GenerateSettings
from hypernet.settings.preprocess import PreprocessSettings
from hypernet.settings.serve import ServeSettings
from hypernet.settings.train import TrainSettings


def _default(model: type[BaseModel], name: str) -> str:
    default = model.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, list):
        return "`" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) + "`"
    if default is None or default == "":
        return ""
    return f"`{getattr(default, 'value', default)}`"


def settings_table(model: type[BaseModel], *, own_fields_only: bool = False) -> str:
    """One row per field: the API name (A1111's), the command-line flag, the default, the valid values, the help.
    ``own_fields_only`` leaves out the fields of the model's base (e.g. the folders, which have their own table)."""
    rows = ["| API (A1111) name | command line | default | valid values | meaning |", "|---|---|---|---|---|"]
    inherited = {name for base in model.__mro__[1:] for name in getattr(base, "model_fields", {})}
    for name, info in model.model_fields.items():
        if own_fields_only and name in inherited:
            continue
        on = surface_of(info)
        flags = on.flags(name)
        cli = ("`" + flags[0].split("/")[0] + "`") if flags and not is_argument(flags) else (flags[0] if flags else "")
        api = f"`{info.alias or name}`" if on.api else "(not over HTTP)"
        valid = on.expect or ", ".join(str(c) for c in choices(info.annotation)) or \
            bounds_text(info).replace(" Range: ", "").rstrip(".")
        help = (info.description or "").replace("|", "\\|")
        rows.append(f"| {api} | {cli} | {_default(model, name)} | {valid} | {help} |")
    return "\n".join(rows)


def limits_table() -> str:
    """The caps that hold on every path."""
    rows = [
        ("pixels per image (generation, hires result, previews, training, preprocess)", f"{L.MAX_PIXELS:,} (2048x2048)"),
        ("image side", f"{L.MIN_SIDE} to {L.MAX_SIDE}; not a multiple of 8: floored (generation) with a warning"),
        ("sampling steps (generation, hires pass, training previews)", f"1 to {L.MAX_STEPS}"),
        ("batch size x batch count", f"{L.MAX_BATCH_SIZE} x {L.MAX_BATCH_COUNT}, at most {L.MAX_IMAGES} images"),
        ("CFG scale", f"0 to {L.MAX_CFG:g}"),
        ("training steps", f"1 to {L.MAX_TRAIN_STEPS:,}"),
        ("training batch size, gradient accumulation", f"1 to {L.MAX_TRAIN_BATCH}, 1 to {L.MAX_GRADIENT_STEPS}"),
        ("network widths", f"1 to {L.MAX_NETWORK_WIDTHS} widths, each 1 to {L.MAX_NETWORK_WIDTH}; over HTTP and in "
                           "the web UI at most the loaded model's widest attention context"),
        ("layer structure", f"2 to {L.MAX_LAYER_ENTRIES} entries, each above 0 and at most {L.MAX_LAYER_MULTIPLIER:g}; "
                            "no layer of width 0"),
        ("network size", f"at most {L.MAX_NETWORK_PARAMETERS:,} parameters (1 GiB of fp32)"),
        ("preprocess target side", f"64 to {L.MAX_PREPROCESS_SIDE}, a multiple of 8"),
        ("decoded input images (init images, PNG info, --init-image, training and preprocessing data)",
         f"{L.MAX_INPUT_PIXELS:,} pixels (8192x8192), read from the header before decoding"),
        ("seeds", L.SEED_EXPECT),
        ("numbers", "finite only: NaN and infinity are refused everywhere"),
        ("prompt length", f"{L.MAX_PROMPT_CHARS:,} characters"),
    ]
    return "\n".join(["| what | limit |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def tables() -> dict[str, Callable[[], str]]:
    """Marker name -> table writer."""
    return {
        "limits": limits_table,
        "create": lambda: settings_table(CreateSettings),
        "generate": lambda: settings_table(GenerateSettings),
        "train": lambda: settings_table(TrainSettings),
        "preprocess": lambda: settings_table(PreprocessSettings),
        "folders": lambda: settings_table(Folders),
        "serve": lambda: settings_table(ServeSettings, own_fields_only=True),
    }


def rewrite(text: str) -> str:
    """``text`` with every marked table replaced by what the models say now."""
    for name, write in tables().items():
        pattern = re.compile(rf"(<!-- settings:{name} -->)\n.*?(<!-- /settings:{name} -->)", re.S)
        text = pattern.sub(lambda m: f"{m.group(1)}\n{write()}\n{m.group(2)}", text)
    return text


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(rewrite(readme.read_text(encoding="utf-8")), encoding="utf-8")
