"""``hypernet train NAME --data DIR --model CKPT``: A1111's Train Hypernetwork form as a command.

The options are derived from :class:`~hypernet.settings.train.TrainSettings` (the kebab-case of A1111's parameter
names: ``--learn-rate``, ``--gradient-step``, ``--clip-grad-mode``, ...). Register with ``app.command()(train)``;
``python -m hypernet.train`` runs it on its own, which is also how ``accelerate launch -m hypernet.train ...`` trains
on several processes or GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE
from hypernet.settings import cli as settings_cli
from hypernet.settings.train import TrainSettings
from hypernet.train.config import WARNING, TrainConfig

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
    if any(key in values for key in PREVIEW_FIELDS if key != "preview_seed"):
        values["preview_from_txt2img"] = True


def _train(settings: TrainSettings) -> None:
    """Train a hypernetwork on a folder of images, like A1111's Train tab: resumable, NaN-safe, Ctrl-C saves."""
    values = settings.model_dump()
    TrainConfig(**values).check()  # missing folders and files, before torch and the model load

    from hypernet.engine.model_defaults import checkpoint_defaults
    from hypernet.train.loop import train_hypernetwork

    given = settings.model_fields_set
    if settings.model is None:
        settings_cli.console(stderr=True).print(TOY_NOTE, style="dim", markup=False)
        values["model"] = str(TOY_CHECKPOINT)
    # what the user gave, over what the checkpoint records (the toy model: its size, steps, rate, batch, template),
    # over A1111's defaults
    recorded = checkpoint_defaults(values["model"]).training()
    values |= {name: value for name, value in recorded.items()
               if name not in given and name not in ("preview_width", "preview_height")}
    for preview, training in (("preview_width", "training_width"), ("preview_height", "training_height")):
        if preview not in given:
            values[preview] = values[training]  # previews at the training size unless asked otherwise
    config = TrainConfig(**values)
    bar = _ProgressBar()
    result = train_hypernetwork(config, progress=bar)
    _print_result(result, shown=bar.shown)
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
        self.console = settings_cli.console(stderr=True)
        self.bar = None
        self.task = None
        self.shown: set[str] = set()  # messages printed already (warnings are printed when they happen)

    def __call__(self, p: TrainProgress) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if p.phase == "preparing":
            if p.message.startswith(WARNING):
                self.console.print(f"warning: {p.message.removeprefix(WARNING)}", style="yellow", markup=False)
                self.shown.add(p.message.removeprefix(WARNING))
            else:
                self.console.print(p.message, markup=False)
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


def _print_result(result: TrainResult, shown: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    if int(os.environ.get("RANK", "0")) != 0:  # accelerate launch: the main process speaks for all
        return
    from hypernet.train.outputs import made_files

    console = settings_cli.console(stderr=True)
    for warning in result.warnings:
        if warning not in shown:
            console.print(f"warning: {warning}", style="yellow", markup=False)
    console.print(result.message, markup=False)
    made = made_files(Path(result.log_directory)) if result.log_directory else []
    if made:
        console.print(f"In {result.log_directory}: {', '.join(made)}.", markup=False)
    if result.health and result.log_directory:
        console.print(f"Compare the best snapshots side by side: hypernet pick {result.log_directory}", markup=False)
