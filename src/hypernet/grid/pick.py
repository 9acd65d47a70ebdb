"""``hypernet pick RUN_DIR``: the guide's "find the image right before distortion" as one command.

It prints a training run's snapshots with their health figures (``health.csv``: style effect, content fidelity,
image statistics, validation loss and the recommendation; for runs without it, the training loss around each
snapshot), then draws an X/Y/Z plot of the best candidates (the recommended snapshot and its neighbours) at a few
strengths and seeds, so that the choice is made on images side by side.

Heavy imports (torch, diffusers) happen inside the command, so other CLI commands stay fast.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE
from hypernet.errors import HypernetError
from hypernet.grid.command import parse_size, save_plot
from hypernet.train.outputs import HEALTH_CSV

COLUMNS = {"train_loss": "train loss", "validation_loss": "validation loss", "style": "style", "fidelity": "fidelity",
           "saturation": "saturation", "high_frequency": "high freq.", "clipping": "clipping"}
SNAPSHOT = re.compile(r"(.+)-(\d+)\.(pt|safetensors)")


@dataclass
class Snapshot:
    step: int
    path: Path
    figures: dict[str, str] = field(default_factory=dict)
    recommended: bool = False
    distorted: str = ""


def read_run(run_dir: Path) -> tuple[list[Snapshot], dict[str, Any]]:
    """The run's snapshots by step with their figures, and its settings JSON (empty when missing)."""
    if not run_dir.is_dir():
        raise HypernetError(f"{run_dir}: no such folder; pass a training run's folder, <log-directory>/<date>/<name>.")
    folder = run_dir / "hypernetworks"
    if not folder.is_dir():
        raise HypernetError(f"{run_dir}: not a training run folder (it has no hypernetworks/ folder of snapshots); "
                            "pass <log-directory>/<date>/<name>.")
    snapshots = {int(m[2]): Snapshot(int(m[2]), p) for p in folder.iterdir() if (m := SNAPSHOT.fullmatch(p.name))}
    if not snapshots:
        raise HypernetError(f"{folder}: no snapshots (NAME-STEP.pt) in this run; train with --save-every N.")
    health = run_dir / HEALTH_CSV
    if health.is_file():
        with open(health, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                snap = snapshots.get(int(row.get("step") or -1))
                if snap is not None and row.get("snapshot"):
                    snap.figures = {k: row.get(k) or "" for k in COLUMNS}
                    snap.recommended = row.get("recommended") == "yes"
                    snap.distorted = row.get("distorted") or ""
    else:
        _losses_near(run_dir / "hypernetwork_loss.csv", snapshots)
    settings: dict[str, Any] = {}
    for path in sorted(run_dir.glob("settings-*.json"))[-1:]:
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise HypernetError(f"{path}: not a readable settings JSON; pass --prompt, --model and --size.") from None
    return [snapshots[s] for s in sorted(snapshots)], settings


def _losses_near(path: Path, snapshots: dict[int, Snapshot]) -> None:
    """Runs without health.csv: the mean training loss of the CSV rows since the previous snapshot."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh) if r.get("step") and r.get("loss")]
    previous = 0
    for step in sorted(snapshots):
        values = [loss for s, loss in rows if previous < s <= step]
        if values:
            snapshots[step].figures["train_loss"] = f"{sum(values) / len(values):.6g}"
        previous = step


def candidates(snapshots: list[Snapshot], count: int) -> list[Snapshot]:
    """The recommended snapshot and its neighbours (the change from one to the next is what to judge); without a
    recommendation, the last ``count`` snapshots."""
    best = next((i for i, s in enumerate(snapshots) if s.recommended), None)
    if best is None:
        return snapshots[-count:]
    start = max(0, min(best - (count - 1) // 2, len(snapshots) - count))
    return snapshots[start:start + count]


def pick(
    run_dir: Annotated[Path, typer.Argument(help="A training run's folder: <log-directory>/<date>/<name>.")],
    prompt: Annotated[Optional[str], typer.Option(help="Prompt for the grid; default: the run's preview prompt or "
                                                  "its first caption.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Checkpoint; default: the one the run trained on (its "
                                                 "settings JSON), else the toy model.")] = None,
    candidates_count: Annotated[int, typer.Option("--candidates", help="Snapshots in the grid (columns).")] = 3,
    strengths: Annotated[str, typer.Option(help="Hypernet str. values (rows).")] = "0.75, 1",
    seeds: Annotated[str, typer.Option(help="Seeds (one grid each).")] = "1, 2",
    steps: int = 20,
    cfg: Annotated[float, typer.Option(help="CFG scale.")] = 7.0,
    size: Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT; default: the run's training size.")] = None,
    no_grid: Annotated[bool, typer.Option("--no-grid", help="Only print the figures.")] = False,
) -> None:
    """Show a training run's snapshots with their health figures and draw a grid of the best candidates."""
    console = Console(soft_wrap=True)
    snapshots, settings = read_run(run_dir)
    table = Table("step", "snapshot", *COLUMNS.values(), "note", title=str(run_dir))
    for s in snapshots:
        note = "[green]recommended[/green]" if s.recommended else (f"[yellow]{s.distorted}[/yellow]" if s.distorted else "")
        table.add_row(str(s.step), s.path.name, *(s.figures.get(k, "") for k in COLUMNS), note)
    console.print(table)
    if not any(s.recommended for s in snapshots):
        console.print("[dim]no recommendation in this run (no health.csv, or every snapshot over-cooked); the grid "
                      "shows the last snapshots.[/dim]")
    if no_grid:
        return
    if candidates_count < 1:
        raise HypernetError(f"--candidates is {candidates_count}; expected 1 or more snapshots.")
    chosen = candidates(snapshots, candidates_count)
    width, height = parse_size(size) if size else (_int(settings.get("training_width")), _int(settings.get("training_height")))
    paths = draw_candidates(run_dir, chosen, prompt or _default_prompt(settings), model or _str(settings.get("model")),
                            strengths, seeds, steps, cfg, width, height, console)
    console.print(f"snapshots {', '.join(str(s.step) for s in chosen)} x strengths {strengths} x seeds {seeds}: "
                  f"{paths[-1]}")


def draw_candidates(run_dir: Path, chosen: list[Snapshot], prompt: str, model: str | None, strengths: str, seeds: str,
                    steps: int, cfg: float, width: int | None, height: int | None, console: Console) -> list[Path]:
    """The plot (candidates x strengths x seeds) in ``RUN_DIR/pick/``, each cell and the grid with infotext."""
    from hypernet.engine.generate import Generator, Hooks, Settings
    from hypernet.engine.loading import open_model
    from hypernet.engine.model_defaults import model_defaults
    from hypernet.grid.axes import parse_axis
    from hypernet.grid.plot import Plot, run_plot

    if model is None:
        console.print(f"[dim]{TOY_NOTE}[/dim]")
        model = str(TOY_CHECKPOINT)
    with console.status(f"loading {model}"):
        pipe, info = open_model(model)
    generator = Generator(pipe, info, run_dir / "hypernetworks")
    plot = Plot(parse_axis("Hypernetwork", ", ".join(s.path.stem for s in chosen)),
                parse_axis("Hypernet str.", strengths, which="Y"), parse_axis("Seed", seeds, which="Z"))
    # unset values (the sampler; the size when the run does not say) are the model's defaults
    base = model_defaults(pipe, model).complete(Settings(prompt, steps=steps, cfg_scale=cfg, width=width,
                                                         height=height))
    with console.status("drawing the candidates") as status:
        result = run_plot(plot, base, generator, hooks=Hooks(
            progress=lambda done, total: status.update(f"drawing the candidates: step {done}/{total}")))
    return save_plot(result, run_dir / "pick")


def _default_prompt(settings: dict[str, Any]) -> str:
    if settings.get("preview_prompt"):
        return str(settings["preview_prompt"])
    data = Path(str(settings.get("data_root") or ""))
    captions = sorted(data.glob("*.txt")) if settings.get("data_root") and data.is_dir() else []
    if captions:
        return captions[0].read_text(encoding="utf-8").strip()
    raise HypernetError("the run does not say which prompt to draw (no preview prompt, no captions in its data_root); "
                        "pass --prompt.")


def _str(value: object) -> str | None:
    return str(value) if value else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value else None
