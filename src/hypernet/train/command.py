"""``hypernet train NAME --data DIR --model CKPT``: A1111's Train Hypernetwork form as a command.

The options are derived from :class:`~hypernet.settings.train.TrainSettings` (the kebab-case of A1111's parameter
names: ``--learn-rate``, ``--gradient-step``, ``--clip-grad-mode``, ...). Register with ``app.command()(train)``;
``python -m hypernet.train`` runs it on its own, which is also how ``accelerate launch -m hypernet.train ...`` trains
on several processes or GPUs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import typer

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE, TOY_SIZE
from hypernet.defaults import hypernetwork_dir as default_hypernetwork_dir
from hypernet.settings import cli as settings_cli
from hypernet.settings.train import TrainSettings
from hypernet.train.config import TrainConfig

if TYPE_CHECKING:  # the loop imports torch and diffusers; the CLI loads it only when training
    from hypernet.train.loop import TrainProgress, TrainResult

PREVIEW_FIELDS = ("preview_prompt", "preview_negative_prompt", "preview_steps", "preview_sampler_name",
                  "preview_cfg_scale", "preview_seed", "preview_width", "preview_height")


def _flags(values: dict[str, Any], extras: dict[str, Any]) -> None:
    """Command-line conveniences: --tensorboard logs images too, --keep-models-on-gpu is the opposite of A1111's
    unload setting, and any --preview-* option but the seed reads all of them (A1111's 'Read parameters from
    txt2img')."""
    if values.get("training_enable_tensorboard"):
        values["training_tensorboard_save_images"] = True
    if extras.pop("keep_models_on_gpu"):
        values["unload_models_when_training"] = False
    values.setdefault("hypernetwork_dir", str(default_hypernetwork_dir()))
    if any(key in values for key in PREVIEW_FIELDS if key != "preview_seed"):
        values["preview_from_txt2img"] = True


def _train(settings: TrainSettings) -> None:
    """Train a hypernetwork on a folder of images, like A1111's Train tab: resumable, NaN-safe, Ctrl-C saves."""
    from rich.console import Console

    values = settings.model_dump()
    TrainConfig(**values).check()  # missing folders and files, before torch and the model load

    from hypernet.train.loop import train_hypernetwork

    given = settings.model_fields_set
    if settings.model is None:
        Console(stderr=True).print(TOY_NOTE, style="dim", markup=False)
        values["model"] = str(TOY_CHECKPOINT)
        for name in ("training_width", "training_height"):
            if name not in given:
                values[name] = TOY_SIZE
    for preview, training in (("preview_width", "training_width"), ("preview_height", "training_height")):
        if preview not in given:
            values[preview] = values[training]  # previews at the training size unless asked otherwise
    config = TrainConfig(**values)
    result = train_hypernetwork(config, progress=_ProgressBar())
    _print_result(result)
    if result.stopped == "diverged":
        raise typer.Exit(1)


train = settings_cli.command(
    TrainSettings, _train, before=_flags,
    extra=[settings_cli.option("keep_models_on_gpu", bool, False, "--keep-models-on-gpu",
                               help="Keep the VAE and text encoders on the GPU after caching.")],
)
class _ProgressBar:
    """rich progress: step/final step, loss, learning rate, it/s and ETA; only the main process shows one."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.bar = None
        self.task = None

    def __call__(self, p: TrainProgress) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if p.phase == "preparing":
            self.console.print(p.message)
            return
        if self.bar is None and p.phase != "done":
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("training", total=p.final_step, completed=p.step, loss="-", lr="-", speed="")
        if self.bar is None:
            return
        loss = p.loss_avg if p.loss_avg is not None else p.loss
        self.bar.update(
            self.task, completed=p.step, description={"preview": "preview", "saving": "saving", "health": "health"}.get(p.phase, f"epoch {p.epoch}"),
            loss=f"{loss:.5f}" if loss is not None else "-", lr=f"{p.learn_rate:.3g}",
            speed=f"{p.it_per_s:.2f} it/s" if p.it_per_s else "",
        )
        if p.phase == "done":
            self.bar.stop()
            self.bar = None


def _print_result(result: TrainResult) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # accelerate launch: the main process speaks for all
        return
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(result.message)
    if result.log_directory:
        console.print(f"Snapshots, previews, loss.png, contact_sheet.png and health.csv: {result.log_directory}")
        if result.health:
            console.print(f"Compare the best snapshots side by side: hypernet pick {result.log_directory}")
