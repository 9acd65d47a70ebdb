"""Training a hypernetwork: A1111's ``train_hypernetwork`` (same parameters, outputs and loss), resumable exactly,
NaN-safe, with cached latents and text, mixed precision, and data parallelism under ``accelerate launch``.

:func:`prepare` turns a :class:`TrainConfig` and a model into a :class:`Run` (a frozen description of the run);
:func:`train_loop` is the run itself, top to bottom, with the optimizer step inline; snapshots, previews and
reports are plain functions below it.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from diffusers import DDPMScheduler, DiffusionPipeline
from PIL import Image

from hypernet import __version__
from hypernet.engine.attention import attention_widths, install_hypernetworks, installed_stack, uninstall_hypernetworks
from hypernet.engine.checkpoints import ModelInfo, load_pipeline
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.generate import Generator, Result, Settings
from hypernet.engine.model_defaults import ModelDefaults, checkpoint_defaults, model_defaults
from hypernet.errors import HypernetError
from hypernet.fileio import short_hash
from hypernet.network import Hypernetwork, list_hypernetworks, load_hypernetwork
from hypernet.sampling import resolve_sampler
from hypernet.train.config import WARNING, TrainConfig
from hypernet.train.dataset import Batch, TrainingDataset, build_dataset, derive_seed, pad_and_stack, read_template, resolve_template
from hypernet.train.health import (HealthMonitor, SnapshotHealth, Verdict, restore_snapshot, split_validation,
                                   validation_batches, write_health_csv)
from hypernet.train.outputs import HEALTH_CSV, RunOutputs, run_folder, snapshot_step, snapshots_of
from hypernet.train.schedule import LearnRateSchedule

PREVIEW_DEFAULTS = {"sampler_name": "Euler a", "steps": 20, "cfg_scale": 7.0}  # A1111's processing defaults


class AlreadyTrained(HypernetError):
    """The network's step has already reached ``steps``: nothing to do (A1111 returns without saving)."""


@dataclass
class TrainProgress:
    """What a progress bar, the HTTP ``/progress`` route or a UI shows; sent after every step and phase change."""

    phase: str  # "preparing", "training", "preview", "saving", "done"
    step: int
    final_step: int  # where this run ends unless stopped: min(steps, end of the learn_rate schedule)
    start_step: int
    epoch: int = 0
    epoch_step: int = 0
    loss: float | None = None  # this step's loss (None: skipped, NaN/inf)
    loss_avg: float | None = None  # mean over the last epoch's steps
    learn_rate: float = 0.0
    it_per_s: float | None = None
    eta_s: float | None = None
    last_preview: str | None = None
    last_saved: str | None = None
    message: str = ""
    grad_norm: float | None = None  # the gradients' norm the update used (unscaled, clipped); None: skipped
    loss_scale: float | None = None  # fp16's dynamic loss scale after the step; None without fp16
    recommended_step: int | None = None  # training health: the snapshot to keep so far
    overcooked: bool = False  # a snapshot after it has over-cooked
    validation_loss: float | None = None  # at the latest snapshot
    health: list[SnapshotHealth] = field(default_factory=list)  # every measurement so far, the start first
    health_verdict: str = ""  # the recommendation and any over-cooking as a sentence, once there is one


@dataclass
class TrainResult:
    filename: str | None  # the final network file (None when no step was trained)
    step: int
    start_step: int
    stopped: str  # "finished", "schedule_finished", "interrupted", "diverged", "overcooked", "error"
    message: str  # one sentence for the user
    log_directory: str | None
    seed: int
    last_snapshot: str | None = None
    last_preview: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recommended_step: int | None = None  # training health (hypernet.train.health): the snapshot to keep
    recommended_snapshot: str | None = None
    overcooked: bool = False
    health: list[SnapshotHealth] = field(default_factory=list)  # the start, then every snapshot


ProgressCallback = Callable[[TrainProgress], None]


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


# ================================================================================================ the loss
def diffusion_loss(unet: torch.nn.Module, noise_scheduler: DDPMScheduler, batch: Batch) -> torch.Tensor:
    """A1111's training loss: MSE between the UNet's prediction for the noised latents and its target (the noise,
    or v for v-prediction models), per-element weighted by the alpha map when there is one."""
    noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
    else:
        target = batch.noise
    dtype = unet.dtype
    added = None if batch.pooled is None else {"text_embeds": batch.pooled.to(dtype), "time_ids": batch.time_ids.to(dtype)}
    prediction = unet(noisy.to(dtype), batch.timesteps, batch.cond.to(dtype), added_cond_kwargs=added, return_dict=False)[0]
    error = (prediction.float() - target.float()) ** 2
    if batch.weights is not None:
        error = error * batch.weights
    return error.mean()


def training_noise_scheduler(pipe: DiffusionPipeline, prediction_type: str) -> DDPMScheduler:
    """The model's training noise schedule (betas and timesteps from the pipeline's scheduler config)."""
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
    config = pipe.scheduler.config
    return DDPMScheduler(**{k: config[k] for k in keys if k in config}, prediction_type=prediction_type)


# ========================================================================================= several processes
@dataclass
class Processes:
    """This process's place among the training processes (one, or several under ``accelerate launch``)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls, requested: str | None) -> Processes:
        try:
            device = torch.device(requested) if requested else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        except RuntimeError:
            raise HypernetError(f'device "{requested}" is not a torch device; expected e.g. cuda, cuda:1 or cpu.') from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HypernetError(f'device "{requested}" was asked for, but torch sees no CUDA GPU; use --device cpu.')
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun
            from accelerate import PartialState

            state = PartialState(cpu=device.type == "cpu")
            return cls(state.process_index, state.num_processes, state.device)
        return cls(0, 1, device)

    def any(self, flag: bool) -> bool:
        """True on every process if it is True on one (stop requests must be shared)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, value: int) -> int:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def average_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
        """Mean gradients and loss over processes in one all-reduce (what DDP does, once per optimizer step)."""
        if self.world == 1:
            return float(loss)
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-1])

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def gradients_finite(params: list[torch.nn.Parameter]) -> bool:
    """One read of every gradient: a NaN or inf anywhere makes its norm non-finite (5x cheaper than isfinite)."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([torch.linalg.vector_norm(g) for g in grads]).isfinite().all())


def _make_optimizer(cls: type[torch.optim.Optimizer], params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The fused implementation where the class has one (AdamW: 7x faster on a CPU than the default loop)."""
    try:
        return cls(params, lr=lr, fused=True)
    except (TypeError, RuntimeError, ValueError):
        return cls(params, lr=lr)


def clip_gradients(params: list[torch.nn.Parameter], mode: str, value: float) -> None:
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    elif mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)


# ================================================================================================ the run
@dataclass(frozen=True)
class Run:
    """A prepared run: everything :func:`train_loop` needs, decided before the first step by :func:`prepare`.

    Fields are never reassigned; the network, the optimizer and the schedules they hold are what training changes.
    """

    config: TrainConfig
    procs: Processes
    hn: Hypernetwork
    final_path: Path  # where the final network is saved
    template_path: Path
    seed: int
    start_step: int
    final_step: int  # min(steps, end of the learn_rate schedule)
    lr_schedule: LearnRateSchedule
    clip_schedule: LearnRateSchedule | None
    pipe: DiffusionPipeline
    info: ModelInfo
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    noise_scheduler: DDPMScheduler
    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]
    data: TrainingDataset
    offloaded: tuple[torch.nn.Module, ...]  # models parked on the CPU while training (back for previews)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    previewer: Generator | None  # main process, when previews or health probes are asked for
    outputs: RunOutputs | None  # main process only
    health: HealthMonitor | None  # main process, when snapshots are saved
    probes: tuple[Settings, ...]  # the health probes' generations, the same at every snapshot
    warnings: tuple[str, ...]
    resumed: Path | None = None  # the interrupted run's snapshot this run continues from

    @property
    def device(self) -> torch.device:
        return self.procs.device

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.hn.parameters())


@dataclass
class History:
    """What happened so far: losses, skipped steps, the last files written, recent step times (for it/s)."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)  # NaN/inf: no update
    warnings: list[str] = field(default_factory=list)
    last_snapshot: str | None = None
    last_preview: str | None = None
    last_prompts: list[str] = field(default_factory=list)
    overcooked: bool = False  # stop_when_overcooked: a snapshot over-cooked, stop before the next step
    times: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=20))


def prepare(
    config: TrainConfig,
    pipe: DiffusionPipeline | None,
    info: ModelInfo | None,
    cleanup: ExitStack,
    progress: ProgressCallback | None = None,
    *,
    procs: Processes | None = None,
) -> Run:
    """A1111's start-up order: cheap checks first (template, network, steps, schedules), then the model, the dataset
    (VAE and text encodings cached), the optimizer and the log folder. ``cleanup`` puts a caller's pipeline back as
    it was (devices, scheduler, checkpointing, hooks)."""
    c, warnings = config, []
    if info is not None or c.model:  # what the checkpoint records (the toy model: its steps, rate, batch, template)
        c = with_model_defaults(c, checkpoint_defaults(info.path if info is not None else c.model), SIZES)
    procs = procs or Processes.detect(c.device)
    template_path = resolve_template(c.template_filename, c.templates_dir)
    lines = read_template(template_path)
    source, final_path = network_paths(c, warnings)
    hn = load_hypernetwork(source)
    hn.check_runnable()
    lineage = short_hash(source)  # the file this run, and any interrupted attempt at it, started from
    resumed = interrupted_snapshot(c, hn.step, lineage) if c.resume_from is None else None
    if resumed is not None:  # kill -9, power loss: carry on from the newest snapshot, not from the older file
        warnings.append(f"{source} is at step {hn.step}, but an interrupted run of it left snapshots up to "
                        f"{resumed}; training continues from that snapshot.")
        hn = load_hypernetwork(resumed)
        hn.check_runnable()
    if hn.step >= c.steps and resumed is None:
        raise AlreadyTrained(f"{source} has already been trained for {hn.step} steps, which reaches steps={c.steps}; "
                             "raise steps to train further.")
    start_step = hn.step
    lr_schedule = LearnRateSchedule.parse(c.learn_rate, c.steps, start_step, field="learn_rate")
    clip_schedule = (LearnRateSchedule.parse(c.clip_grad_value, c.steps, start_step, field="clip_grad_value")
                     if c.clip_grad_mode != "disabled" else None)
    final_step = lr_schedule.phases[-1].end_step
    # A run that continues a trained file reuses its seed (data order, noise, timesteps), so 0->20 then 20->40
    # equals 0->40; --seed overrides it.
    stored = hn.training_seed if hn.step > 0 else None
    seed = procs.broadcast(c.seed if c.seed is not None else stored if stored is not None else random.randrange(2**31))
    hn.training_seed, hn.lineage = seed, lineage

    def say(message: str) -> None:
        if progress is not None and procs.main:
            progress(TrainProgress("preparing", start_step, final_step, start_step, message=message))

    if pipe is None:
        if not c.model:
            raise HypernetError("model is empty; pass the checkpoint to train against (--model FILE).")
        say(f"Loading {c.model}...")
        amp = autocast_dtype(c.precision, procs.device, torch.float32)
        pipe, info = load_pipeline(c.model, vae=c.vae, dtype=amp if amp is not None and procs.device.type == "cuda" else torch.float32)
    elif info is None:
        raise TypeError("train_hypernetwork(pipe=...) needs the pipeline's ModelInfo as info=")
    c = with_model_defaults(c, model_defaults(pipe, info.path))  # the native size (64x64 on the toy model)
    amp_dtype = autocast_dtype(c.precision, procs.device, pipe.unet.dtype)
    check_widths(hn, pipe.unet, info, c.name, warnings)
    if c.create_image_every and procs.main:
        sampler = c.preview_sampler_name if c.preview_from_txt2img else PREVIEW_DEFAULTS["sampler_name"]
        resolve_sampler(sampler)  # a bad sampler name fails now, not at step 500
    encoders = borrow_pipeline(pipe, procs.device, cleanup)

    say(f"Preparing dataset from {c.data_root}...")
    noise_scheduler = training_noise_scheduler(pipe, info.prediction_type)
    encode = text_encoder(pipe, c.clip_skip, keep_cache=not c.dynamic_captions)
    data = build_dataset(
        data_root=Path(c.data_root), vae=pipe.vae, encode=encode, name=c.name, lines=lines, seed=seed,
        size=None if c.varsize else (c.training_width, c.training_height), use_weight=c.use_weight,
        latent_sampling_method=c.latent_sampling_method, shuffle_tags=c.shuffle_tags, tag_drop_out=c.tag_drop_out,
        word_regex=c.dataset_filename_word_regex, join_string=c.dataset_filename_join_string,
        batch_size=c.batch_size, world_size=procs.world, gradient_step=c.gradient_step,
        num_train_timesteps=noise_scheduler.config.num_train_timesteps, sdxl=info.family == "sdxl", device=procs.device,
    )
    if data.skipped:
        warnings.append(f"{len(data.skipped)} files in {c.data_root} are not readable images and were left out: "
                        + "; ".join(data.skipped) + ".")
    data, held = split_validation(data, c.validation_split, seed)
    warnings += data.notes
    offloaded = (pipe.vae, *([] if c.dynamic_captions else encoders))
    if c.unload_models_when_training and procs.device.type != "cpu":
        for module in offloaded:
            module.to("cpu")
        torch.cuda.empty_cache()

    # The network trains in fp32 through the model's stack, which previews' generations share and restore.
    hn.to(device=procs.device, dtype=torch.float32).train().requires_grad_(True)
    cleanup.callback(hn.eval)
    if installed_stack(pipe.unet) is None:  # a caller's model (a server's) keeps the stack it has
        cleanup.callback(uninstall_hypernetworks, pipe.unet)
    cleanup.enter_context(install_hypernetworks(pipe.unet).applied([(hn, 1.0)]))
    health = probes = None
    if procs.main and c.save_hypernetwork_every:
        validation = validation_batches(held, seed, noise_scheduler.config.num_train_timesteps, info.family == "sdxl", encode)
        probes = probe_settings(c, data, seed)
        health = HealthMonitor(validation, reference_images(data) if probes else [])
    previewer = Generator(pipe, info, c.hypernetwork_dir) if procs.main and (c.create_image_every or probes) else None
    optimizer = make_optimizer(hn, lr_schedule.value, warnings)
    scaler = torch.amp.GradScaler(procs.device.type, enabled=amp_dtype == torch.float16)
    if c.gradient_checkpointing == "on":
        pipe.unet.enable_gradient_checkpointing()

    outputs = None
    if procs.main:
        started = datetime.now()
        root, continues = log_folder(c, started, start_step, lineage, resumed)
        outputs = RunOutputs(
            c.log_directory, c.name, started, snapshots=c.save_hypernetwork_every > 0, images=c.create_image_every > 0,
            csv_every=c.training_write_csv_every, tensorboard=c.training_enable_tensorboard,
            tensorboard_images=c.training_tensorboard_save_images, tensorboard_flush_secs=c.training_tensorboard_flush_every,
            root=root,
        )
        cleanup.callback(outputs.close)
        if continues:  # the rows an interrupted attempt wrote after start_step are about to be written again
            outputs.drop_rows_after(start_step)
        if c.save_training_settings_to_txt:
            a = hn.arch
            outputs.write_settings(c.settings_json({
                "datetime": started.strftime("%Y-%m-%d %H:%M:%S"), "model_name": info.name,
                "model_hash": info.short_hash, "num_of_dataset_images": len(data.items),
                "layer_structure": a.layer_structure, "activation_func": a.activation_func,
                "weight_init": a.weight_init, "add_layer_norm": a.add_layer_norm, "use_dropout": a.use_dropout,
                "initial_step": start_step, "log_directory": str(outputs.root), "template_file": str(template_path),
                "seed": seed, "lineage": lineage, "resumed_from": str(resumed or source),
                "device": str(procs.device), "processes": procs.world,
                "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                "effective_batch_size": data.batch_size, "effective_gradient_step": data.gradient_step,
                "hypernet_version": __version__,
            }))
    for warning in warnings:  # now, not after the run: a skipped file or a resume is news before training starts
        say(WARNING + warning)
    return Run(c, procs, hn, final_path, template_path, seed, start_step, final_step, lr_schedule, clip_schedule,
               pipe, info, amp_dtype, noise_scheduler, encode, data, offloaded, optimizer, scaler, previewer, outputs,
               health, tuple(probes or ()), tuple(warnings), resumed)


# ================================================================================================ the loop
def train_loop(run: Run, history: History, should_stop: Callable[[], bool], progress: ProgressCallback | None) -> str:
    """The run, top to bottom. Returns why it ended: finished, schedule_finished, interrupted, diverged or
    overcooked."""
    c, hn, optimizer, scaler, params = run.config, run.hn, run.optimizer, run.scaler, run.params
    step, bad = hn.step, 0
    history.times.append((time.perf_counter(), step))
    if run.health is not None:  # the network as training found it: what every snapshot is compared with
        measure_health(run, history, step, None, progress)
    report(run, history, progress, "training", step)
    while step < c.steps:
        if run.procs.any(should_stop() or history.overcooked):
            return "overcooked" if run.procs.any(history.overcooked) else "interrupted"
        run.lr_schedule.apply(optimizer, step)
        if run.lr_schedule.finished:
            return "schedule_finished"
        if run.clip_schedule is not None:
            run.clip_schedule.step(step)
        torch.manual_seed(derive_seed(run.seed, "dropout", step, run.procs.rank))  # dropout masks, resumable

        # one optimizer step: gradient_step micro-batches, gradients averaged over processes, the NaN/inf guard,
        # clipping of the *unscaled* gradients, the update
        try:
            loss, prompts = backward(run, step)
        except torch.OutOfMemoryError:
            enable_checkpointing_after_oom(run, step, history)
            loss, prompts = backward(run, step)
        scaler.unscale_(optimizer)  # clip and check the real gradients, not the loss-scaled ones
        grad_norm = None
        if math.isfinite(loss) and gradients_finite(params):
            if run.clip_schedule is not None:
                clip_gradients(params, c.clip_grad_mode, run.clip_schedule.value)
            grad_norm = gradient_norm(params)
            scaler.step(optimizer)
        scaler.update()  # fp16: a skipped step halves the loss scale
        optimizer.zero_grad(set_to_none=True)
        if step == run.start_step:
            check_memory_after_first_step(run, history)
        step = hn.step = step + 1  # a skipped step uses up its data too, so resume stays exact

        if grad_norm is None:  # NaN/inf: no update
            loss, bad = None, bad + 1
            history.skipped_steps.append(step)
            if bad >= c.max_bad_steps:
                return "diverged"
        else:
            bad, history.last_prompts = 0, prompts
            history.losses.append((step, loss))
        log_step(run, history, step, loss)
        if run.outputs is not None and c.save_hypernetwork_every and step % c.save_hypernetwork_every == 0:
            report(run, history, progress, "saving", step, loss=loss)
            history.last_snapshot = str(save_network(run, run.outputs.snapshot_path(step)))
            run.outputs.write_loss_curve(history.losses)
            if run.health is not None:
                measure_health(run, history, step, history.last_snapshot, progress)
        if run.previewer is not None and c.create_image_every and step % c.create_image_every == 0:
            report(run, history, progress, "preview", step, loss=loss)
            history.last_preview = str(preview(run, history, step))
        report(run, history, progress, "training", step, loss=loss, grad_norm=grad_norm)
    return "overcooked" if run.procs.any(history.overcooked) else "finished"


# ============================================================================================ its pieces
def backward(run: Run, step: int) -> tuple[float, list[str]]:
    """Forward and backward passes over the step's micro-batches of cached latents and text; returns the step's
    loss, the mean over micro-batches and processes (gradients averaged likewise, in one all-reduce), and the
    last micro-batch's prompts."""
    data = run.data
    total = torch.zeros((), device=run.device)
    for micro in range(data.gradient_step):
        batch = data.batch(step, micro, run.procs.rank, run.device, run.encode)
        with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
            loss = diffusion_loss(run.unet, run.noise_scheduler, batch) / data.gradient_step
        run.scaler.scale(loss).backward()
        total += loss.detach()
    return run.procs.average_gradients(run.params, total), batch.prompts


def gradient_norm(params: list[torch.nn.Parameter]) -> float:
    """The norm of the gradients the update uses (unscaled, after clipping): a health signal for reports."""
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def enable_checkpointing_after_oom(run: Run, step: int, history: History) -> None:
    """``gradient_checkpointing=auto`` on CUDA: the first out-of-memory step switches it on and is retried."""
    auto = run.config.gradient_checkpointing == "auto" and run.device.type == "cuda"
    if not auto or run.unet.is_gradient_checkpointing:
        raise HypernetError(
            f"the GPU ran out of memory at step {step + 1} even with gradient checkpointing; lower batch_size "
            "or the training size, or use --precision fp16."
        ) from None
    run.optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    run.unet.enable_gradient_checkpointing()
    history.warnings.append("gradient checkpointing switched on: the step ran out of GPU memory without it.")


def check_memory_after_first_step(run: Run, history: History) -> None:
    """``gradient_checkpointing=auto`` on CUDA: a first step that used over 85% of the GPU switches it on."""
    if run.config.gradient_checkpointing != "auto" or run.device.type != "cuda" or run.unet.is_gradient_checkpointing:
        return
    if torch.cuda.max_memory_allocated(run.device) > 0.85 * torch.cuda.get_device_properties(run.device).total_memory:
        run.unet.enable_gradient_checkpointing()
        history.warnings.append("gradient checkpointing switched on: the first step used over 85% of the GPU's memory.")


def log_step(run: Run, history: History, step: int, loss: float | None) -> None:
    """The step's time for it/s, and A1111's CSV row and TensorBoard scalars (main process)."""
    history.times.append((time.perf_counter(), step))
    if run.outputs is not None and loss is not None:
        lr = run.optimizer.param_groups[0]["lr"]
        run.outputs.log_loss(step, run.data.steps_per_epoch, loss, lr)
        run.outputs.log_scalars(step, {"loss": loss, "learn_rate": lr})


def save_network(run: Run, path: Path) -> Path:
    """Snapshot or final file (plus ``.optim`` sidecar), stamped with the model it was trained on."""
    hn = run.hn
    if not all(bool(p.isfinite().all()) for p in run.params):  # unreachable with finite gradients; never save it
        raise HypernetError(f"the network has non-finite weights at step {hn.step}; {path} was not written.")
    hn.name, hn.sd_checkpoint, hn.sd_checkpoint_name = run.config.name, run.info.short_hash, run.info.name
    keep_optimizer = run.config.save_optimizer_state and path.suffix.lower() == ".pt"
    return hn.save(path, optimizer=run.optimizer if keep_optimizer else None)


def preview(run: Run, history: History, step: int) -> Path:
    """A1111's preview: the batch's first prompt at the training size with processing defaults, or the txt2img
    parameters; one seed per run so that previews compare like with like."""
    c = run.config
    seed = c.preview_seed if c.preview_seed != -1 else derive_seed(run.seed, "preview") % 2**32
    prompt = history.last_prompts[0] if history.last_prompts else run.data.prompt(0, random.Random(run.seed))
    if c.preview_from_txt2img:
        settings = Settings(
            prompt=c.preview_prompt or prompt, negative_prompt=c.preview_negative_prompt,
            sampler_name=c.preview_sampler_name, steps=c.preview_steps, cfg_scale=c.preview_cfg_scale, seed=seed,
            width=c.preview_width, height=c.preview_height, clip_skip=c.clip_skip,
        )
    else:
        width, height = run.data.items[0].size if c.varsize else (c.training_width, c.training_height)
        settings = Settings(prompt=prompt, seed=seed, width=width, height=height, clip_skip=c.clip_skip,
                            **PREVIEW_DEFAULTS)
    assert run.outputs is not None
    # the infotext's tag names this step's snapshot when there is one (copied into the hypernetwork folder, PNG Info
    # reproduces the preview); between snapshots no file holds this state, so it names the network and the step
    snapshot = run.outputs.snapshot_path(step)
    saved = history.last_snapshot == str(snapshot)
    (result,) = render(run, [settings], snapshot.stem if saved else c.name)
    infotext = result.infotexts[0] if saved else f"{result.infotexts[0]}, Training step: {step}"
    return run.outputs.save_preview(result.images[0], infotext, step)


def render(run: Run, settings: Sequence[Settings], name: str) -> list[Result]:
    """Generations with the network as it is now (eval mode: no dropout; ``name`` in their infotexts), the
    offloaded models back for them."""
    assert run.previewer is not None
    moved = [m for m in run.offloaded if m.device != run.device]
    run.hn.eval()
    run.hn.name = name
    try:
        for module in moved:
            module.to(run.device)
        return [run.previewer.generate(s, extra_networks=[(run.hn, 1.0)]) for s in settings]
    finally:
        run.hn.name = run.config.name
        run.hn.train()
        for module in moved:
            module.to("cpu")


# ============================================================================================ training health
def probe_settings(c: TrainConfig, data: TrainingDataset, seed: int) -> list[Settings]:
    """The health probes: ``health_probes`` training captions at fixed seeds and the training size, sampled as the
    previews are; the same generations at every snapshot."""
    sampling = ({"sampler_name": c.preview_sampler_name, "steps": c.preview_steps, "cfg_scale": c.preview_cfg_scale}
                if c.preview_from_txt2img else PREVIEW_DEFAULTS)
    probes = []
    for i in range(min(c.health_probes, len(data.items))):
        prompt = data.prompt(i, random.Random(derive_seed(seed, "probe-prompt", i)))
        width, height = data.items[i].size
        probes.append(Settings(prompt=prompt, seed=derive_seed(seed, "probe", i) % 2**32, width=width, height=height,
                               clip_skip=c.clip_skip, **sampling))
    return probes


def reference_images(data: TrainingDataset) -> list[Image.Image]:
    """The training images at their training size: the look the probes' colours are compared with."""
    images = []
    for item in data.items:
        with suppress(OSError, ValueError), Image.open(item.path) as image:
            images.append(image.convert("RGB").resize(item.size))
    return images


def measure_health(run: Run, history: History, step: int, path: str | None, progress: ProgressCallback | None) -> Verdict:
    """The health figures of the network now (validation loss, probes) at the start and after every snapshot;
    with ``stop_when_overcooked``, an over-cooked verdict ends the run before the next step."""
    assert run.health is not None
    report(run, history, progress, "health", step)
    measured = run.health.history[-1].step if run.health.history else -1
    recent = [loss for s, loss in history.losses if s > measured]
    images = [r.images[0] for r in render(run, run.probes, run.config.name)] if run.probes else []

    def loss(batch: Batch) -> torch.Tensor:
        with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
            return diffusion_loss(run.unet, run.noise_scheduler, batch)

    run.hn.eval()
    try:
        verdict = run.health.measure(step, path, sum(recent) / len(recent) if recent else None, images, loss, run.device)
    finally:
        run.hn.train()
    if run.outputs is not None and run.procs.main:  # on disk now: a killed run keeps what it measured
        write_health_csv(run.outputs.root / HEALTH_CSV, run.health.history, verdict)
    history.overcooked = verdict.overcooked and run.config.stop_when_overcooked
    return verdict


def report(run: Run, history: History, progress: ProgressCallback | None, phase: str, step: int, *,
           loss: float | None = None, message: str = "", last_saved: str | None = None,
           grad_norm: float | None = None) -> None:
    """Tell ``progress`` (main process) where the run is: step, epoch, rates, the last files written."""
    if progress is None or not run.procs.main:
        return
    verdict = run.health.verdict() if run.health is not None else None
    spe = run.data.steps_per_epoch
    epoch, epoch_step = divmod(max(step - 1, 0), spe)
    recent = [value for _, value in history.losses[-spe:]]
    p = TrainProgress(phase, step, run.final_step, run.start_step, epoch, epoch_step, loss=loss,
                      loss_avg=sum(recent) / len(recent) if recent else None,
                      learn_rate=run.optimizer.param_groups[0]["lr"], last_preview=history.last_preview,
                      last_saved=last_saved or history.last_snapshot, message=message, grad_norm=grad_norm,
                      loss_scale=run.scaler.get_scale() if run.scaler.is_enabled() else None,
                      recommended_step=verdict.best_step if verdict else None,
                      overcooked=bool(verdict and verdict.overcooked),
                      validation_loss=run.health.history[-1].validation_loss if run.health and run.health.history else None,
                      health=list(run.health.history) if run.health else [],
                      health_verdict=verdict.sentence() if verdict and (verdict.best or verdict.overcooked) else "")
    (t0, s0), (t1, s1) = history.times[0], history.times[-1]
    if s1 > s0:
        p.it_per_s = (s1 - s0) / max(t1 - t0, 1e-9)
        p.eta_s = (run.final_step - step) / p.it_per_s
    progress(p)


def finish(run: Run, history: History, stopped: str, progress: ProgressCallback | None) -> TrainResult:
    """The final save (also after an interrupt or an error, as A1111 does), the loss curve and contact sheet."""
    c, step, out = run.config, run.hn.step, run.outputs
    verdict = run.health.verdict() if run.health is not None else None
    best = verdict.best if verdict is not None else None
    saved = None
    keep_start = stopped == "overcooked" and best is None  # the first snapshot already over-cooked
    if run.procs.main and (step > run.start_step or run.resumed is not None) and not keep_start:
        report(run, history, progress, "saving", step)
        if stopped == "overcooked" and best is not None and best.path:
            saved = str(restore_snapshot(Path(best.path), run.final_path))
        else:
            saved = str(save_network(run, run.final_path))
    if out is not None:
        out.write_loss_curve(history.losses)
        out.write_contact_sheet(marked=verdict.best_step if verdict else None)
    if stopped != "error":
        run.procs.barrier()
    warnings = list(run.warnings) + history.warnings
    if history.skipped_steps:
        listed = ", ".join(map(str, history.skipped_steps[:10])) + (", ..." if len(history.skipped_steps) > 10 else "")
        warnings.append(f"{len(history.skipped_steps)} steps had a NaN or infinite loss or gradients and were "
                        f"skipped without an update (steps {listed}).")
    where = f"; hypernetwork saved to {saved}" if saved else "; nothing was trained, so no file was written"
    message = {
        "finished": f"Training finished at step {step}{where}.",
        "schedule_finished": f"Training finished at step {step}, where the learn_rate schedule ends{where}.",
        "interrupted": f"Training interrupted at step {step}{where}.",
        "diverged": f"Training stopped at step {step}: the loss or gradients were NaN or infinite in "
        f"{c.max_bad_steps} steps in a row, so those updates were skipped and the last good network was kept{where}; "
        "try a lower learn_rate, gradient clipping or --precision bf16.",
        "error": f"Training failed at step {step}{where}.",
        "overcooked": f"Training stopped at step {step}: its snapshots over-cooked (--stop-when-overcooked); "
        + (f"the recommended snapshot, step {best.step}, is the final network{where}." if best is not None else
           f"already the first one had, so {run.final_path} keeps the network training started from; try a lower "
           "learn_rate."),
    }[stopped]
    if verdict is not None and (best is not None or verdict.overcooked):
        message += " Health: " + verdict.sentence()
        if verdict.overcooked and stopped != "overcooked":
            keep = f"use the step {best.step} snapshot ({best.path}), or " if best is not None else ""
            warnings.append("training went past its best snapshot (over-cooked: " + "; ".join(verdict.reasons)
                            + f"); {keep}train again with a lower learn_rate (--stop-when-overcooked stops by itself).")
    report(run, history, progress, "done", step, message=message, last_saved=saved)
    return TrainResult(
        filename=saved, step=step, start_step=run.start_step, stopped=stopped, message=message,
        log_directory=str(out.root) if out else None, seed=run.seed, last_snapshot=history.last_snapshot,
        last_preview=history.last_preview, losses=list(history.losses), warnings=list(dict.fromkeys(warnings)),
        recommended_step=verdict.best_step if verdict else None, recommended_snapshot=best.path if best else None,
        overcooked=bool(verdict and verdict.overcooked), health=list(run.health.history) if run.health else [],
    )


# ============================================================================================ preparation pieces
SIZES = ("training_width", "training_height", "preview_width", "preview_height")


def with_model_defaults(c: TrainConfig, defaults: ModelDefaults, skip: tuple[str, ...] = ()) -> TrainConfig:
    """The fields a Python caller left unset take the model's defaults (its native size, what its checkpoint
    records), as on the command line and in the web UI; the HTTP API sets every field, so it keeps A1111's."""
    unset = {key: value for key, value in defaults.training().items()
             if key in TrainConfig.model_fields and key not in c.model_fields_set and key not in skip}
    return TrainConfig.parse(c.model_dump(exclude_unset=True) | unset) if unset else c


def network_paths(c: TrainConfig, warnings: list[str]) -> tuple[Path, Path]:
    """(file to train from, file the final network goes to)."""
    found = list_hypernetworks(c.hypernetwork_dir)
    main = found.get(c.hypernetwork_name) or found.get(c.name)
    if c.resume_from:
        return Path(c.resume_from), main or Path(c.hypernetwork_dir) / f"{c.name}.pt"
    if main is None:
        names = ", ".join(sorted(found)[:20]) or "none"
        raise HypernetError(
            f'no hypernetwork named "{c.hypernetwork_name}" in {c.hypernetwork_dir} (found: {names}); create it '
            f'first with: hypernet create "{c.name}" --dir {c.hypernetwork_dir}.'
        )
    if main.suffix.lower() != ".pt" and c.save_optimizer_state:
        warnings.append(f"{main} is a .safetensors file, which has no optimizer sidecar; for exact resume use the "
                        ".pt snapshots in the log folder.")
    return main, main


def interrupted_snapshot(c: TrainConfig, step: int, lineage: str) -> Path | None:
    """The newest snapshot beyond ``step`` that a run starting from the same file (``lineage``, its short hash) left
    in the log folder, with its optimizer state when runs keep it: what a run killed before its final save leaves.
    Snapshots of other runs (another file, an earlier network of that name) never match."""
    for found, path in snapshots_of(c.log_directory, c.name):
        if found <= step:
            return None
        try:
            net = load_hypernetwork(path)
        except (HypernetError, OSError, RuntimeError, ValueError):
            continue  # unreadable: an older snapshot will do
        if net.lineage == lineage and net.step == found and (net.optimizer_state_dict is not None
                                                            or not c.save_optimizer_state):
            return path
    return None


def log_folder(c: TrainConfig, started: datetime, step: int, lineage: str, resumed: Path | None) -> tuple[Path, bool]:
    """(the run's log folder, whether it continues an interrupted attempt there). A continuation carries on in the
    interrupted run's folder; a new run gets A1111's folder, or ``<name>-runN`` beside it when that folder holds
    snapshots beyond this run's start (another run's, which it must never overwrite)."""
    if resumed is not None:
        return resumed.parent.parent, True
    base = run_folder(c.log_directory, c.name, started)
    root, n = base, 1
    while True:
        if attempted_here(root, lineage):
            return root, True
        later = [p for p in (root / "hypernetworks").glob("*.pt") if (snapshot_step(p, c.name) or 0) > step]
        if not later:
            return root, False
        n += 1
        root = base.with_name(f"{base.name}-run{n}")


def attempted_here(root: Path, lineage: str) -> bool:
    """Whether an earlier attempt at this same run (same starting file) logged to ``root``."""
    for path in root.glob("settings-*.json"):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("lineage") == lineage:
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def autocast_dtype(precision: str, device: torch.device, weights: torch.dtype) -> torch.dtype | None:
    """Autocast dtype: bf16 (or fp16 without bf16 support) on CUDA, fp32 on CPU, unless asked otherwise;
    half-precision weights always compute in their dtype."""
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if weights != torch.float32:
        return weights
    if precision == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def check_widths(hn: Hypernetwork, unet: torch.nn.Module, info: ModelInfo, name: str, warnings: list[str]) -> None:
    widths = attention_widths(unet)
    hits = [w for w in hn.widths if w in widths]
    if not hits:
        raise HypernetError(
            f"hypernetwork {name!r} has modules for widths {hn.widths}, but the attention layers of {info.name} take "
            f"widths {sorted(widths)}: there is nothing to train; create the network with "
            f"--sizes {','.join(map(str, sorted(widths)))}."
        )
    text = sum(info.text_widths)
    if text in widths and text not in hits:
        warnings.append(f"hypernetwork {name!r} has no module for this model's text width {text}, so cross-attention "
                        "is not trained; it was probably made for another model family.")


def borrow_pipeline(pipe: DiffusionPipeline, device: torch.device, cleanup: ExitStack) -> list[torch.nn.Module]:
    """Freeze the model on the device; put scheduler, devices and checkpointing back afterwards. Returns the text
    encoders."""
    unet = pipe.unet
    encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
    devices = {m: m.device for m in (unet, pipe.vae, *encoders)}
    scheduler, checkpointing = pipe.scheduler, unet.is_gradient_checkpointing
    cleanup.callback(lambda: [m.to(d) for m, d in devices.items()])
    cleanup.callback(lambda: setattr(pipe, "scheduler", scheduler))
    cleanup.callback(lambda: None if checkpointing else unet.disable_gradient_checkpointing())
    for module in devices:
        module.requires_grad_(False).to(device)
    return encoders


def text_encoder(pipe: DiffusionPipeline, clip_skip: int, keep_cache: bool) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]:
    shared = PromptEncoder(pipe, clip_skip=clip_skip)

    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoder = shared if keep_cache else PromptEncoder(pipe, clip_skip=clip_skip)  # no growing cache
        out = [encoder.encode(p) for p in prompts]
        pooled = torch.cat([c.pooled for c in out]) if out[0].pooled is not None else None
        return pad_and_stack([c.embeds for c in out]), pooled

    return encode


def make_optimizer(hn: Hypernetwork, lr: float, warnings: list[str]) -> torch.optim.Optimizer:
    """AdamW (torch defaults) at the scheduled rate, or the class a matching ``.optim`` sidecar names; its saved
    state is restored, as A1111 does."""
    name = hn.optimizer_name or "AdamW"
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        warnings.append(f'optimizer "{name}" named in the .optim sidecar is not a torch.optim class; using AdamW.')
        cls = torch.optim.AdamW
    params = list(hn.parameters())
    optimizer = _make_optimizer(cls, params, lr)
    if hn.optimizer_state_dict is not None:
        try:
            optimizer.load_state_dict(hn.optimizer_state_dict)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            warnings.append(f"the saved optimizer state does not fit this network ({e}); starting a fresh one.")
            optimizer = _make_optimizer(cls, params, lr)
        hn.optimizer_state_dict = None
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


# ============================================================================================== entry point
def train_hypernetwork(
    config: TrainConfig,
    *,
    pipe: DiffusionPipeline | None = None,
    info: ModelInfo | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | StopFlag | None = None,
) -> TrainResult:
    """Train ``config.hypernetwork_name`` as A1111's "Train Hypernetwork" does, and save it.

    ``pipe``/``info`` (from :func:`hypernet.engine.checkpoints.load_pipeline`) reuse a loaded model, which is put
    back as it was afterwards (hooks, scheduler, devices); otherwise ``config.model`` is loaded. Do not
    generate with the same pipeline while it trains. ``progress`` receives a :class:`TrainProgress` after every
    step. ``should_stop`` (a callable or a ``threading.Event``) is polled before every step; when it turns true,
    as on Ctrl-C / SIGTERM in the main thread (a second Ctrl-C aborts without saving), the network is saved and
    the result says "interrupted".

    User errors before training (bad values, missing files, no readable image, a bad schedule, steps already
    reached: :class:`AlreadyTrained`) raise :class:`HypernetError` naming the field or file. An exception during
    training is re-raised after the final save.
    """
    config.check()
    interrupt = threading.Event()
    polled = should_stop.is_set if hasattr(should_stop, "is_set") else should_stop  # type: ignore[union-attr]

    def stop() -> bool:
        return interrupt.is_set() or bool(polled and polled())

    with ExitStack() as cleanup:
        cleanup.enter_context(_stop_on_signals(interrupt))
        procs = Processes.detect(config.device)
        devices = [procs.device.index or 0] if procs.device.type == "cuda" else []
        cleanup.enter_context(torch.random.fork_rng(devices=devices))  # leave the global RNG as it was
        run = prepare(config, pipe, info, cleanup, progress, procs=procs)
        history = History()
        try:
            stopped = train_loop(run, history, stop, progress)
        except Exception:
            with suppress(Exception):  # the final save still happens, as in A1111, and never hides the error
                finish(run, history, "error", progress)
            raise
        return finish(run, history, stopped, progress)


@contextmanager
def _stop_on_signals(event: threading.Event) -> Iterator[None]:
    """In the main thread, the first Ctrl-C (or SIGTERM) asks for a stop after the current step and a final save;
    a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        print("\nStopping after this step and saving; press Ctrl-C again to abort without saving.", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
