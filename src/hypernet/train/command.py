"""``hypernet train NAME --data DIR --model CKPT``: A1111's Train Hypernetwork form as a command.

Flags are the kebab-case of A1111's parameter names (``--learn-rate``, ``--gradient-step``, ``--clip-grad-mode``,
...). Register with ``app.command()(train)``; ``python -m hypernet.train`` runs it on its own, which is also how
``accelerate launch -m hypernet.train ...`` trains on several processes or GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE, TOY_SIZE
from hypernet.defaults import hypernetwork_dir as default_hypernetwork_dir
from hypernet.train.config import TrainConfig

if TYPE_CHECKING:  # the loop imports torch and diffusers; the CLI loads it only when training
    from hypernet.train.loop import TrainProgress, TrainResult

_HN_DIR = default_hypernetwork_dir()
_D = TrainConfig()  # the defaults, shown in --help


def train(
    name: Annotated[str, typer.Argument(help="The hypernetwork to train: a name in --hypernetwork-dir (make it with `hypernet create`).")],
    data: Annotated[Path, typer.Option("--data", "--data-root", help="Folder of training images; captions from <image>.txt or the file name.")],
    model: Annotated[Optional[str], typer.Option(help="Checkpoint (.safetensors/.ckpt), diffusers folder or Hub id to train against; default: hypernet's embedded toy model (and 64x64).")] = None,
    hypernetwork_dir: Annotated[Path, typer.Option("--hypernetwork-dir", "--dir", help="Where NAME is found and the final network is saved.")] = _HN_DIR,
    log_directory: Annotated[Path, typer.Option(help="Snapshots, previews, loss CSV and settings go to <this>/<date>/<name>/.")] = Path(_D.log_directory),
    learn_rate: Annotated[str, typer.Option(help='Rate or schedule, e.g. "5e-5:100, 5e-6:1500, 5e-7"; training stops where it ends.')] = _D.learn_rate,
    batch_size: Annotated[int, typer.Option(help="Images per step (per process).")] = _D.batch_size,
    gradient_step: Annotated[int, typer.Option(help="Gradient accumulation: micro-batches per optimizer step.")] = _D.gradient_step,
    width: Annotated[Optional[int], typer.Option(help=f"Training width (images are resized to it); default {_D.training_width}.")] = None,
    height: Annotated[Optional[int], typer.Option(help=f"Training height; default {_D.training_height}.")] = None,
    varsize: Annotated[bool, typer.Option("--varsize", help="Do not resize images: train each at its own size, batched by size.")] = False,
    steps: Annotated[int, typer.Option(help="Absolute step to stop at (a resumed network continues from its step).")] = _D.steps,
    clip_grad_mode: Annotated[str, typer.Option(help="Gradient clipping: disabled, value or norm.")] = _D.clip_grad_mode,
    clip_grad_value: Annotated[str, typer.Option(help="Clip threshold; a schedule like --learn-rate.")] = _D.clip_grad_value,
    shuffle_tags: Annotated[bool, typer.Option("--shuffle-tags", help="Shuffle the comma-separated tags of each caption.")] = False,
    tag_dropout: Annotated[float, typer.Option("--tag-dropout", "--tag-drop-out", help="Drop each caption tag with this probability.")] = _D.tag_drop_out,
    latent_sampling: Annotated[str, typer.Option("--latent-sampling", "--latent-sampling-method", help="once, deterministic or random.")] = _D.latent_sampling_method,
    use_weight: Annotated[bool, typer.Option("--use-weight", help="Use the PNG alpha channel as loss weight.")] = False,
    image_every: Annotated[int, typer.Option("--image-every", "--create-image-every", help="Preview image every N steps (0: never).")] = _D.create_image_every,
    save_every: Annotated[int, typer.Option("--save-every", "--save-hypernetwork-every", help="Save a snapshot every N steps (0: never).")] = _D.save_hypernetwork_every,
    template: Annotated[str, typer.Option("--template", "--template-filename", help="Prompt template: hypernetwork.txt, none.txt, style.txt, style_filewords.txt, subject.txt, subject_filewords.txt, or a file.")] = _D.template_filename,
    templates_dir: Annotated[Optional[Path], typer.Option(help="More template files (looked up by file name).")] = None,
    preview_prompt: Annotated[Optional[str], typer.Option(help="Preview prompt (default: the batch's prompt). Any --preview-* option uses all of them, as A1111's 'Read parameters from txt2img' does.")] = None,
    preview_negative_prompt: Annotated[Optional[str], typer.Option(help="Preview negative prompt.")] = None,
    preview_steps: Annotated[Optional[int], typer.Option(help="Preview sampling steps.")] = None,
    preview_sampler: Annotated[Optional[str], typer.Option("--preview-sampler", "--preview-sampler-name", help="Preview sampler, e.g. 'DPM++ 2M', 'Euler a'.")] = None,
    preview_cfg_scale: Annotated[Optional[float], typer.Option(help="Preview CFG scale.")] = None,
    preview_seed: Annotated[Optional[int], typer.Option(help="Preview seed; -1: one random seed for the whole run.")] = None,
    preview_width: Annotated[Optional[int], typer.Option(help="Preview width.")] = None,
    preview_height: Annotated[Optional[int], typer.Option(help="Preview height.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, noise and timesteps; resume with the same seed for an exact continuation.")] = None,
    resume_from: Annotated[Optional[Path], typer.Option(help="Train from this file (e.g. a snapshot); the result still goes to --hypernetwork-dir.")] = None,
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 autocast on CUDA, fp32 on CPU), no, fp16 or bf16. The network stays fp32.")] = _D.precision,
    gradient_checkpointing: Annotated[str, typer.Option(help="auto (on when a step runs out of GPU memory), on or off; on costs ~25% time to save memory.")] = _D.gradient_checkpointing,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu (default: cuda if available).")] = None,
    vae: Annotated[Optional[Path], typer.Option(help="Separate VAE file.")] = None,
    clip_skip: Annotated[int, typer.Option(help="A1111's CLIP skip.")] = _D.clip_skip,
    csv_every: Annotated[int, typer.Option("--csv-every", help="Write a loss CSV row every N steps (A1111's training_write_csv_every).")] = _D.training_write_csv_every,
    save_optimizer_state: Annotated[bool, typer.Option("--save-optimizer-state/--no-save-optimizer-state", help="Write .pt.optim sidecars for exact resume.")] = True,
    keep_models_on_gpu: Annotated[bool, typer.Option("--keep-models-on-gpu", help="Keep the VAE and text encoders on the GPU after caching.")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also log to <log>/tensorboard (needs the tensorboard package).")] = False,
    filename_word_regex: Annotated[str, typer.Option(help="Captions from file names: keep only this regex's matches.")] = "",
    filename_join_string: Annotated[str, typer.Option(help="Joins the regex matches.")] = " ",
    max_bad_steps: Annotated[int, typer.Option(help="Stop after this many NaN/inf steps in a row.")] = _D.max_bad_steps,
    validation_split: Annotated[int, typer.Option(help="Images held out of training for the validation loss measured at every snapshot (0: none; -1: a few when the dataset has 20 or more).")] = _D.validation_split,
    health_probes: Annotated[int, typer.Option(help="Probe images generated at every snapshot to judge style and over-cooking (0: none).")] = _D.health_probes,
    stop_when_overcooked: Annotated[bool, typer.Option("--stop-when-overcooked", help="Stop when a snapshot over-cooks, and keep the recommended snapshot as the final network.")] = _D.stop_when_overcooked,
) -> None:
    """Train a hypernetwork on a folder of images, like A1111's Train tab: resumable, NaN-safe, Ctrl-C saves."""
    from rich.console import Console

    from hypernet.train.loop import train_hypernetwork

    default_size = _D.training_width
    if model is None:
        Console(stderr=True).print(f"[dim]{TOY_NOTE}[/dim]")
        model, default_size = str(TOY_CHECKPOINT), TOY_SIZE
    width, height = width or default_size, height or default_size
    given = {
        key: value
        for key, value in {
            "preview_prompt": preview_prompt, "preview_negative_prompt": preview_negative_prompt,
            "preview_steps": preview_steps, "preview_sampler_name": preview_sampler,
            "preview_cfg_scale": preview_cfg_scale, "preview_seed": preview_seed, "preview_width": preview_width,
            "preview_height": preview_height,
        }.items()
        if value is not None
    }
    # Like A1111's "Read parameters from txt2img": any preview option (a seed alone aside) takes them all.
    preview = {"preview_from_txt2img": any(key != "preview_seed" for key in given),
               "preview_width": width, "preview_height": height} | given
    config = TrainConfig(
        hypernetwork_name=name, learn_rate=learn_rate, batch_size=batch_size, gradient_step=gradient_step,
        data_root=str(data), log_directory=str(log_directory), training_width=width, training_height=height,
        varsize=varsize, steps=steps, clip_grad_mode=clip_grad_mode, clip_grad_value=clip_grad_value,
        shuffle_tags=shuffle_tags, tag_drop_out=tag_dropout, latent_sampling_method=latent_sampling,
        use_weight=use_weight, create_image_every=image_every, save_hypernetwork_every=save_every,
        template_filename=template, save_optimizer_state=save_optimizer_state, training_write_csv_every=csv_every,
        unload_models_when_training=not keep_models_on_gpu, dataset_filename_word_regex=filename_word_regex,
        dataset_filename_join_string=filename_join_string, training_enable_tensorboard=tensorboard,
        training_tensorboard_save_images=tensorboard, clip_skip=clip_skip, model=model,
        vae=str(vae) if vae else None, hypernetwork_dir=str(hypernetwork_dir),
        templates_dir=str(templates_dir) if templates_dir else None,
        resume_from=str(resume_from) if resume_from else None, seed=seed, device=device, precision=precision,
        gradient_checkpointing=gradient_checkpointing, max_bad_steps=max_bad_steps, validation_split=validation_split,
        health_probes=health_probes, stop_when_overcooked=stop_when_overcooked, **preview,
    )
    result = train_hypernetwork(config, progress=_ProgressBar())
    _print_result(result)
    if result.stopped == "diverged":
        raise typer.Exit(1)


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
