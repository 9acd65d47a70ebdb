"""``hypernet grid``: an X/Y/Z plot from the command line, e.g. a training run's snapshots x strengths x seeds.

Heavy imports (torch, diffusers) happen inside the command, so other CLI commands stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE, TOY_SIZE
from hypernet.defaults import hypernetwork_dir as default_hypernetwork_dir
from hypernet.errors import HypernetError
from hypernet.fileio import next_number
from hypernet.settings import GenerateSettings
from hypernet.settings.cli import console as terminal
from hypernet.settings.cli import field_default, field_option

if TYPE_CHECKING:
    from hypernet.engine.generate import Generator
    from hypernet.grid.plot import PlotResult

AXIS_HELP = ('"LABEL: VALUES", e.g. "Hypernetwork: style-100, style-200", "Hypernet str.: 0.5, 1", "Seed: 1, 2", '
             '"Steps: 10-30 (+10)", "CFG Scale: 5, 7", "Sampler: Euler a, DPM++ 2M", "Schedule type: Karras", '
             '"Prompt S/R: cat, dog", "Checkpoint name: a.safetensors, b.safetensors", "Size: 512x512"')


def parse_size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise HypernetError(f"--size {size!r} must look like 512x768") from None
    return width, height


def grid(
    prompt: Annotated[str, typer.Argument(help="Prompt (A1111 syntax; <hypernet:NAME:WEIGHT> tags apply networks).")],
    x: Annotated[Optional[str], typer.Option("-x", "--x", help=f"X axis (columns): {AXIS_HELP}.")] = None,
    y: Annotated[Optional[str], typer.Option("-y", "--y", help="Y axis (rows), same form.")] = None,
    z: Annotated[Optional[str], typer.Option("-z", "--z", help="Z axis (one grid each, side by side), same form.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Checkpoint; default: hypernet's embedded toy model.")] = None,
    hypernetwork_dir: Annotated[Optional[Path], typer.Option(
        help="Where network names are looked up (e.g. a run's hypernetworks/ folder of snapshots); files named on "
             "a Hypernetwork axis bring their own folder. Default $HYPERNET_HYPERNETWORK_DIR, else "
             "models/hypernetworks.")] = None,
    negative: Annotated[str, field_option(GenerateSettings, "negative_prompt")] = field_default(GenerateSettings, "negative_prompt"),
    sampler: Annotated[str, field_option(GenerateSettings, "sampler_name")] = field_default(GenerateSettings, "sampler_name"),
    scheduler: Annotated[str, field_option(GenerateSettings, "scheduler")] = field_default(GenerateSettings, "scheduler"),
    steps: Annotated[int, field_option(GenerateSettings, "steps")] = field_default(GenerateSettings, "steps"),
    cfg: Annotated[float, field_option(GenerateSettings, "cfg_scale")] = field_default(GenerateSettings, "cfg_scale"),
    seed: Annotated[int, typer.Option(help="Seed; -1: one random seed for the whole plot. Range: -1 to 4294967295.")
                    ] = field_default(GenerateSettings, "seed"),
    size: Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT (default 512x512; 64x64 for the toy model).")] = None,
    clip_skip: Annotated[int, field_option(GenerateSettings, "clip_skip")] = field_default(GenerateSettings, "clip_skip"),
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 model weights.")] = "fp32",
    legend: Annotated[bool, typer.Option(help="Draw axis labels.")] = True,
    sub_grids: Annotated[bool, typer.Option("--sub-grids", help="Also save each Z value's grid.")] = False,
    keep_random_seeds: Annotated[bool, typer.Option("--keep-random-seeds",
                                                    help="Keep -1 for seeds: a new random seed in every cell.")] = False,
    vary_seeds: Annotated[str, typer.Option(help="Axes whose index is added to the seed, e.g. \"x\" or \"x,y\".")] = "",
    margin: Annotated[int, typer.Option(help="Pixels between cells.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder: every cell's image and the grid, with infotext.")] = Path("outputs"),
) -> None:
    """Generate an X/Y/Z plot (A1111's script): every cell is the image a single generate with its settings gives."""
    from hypernet.engine.generate import Generator, Hooks, Settings
    from hypernet.engine.loading import open_model
    from hypernet.grid.axes import HYPERNETWORK_AXIS, Axis, axis_from_text
    from hypernet.grid.plot import Options, Plot, network_folder, run_plot

    console = terminal()
    if model is None:
        console.print(TOY_NOTE, style="dim", markup=False)
        model, size = str(TOY_CHECKPOINT), size or f"{TOY_SIZE}x{TOY_SIZE}"
    width, height = parse_size(size or "512x512")
    # the base settings' limits (the same sentences as generate and the API), before the model loads
    GenerateSettings(prompt=prompt, negative_prompt=negative, sampler_name=sampler, scheduler=scheduler, steps=steps,
                     cfg_scale=cfg, seed=seed, width=width, height=height, clip_skip=clip_skip)
    axes = [axis_from_text(text, which) if text else Axis(0, [None]) for text, which in ((x, "X"), (y, "Y"), (z, "Z"))]
    folder = hypernetwork_dir
    for axis in axes:
        if axis.index == HYPERNETWORK_AXIS:
            folder, axis.values = network_folder(axis.values, folder)
    vary = {v.strip().lower() for v in vary_seeds.split(",") if v.strip()}
    if vary - {"x", "y", "z"}:
        raise HypernetError(f"--vary-seeds {vary_seeds!r} must name axes among x, y, z, e.g. \"x,y\".")
    options = Options(draw_legend=legend, include_sub_grids=sub_grids, no_fixed_seeds=keep_random_seeds,
                      vary_seeds=tuple(a in vary for a in "xyz"), margin_size=margin)  # type: ignore[arg-type]
    plot = Plot(*axes, options=options)
    base = Settings(prompt, negative, sampler, scheduler, steps, cfg, seed, width, height, clip_skip=clip_skip)

    def load(checkpoint: str) -> Generator:
        with console.status(escape(f"loading {checkpoint}")):
            pipe, info = open_model(checkpoint, precision=precision)
        return Generator(pipe, info, folder or default_hypernetwork_dir())

    generator = load(model)
    loaded: dict[str | None, Generator] = {None: generator}

    def switch(checkpoint: str | None) -> Generator:
        if checkpoint not in loaded:
            loaded.clear()  # one extra model in memory at a time
            loaded[None] = generator
            loaded[checkpoint] = load(checkpoint)
        return loaded[checkpoint]

    nx, ny, nz = plot.shape
    columns = (TextColumn(f"X/Y/Z plot {nx}x{ny}x{nz}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("plot", total=None)
        result = run_plot(plot, base, generator, switch_model=switch,
                          hooks=Hooks(progress=lambda done, total: bar.update(task, completed=done, total=total)))
    for warning in result.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    for path in save_plot(result, out):
        console.print(f"saved {path}", markup=False)


def save_plot(result: PlotResult, out: Path) -> list[Path]:
    """Every cell as ``NNNNN-SEED.png`` and each grid as ``xyz_grid-NNNNN.png``, with their infotexts, numbered on
    from what the folder holds so nothing is overwritten. Returns the paths, cells first."""
    from hypernet.engine.infotext import save_image

    out.mkdir(parents=True, exist_ok=True)
    start = next_number(out, prefixes=("xyz_grid-",))
    paths = []
    for image, text, seed in zip(result.cells, result.cell_infotexts, result.cell_seeds):
        paths.append(out / f"{start + len(paths):05d}-{seed}.png")
        save_image(image, paths[-1], text or None)
    for image, text in zip(result.images, result.infotexts):
        paths.append(out / f"xyz_grid-{start + len(paths):05d}.png")
        save_image(image, paths[-1], text or None)
    return paths

