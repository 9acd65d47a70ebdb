"""The README's demo: hypernet's embedded toy model draws what it is asked, learns a style it never saw from a dozen
images through a hypernetwork, and the change is measured, not just shown.

Everything runs through the public pieces a user would use: ``load_pipeline`` on a single-file checkpoint,
``Generator`` with ``<hypernet:style:1>`` in the prompt, ``train_hypernetwork`` on a folder of captioned images.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the demo's output is the story, not library chatter
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator
from hypernet.engine.infotext import image_bytes
from hypernet.fileio import atomic_write_bytes
from hypernet.toy.style import grid, measure_style, style_scenes, train_style, write_style_dataset
from hypernet.toy.world import detect_colour, detect_shape, split_scenes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where the demo writes its files")
    parser.add_argument("--steps", type=int, default=300, help="hypernetwork training steps")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    out: Path = args.out
    start = time.monotonic()

    pipe, info = load_pipeline(CHECKPOINT)
    generator = Generator(pipe, info, hypernetwork_dir=out / "hypernetworks")
    console.print(f"[bold]1. Model[/bold] {CHECKPOINT.name}: an SD 1.x single file trained by hypernet on its toy world "
                  f"(text width {info.text_widths[0]}), loaded like any user's checkpoint.")

    scenes = split_scenes()[1][:6]  # held-out prompts: never trained on
    plain = measure_style(generator, scenes)
    table = Table("held-out prompt", "colour seen", "shape seen", "sepia score")
    for scene, image, score in zip(scenes, plain.images, plain.scores):
        table.add_row(scene.caption, _mark(detect_colour(image), scene.colour), _mark(detect_shape(image), scene.shape), f"{score:.2f}")
    console.print(table)

    data = write_style_dataset(out / "style-data")
    console.print(f"[bold]2. Style data[/bold] {len(style_scenes())} sepia-toned scenes with captions in {data} "
                  "(a palette the model never saw)")
    with Progress(TextColumn("[bold]3. Training[/bold] style"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=args.steps, loss="-")

        def report(p) -> None:  # noqa: ANN001
            bar.update(task, completed=p.step, **({"loss": f"{p.loss:.4f}"} if p.loss is not None else {}))

        result = train_style(pipe, info, data, out / "hypernetworks", out / "train-log", steps=args.steps, progress=report)
    console.print(f"   {result.message}")

    styled = measure_style(generator, scenes, tag="<hypernet:style:1>")
    picture = grid([plain.images, styled.images], scale=3)
    path = out / "style-grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, image_bytes(picture, None))
    console.print(f"[bold]4. Same prompts and seeds with <hypernet:style:1>[/bold]: grid (top: without, bottom: with) {path}")
    kept = sum(detect_colour(image) is not None for image in styled.images)
    console.print(f"   sepia score without the tag {plain.mean:.2f}, with it {styled.mean:.2f} "
                  f"(share of sepia pixels; {kept}/{len(scenes)} styled images still show a shape) "
                  f"- demo took {time.monotonic() - start:.0f} s")


def _mark(seen: str | None, wanted: str) -> str:
    return f"[green]{seen}[/green]" if seen == wanted else f"[red]{seen or 'nothing'}[/red] (asked {wanted})"


if __name__ == "__main__":
    main()
