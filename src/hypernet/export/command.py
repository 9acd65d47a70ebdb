"""``hypernet export-lora`` and ``hypernet bake``: thin command-line wrappers around :mod:`hypernet.export.api`.

Heavy imports (torch, diffusers) happen inside the commands, so that every other command (and a usage mistake)
answers without loading them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE, lora_dir
from hypernet.errors import HypernetError
from hypernet.settings.cli import console as terminal
from hypernet.settings.cli import field_default, field_option
from hypernet.settings.folders import Folders

if TYPE_CHECKING:
    from hypernet.engine.generate import Generator
    from hypernet.export.api import ExportReport
    from hypernet.export.fit import FitOptions

CHECKPOINT_DIR = Path("models/Stable-diffusion")

HnDir = Annotated[Path, field_option(Folders, "hypernetwork_dir")]
HN_DIR = field_default(Folders, "hypernetwork_dir", Path)  # read when the command runs
Check = Annotated[int, typer.Option("--check", help="Prompts to generate with the network and with the export to "
                                    "measure the image difference (0: skip).")]
Prompts = Annotated[Optional[Path], typer.Option("--prompts", help="Prompts (one a line) for fitting non-linear "
                                                 "networks and for --check; default: a built-in varied list.")]
Size = Annotated[Optional[int], typer.Option(help="Image size for fitting and --check (default: the model's own).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the whole report (every layer) as JSON.")]


def _prompts(path: Path | None) -> list[str]:
    from hypernet.export.fit import DEFAULT_PROMPTS

    if path is None:
        return list(DEFAULT_PROMPTS)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise HypernetError(f"{path}: cannot read the prompts file ({e.__class__.__name__})") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise HypernetError(f"{path}: no prompts in the file (one per line; # starts a comment)")
    return prompts


def _generator(model: str | None, console: Console) -> tuple[Generator, str]:
    from hypernet.engine.generate import Generator
    from hypernet.engine.loading import open_model

    if model is None:
        console.print(TOY_NOTE, style="dim", markup=False)
        model = str(TOY_CHECKPOINT)
    with console.status(escape(f"loading {model}")):
        pipe, info = open_model(model)
    return Generator(pipe, info), model


def _fit(prompts: list[str], size: int | None, generator: Generator) -> FitOptions:
    from hypernet.export.fit import FitOptions

    side = size or int(generator.pipe.unet.config.sample_size) * int(generator.pipe.vae_scale_factor)
    return FitOptions(prompts=prompts, width=side, height=side)


def show(report: ExportReport, console: Console, as_json: bool) -> None:
    """The report: one row per (width, projection) group of layers, then the image check."""
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    groups: dict[tuple[int, str], list[dict[str, object]]] = {}
    for row in report.layers:
        groups.setdefault((int(row["width"]), str(row["proj"])), []).append(row)  # type: ignore[arg-type]
    fitted = report.method.startswith("fit")
    table = Table("context width", "projection", "layers", "rank", "mean error", "max error",
                  *(["fit error (mean)"] if fitted else []))
    for (width, proj), rows in sorted(groups.items()):
        ranks = sorted({int(r["rank"]) for r in rows})  # type: ignore[arg-type]
        errors = [float(r["error"]) for r in rows]  # type: ignore[arg-type]
        extra = [f"{sum(float(r['fit_error']) for r in rows) / len(rows):.3f}"] if fitted else []  # type: ignore[arg-type]
        table.add_row(str(width), proj, str(len(rows)), "-".join(map(str, [ranks[0], ranks[-1]][: 1 + (len(ranks) > 1)])),
                      f"{sum(errors) / len(errors):.2e}", f"{max(errors):.2e}", *extra)
    console.print(table)
    console.print(f"method {report.method}; relative error of all deltas together {report.overall_error:.2e}; "
                  f"value bias norm {report.value_bias_norm:.3g}; dropped key bias (cancels in softmax) "
                  f"{report.dropped_key_bias:.3g}")
    if report.images:
        i = report.images
        console.print(f"images ({len(i.prompts)} prompts, seeds {i.seeds}): final latent differs by {i.latent_relative:.2e} "
                      f"relative (no network at all: {i.effect_relative:.2e}); pixels by {i.pixel_mean_abs:.2f} mean, "
                      f"{i.pixel_max_abs:.0f} max (0-255)")
    for note in report.notes:
        console.print(note, style="dim", markup=False)
    console.print(f"wrote {report.path}", markup=False)


def export_lora(
    names: Annotated[list[str], typer.Argument(metavar="NAME[:M]...", help="Hypernetworks, applied in order.")],
    model: Annotated[Optional[str], typer.Option(help="Checkpoint whose attention weights the LoRA is made for "
                                                 "(default: hypernet's toy model).")] = None,
    multiplier: Annotated[float, typer.Option(help="Multiplier for names without :M.")] = 1.0,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank (best rank-R approximation); default: exact.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Exact deltas at their full rank (the default).")] = False,
    format: Annotated[str, typer.Option(help="kohya (A1111, ComfyUI) or diffusers (load_lora_weights).")] = "kohya",
    no_bias: Annotated[bool, typer.Option("--no-bias", help="kohya: leave out the value bias (diff_b), so that "
                                          "diffusers loads the file too.")] = False,
    fp16: Annotated[Optional[bool], typer.Option("--fp16/--fp32", help="Tensor precision (default: fp32 exact, "
                                                 "fp16 otherwise).")] = None,
    check: Check = 2,
    prompts: Prompts = None,
    size: Size = None,
    dir: HnDir = HN_DIR,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Output .safetensors (default: NAME.safetensors in the LoRA folder: $HYPERNET_LORA_DIR or models/Lora).")] = None,
    as_json: AsJson = False,
) -> None:
    """Export hypernetworks as one LoRA (exact for linear networks; fitted for non-linear ones)."""
    import torch

    from hypernet.export.api import export_lora as export, resolve_networks

    if rank is not None and full:
        raise HypernetError("give either --rank R or --full, not both")
    console = terminal(stderr=as_json)
    entries = resolve_networks(names, dir, multiplier)
    generator, _ = _generator(model, console)
    prompt_list = _prompts(prompts)
    target = out or lora_dir() / f"{'+'.join(net.name for net, _ in entries)}.safetensors"
    dtype = None if fp16 is None else (torch.float16 if fp16 else torch.float32)
    with console.status("exporting"):
        report = export(generator, entries, target, rank=rank, format=format, include_bias=not no_bias,  # type: ignore[arg-type]
                        dtype=dtype, fit=_fit(prompt_list, size, generator), check_prompts=prompt_list[:check],
                        size=size)
    show(report, console, as_json)


def bake(
    checkpoint: Annotated[Path, typer.Argument(help="Single-file checkpoint (.safetensors/.ckpt) to bake into.")],
    names: Annotated[list[str], typer.Argument(metavar="NAME[:M]...", help="Hypernetworks, applied in order.")],
    approximate: Annotated[bool, typer.Option("--approximate", help="Bake non-linear networks as their best linear "
                                              "fit (otherwise they are refused).")] = False,
    check: Check = 2,
    prompts: Prompts = None,
    size: Size = None,
    dir: HnDir = HN_DIR,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Output .safetensors (default: "
                                                "models/Stable-diffusion/CKPT+NAME.safetensors).")] = None,
    as_json: AsJson = False,
) -> None:
    """Write a checkpoint with hypernetworks folded into its attention weights: use it with no tag, anywhere."""
    from hypernet.export.api import bake as bake_checkpoint, resolve_networks

    console = terminal(stderr=as_json)
    entries = resolve_networks(names, dir)
    if not checkpoint.is_file():
        raise HypernetError(f"{checkpoint}: bake needs a single-file checkpoint (.safetensors or .ckpt).")
    generator, _ = _generator(str(checkpoint), console)
    prompt_list = _prompts(prompts)
    target = out or CHECKPOINT_DIR / f"{checkpoint.stem}+{'+'.join(net.name for net, _ in entries)}.safetensors"
    with console.status("baking"):
        report = bake_checkpoint(generator, checkpoint, entries, target, approximate=approximate,
                                 fit=_fit(prompt_list, size, generator), check_prompts=prompt_list[:check], size=size)
    show(report, console, as_json)
