"""Training a hypernetwork: A1111's ``train_hypernetwork`` (same parameters, outputs and loss), resumable exactly,
NaN-safe, with cached latents and text, mixed precision, and data parallelism under ``accelerate launch``.

The training step is :meth:`Trainer.train_step`; everything else prepares it or writes what it produced.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from diffusers import DDPMScheduler, DiffusionPipeline

from hypernet import __version__
from hypernet.engine.attention import attention_widths, install_hypernetworks
from hypernet.engine.checkpoints import ModelInfo, load_pipeline
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.generate import Generator, Settings
from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork, list_hypernetworks, load_hypernetwork
from hypernet.sampling import resolve_sampler
from hypernet.train.config import TrainConfig
from hypernet.train.dataset import Batch, TrainingDataset, build_dataset, derive_seed, pad_and_stack, read_template, resolve_template
from hypernet.train.outputs import RunOutputs
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


@dataclass
class TrainResult:
    filename: str | None  # the final network file (None when no step was trained)
    step: int
    start_step: int
    stopped: str  # "finished", "schedule_finished", "interrupted", "diverged", "error"
    message: str  # one sentence for the user
    log_directory: str | None
    seed: int
    last_snapshot: str | None = None
    last_preview: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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


# ================================================================================================ the trainer
class Trainer:
    """One run, prepared by :meth:`prepare`, executed by :meth:`run`. The pipeline is restored by ``cleanup``."""

    def __init__(self, config: TrainConfig, progress: ProgressCallback | None, stop: Callable[[], bool]) -> None:
        self.config = config
        self.name = config.name
        self.progress = progress
        self.external_stop = stop
        self.procs = Processes.detect(config.device)
        self.device = self.procs.device
        self.warnings: list[str] = []
        self.losses: list[tuple[int, float]] = []
        self.skipped_steps: list[int] = []  # NaN/inf: no update
        self.start_step, self.final_step = 0, config.steps
        self.last_snapshot: str | None = None
        self.last_preview: str | None = None
        self.last_prompts: list[str] = []
        self.previewer: Generator | None = None  # previews apply the network directly, as A1111's do
        self.outputs: RunOutputs | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._times: deque[tuple[float, int]] = deque(maxlen=20)

    # ------------------------------------------------------------------------------------------ preparation
    def prepare(self, pipe: DiffusionPipeline | None, info: ModelInfo | None, cleanup: ExitStack) -> None:
        """A1111's start-up order: cheap checks first (template, network, steps, schedules), then the model, the
        dataset (VAE and text encodings cached), the optimizer, and the log folder."""
        self._load_network()
        self._load_model(pipe, info)
        self._borrow_pipeline(cleanup)
        self._build_data()
        self._attach_network(cleanup)
        if self.procs.main:
            c = self.config
            self.started = datetime.now()
            self.outputs = RunOutputs(
                c.log_directory, self.name, self.started, snapshots=c.save_hypernetwork_every > 0,
                images=c.create_image_every > 0, csv_every=c.training_write_csv_every,
                tensorboard=c.training_enable_tensorboard, tensorboard_images=c.training_tensorboard_save_images,
                tensorboard_flush_secs=c.training_tensorboard_flush_every,
            )
            cleanup.callback(self.outputs.close)
            if c.save_training_settings_to_txt:
                self.outputs.write_settings(c.settings_json(self._settings_extra()))

    def _load_network(self) -> None:
        c = self.config
        self.template_path = resolve_template(c.template_filename, c.templates_dir)
        self.lines = read_template(self.template_path)
        source, self.final_path = self._network_paths()
        self.hn: Hypernetwork = load_hypernetwork(source)
        self.hn.check_runnable()
        self.start_step = self.hn.step
        if self.start_step >= c.steps:
            raise AlreadyTrained(
                f"{source} has already been trained for {self.start_step} steps, which reaches steps={c.steps}; "
                "raise steps to train further."
            )
        self.lr_schedule = LearnRateSchedule.parse(c.learn_rate, c.steps, self.start_step, field="learn_rate")
        self.clip_schedule = (
            LearnRateSchedule.parse(c.clip_grad_value, c.steps, self.start_step, field="clip_grad_value")
            if c.clip_grad_mode != "disabled" else None
        )
        self.final_step = self.lr_schedule.phases[-1].end_step
        self.seed = self.procs.broadcast(c.seed if c.seed is not None else random.randrange(2**31))

    def _load_model(self, pipe: DiffusionPipeline | None, info: ModelInfo | None) -> None:
        c = self.config
        if pipe is None:
            if not c.model:
                raise HypernetError("model is empty; pass the checkpoint to train against (--model FILE).")
            self._report("preparing", message=f"Loading {c.model}...")
            amp = self._amp_dtype(torch.float32)
            dtype = amp if amp is not None and self.device.type == "cuda" else torch.float32  # half weights on GPUs
            pipe, info = load_pipeline(c.model, vae=c.vae, dtype=dtype)
        elif info is None:
            raise TypeError("train_hypernetwork(pipe=...) needs the pipeline's ModelInfo as info=")
        self.pipe, self.info, self.unet = pipe, info, pipe.unet
        self.amp_dtype = self._amp_dtype(self.unet.dtype)
        self._check_widths()
        if c.create_image_every and self.procs.main:
            sampler = c.preview_sampler_name if c.preview_from_txt2img else PREVIEW_DEFAULTS["sampler_name"]
            resolve_sampler(sampler)  # a bad sampler name fails now, not at step 500

    def _borrow_pipeline(self, cleanup: ExitStack) -> None:
        """Freeze the model on the device; put processors, scheduler, devices and checkpointing back afterwards."""
        pipe, unet = self.pipe, self.unet
        self.encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
        devices = {m: m.device for m in (unet, pipe.vae, *self.encoders)}
        processors, scheduler, checkpointing = unet.attn_processors, pipe.scheduler, unet.is_gradient_checkpointing
        cleanup.callback(lambda: [m.to(d) for m, d in devices.items()])
        cleanup.callback(lambda: setattr(pipe, "scheduler", scheduler))
        cleanup.callback(unet.set_attn_processor, processors)
        cleanup.callback(lambda: None if checkpointing else unet.disable_gradient_checkpointing())
        for module in devices:
            module.requires_grad_(False).to(self.device)

    def _build_data(self) -> None:
        """Cache latents (per sampling method) and, when captions cannot change, text encodings; then unload."""
        c = self.config
        self._report("preparing", message=f"Preparing dataset from {c.data_root}...")
        self.noise_scheduler = training_noise_scheduler(self.pipe, self.info.prediction_type)
        self.encode = self._text_encoder(self.pipe, keep_cache=not c.dynamic_captions)
        self.data: TrainingDataset = build_dataset(
            data_root=Path(c.data_root), vae=self.pipe.vae, encode=self.encode, name=self.name, lines=self.lines,
            seed=self.seed, size=None if c.varsize else (c.training_width, c.training_height), use_weight=c.use_weight,
            latent_sampling_method=c.latent_sampling_method, shuffle_tags=c.shuffle_tags, tag_drop_out=c.tag_drop_out,
            word_regex=c.dataset_filename_word_regex, join_string=c.dataset_filename_join_string,
            batch_size=c.batch_size, world_size=self.procs.world, gradient_step=c.gradient_step,
            num_train_timesteps=self.noise_scheduler.config.num_train_timesteps, sdxl=self.info.family == "sdxl",
            device=self.device,
        )
        if self.data.skipped:
            self.warnings.append(f"{len(self.data.skipped)} files in {c.data_root} are not readable images and were "
                                 "left out: " + "; ".join(self.data.skipped) + ".")
        self.warnings += self.data.notes
        self.offloaded = [self.pipe.vae] + ([] if c.dynamic_captions else self.encoders)
        if c.unload_models_when_training and self.device.type != "cpu":
            for module in self.offloaded:
                module.to("cpu")
            torch.cuda.empty_cache()

    def _attach_network(self, cleanup: ExitStack) -> None:
        """The network trains in fp32 through the processor that previews use too; a saved optimizer state resumes."""
        c = self.config
        self.hn.to(device=self.device, dtype=torch.float32).train().requires_grad_(True)
        cleanup.callback(self.hn.eval)
        self.params = list(self.hn.parameters())
        if self.procs.main and c.create_image_every:
            # installs its processor (training uses the same one); tags in preview prompts resolve in the network folder
            self.previewer = Generator(self.pipe, self.info, self.config.hypernetwork_dir)
            self.stack = self.previewer.stack
        else:
            self.stack = install_hypernetworks(self.unet)
        self.stack.set([(self.hn, 1.0)])
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if c.gradient_checkpointing == "on":
            self.unet.enable_gradient_checkpointing()

    def _network_paths(self) -> tuple[Path, Path]:
        """(file to train from, file the final network goes to)."""
        c = self.config
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
            self.warnings.append(f"{main} is a .safetensors file, which has no optimizer sidecar; for exact resume use "
                                 "the .pt snapshots in the log folder.")
        return main, main

    def _amp_dtype(self, weights: torch.dtype) -> torch.dtype | None:
        """Autocast dtype: bf16 (or fp16 without bf16 support) on CUDA, fp32 on CPU, unless asked otherwise;
        half-precision weights always compute in their dtype."""
        precision, device = self.config.precision, self.procs.device
        if precision == "fp16":
            return torch.float16
        if precision == "bf16":
            return torch.bfloat16
        if weights != torch.float32:
            return weights
        if precision == "auto" and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None

    def _check_widths(self) -> None:
        widths = attention_widths(self.unet)
        hits = [w for w in self.hn.widths if w in widths]
        if not hits:
            raise HypernetError(
                f"hypernetwork {self.name!r} has modules for widths {self.hn.widths}, but the attention layers of "
                f"{self.info.name} take widths {sorted(widths)}: there is nothing to train; create the network with "
                f"--sizes {','.join(map(str, sorted(widths)))}."
            )
        text = sum(self.info.text_widths)
        if text in widths and text not in hits:
            self.warnings.append(f"hypernetwork {self.name!r} has no module for this model's text width {text}, so "
                                 "cross-attention is not trained; it was probably made for another model family.")

    def _text_encoder(self, pipe: DiffusionPipeline, keep_cache: bool) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]:
        shared = PromptEncoder(pipe, clip_skip=self.config.clip_skip)

        def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
            encoder = shared if keep_cache else PromptEncoder(pipe, clip_skip=self.config.clip_skip)  # no growing cache
            out = [encoder.encode(p) for p in prompts]
            pooled = torch.cat([c.pooled for c in out]) if out[0].pooled is not None else None
            return pad_and_stack([c.embeds for c in out]), pooled

        return encode

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW (torch defaults) at the scheduled rate, or the class a matching ``.optim`` sidecar names; its
        saved state is restored, as A1111 does."""
        name = self.hn.optimizer_name or "AdamW"
        cls = getattr(torch.optim, name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            self.warnings.append(f'optimizer "{name}" named in the .optim sidecar is not a torch.optim class; using AdamW.')
            cls = torch.optim.AdamW
        optimizer = _make_optimizer(cls, self.params, self.lr_schedule.value)
        if self.hn.optimizer_state_dict is not None:
            try:
                optimizer.load_state_dict(self.hn.optimizer_state_dict)
            except (ValueError, KeyError, RuntimeError, TypeError) as e:
                self.warnings.append(f"the saved optimizer state does not fit this network ({e}); starting a fresh one.")
                optimizer = _make_optimizer(cls, self.params, self.lr_schedule.value)
            self.hn.optimizer_state_dict = None
        for group in optimizer.param_groups:
            group["lr"] = self.lr_schedule.value
        return optimizer

    def _settings_extra(self) -> dict[str, Any]:
        a = self.hn.arch
        return {
            "datetime": self.started.strftime("%Y-%m-%d %H:%M:%S"),
            "model_name": self.info.name,
            "model_hash": self.info.short_hash,
            "num_of_dataset_images": len(self.data.items),
            "layer_structure": a.layer_structure,
            "activation_func": a.activation_func,
            "weight_init": a.weight_init,
            "add_layer_norm": a.add_layer_norm,
            "use_dropout": a.use_dropout,
            "initial_step": self.start_step,
            "log_directory": str(self.outputs.root) if self.outputs else None,
            "template_file": str(self.template_path),
            "seed": self.seed,
            "device": str(self.device),
            "processes": self.procs.world,
            "autocast": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
            "effective_batch_size": self.data.batch_size,
            "effective_gradient_step": self.data.gradient_step,
            "hypernet_version": __version__,
        }

    # ---------------------------------------------------------------------------------------- the training step
    def train_step(self, step: int) -> float | None:
        """One optimizer step: ``gradient_step`` micro-batches of cached latents and text, gradients averaged over
        processes, the NaN/inf guard, clipping of the *unscaled* gradients, the update. Returns the step's loss
        (the mean over its micro-batches and processes), or None when non-finite values made it skip the update."""
        data, scaler, optimizer = self.data, self.scaler, self.optimizer
        total = torch.zeros((), device=self.device)
        for micro in range(data.gradient_step):
            batch = data.batch(step, micro, self.procs.rank, self.device, self.encode)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                loss = diffusion_loss(self.unet, self.noise_scheduler, batch) / data.gradient_step
            scaler.scale(loss).backward()
            total += loss.detach()
        loss_value = self.procs.average_gradients(self.params, total)  # one all-reduce; nothing on one process
        scaler.unscale_(optimizer)  # clip and check the real gradients, not the loss-scaled ones
        if not (math.isfinite(loss_value) and gradients_finite(self.params)):
            optimizer.zero_grad(set_to_none=True)
            scaler.update()  # fp16: halves the loss scale
            return None
        if self.clip_schedule is not None:
            clip_gradients(self.params, self.config.clip_grad_mode, self.clip_schedule.value)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.last_prompts = batch.prompts
        return loss_value

    # ------------------------------------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        try:
            stopped = self._loop()
        except Exception:
            with suppress(Exception):  # the final save still happens, as in A1111, and never hides the error
                self._finish("error")
            raise
        return self._finish(stopped)

    def _loop(self) -> str:
        c, step, bad = self.config, self.hn.step, 0
        self._times.append((time.perf_counter(), step))
        self._report("training", step=step)
        while step < c.steps:
            if self.procs.any(self.external_stop()):
                return "interrupted"
            self.lr_schedule.apply(self.optimizer, step)
            if self.lr_schedule.finished:
                return "schedule_finished"
            if self.clip_schedule is not None:
                self.clip_schedule.step(step)
            torch.manual_seed(derive_seed(self.seed, "dropout", step, self.procs.rank))  # dropout masks, resumable
            loss = self._step_with_memory_fallback(step)
            step = self.hn.step = step + 1  # a skipped step uses up its data too, so resume stays exact
            bad = 0 if loss is not None else bad + 1
            if loss is None:
                self.skipped_steps.append(step)
                if bad >= c.max_bad_steps:
                    return "diverged"
            self._after_step(step, loss)
        return "finished"

    def _step_with_memory_fallback(self, step: int) -> float | None:
        auto = self.config.gradient_checkpointing == "auto" and self.device.type == "cuda"
        try:
            loss = self.train_step(step)
        except torch.OutOfMemoryError:
            if not auto or self.unet.is_gradient_checkpointing:
                raise HypernetError(
                    f"the GPU ran out of memory at step {step + 1} even with gradient checkpointing; lower batch_size "
                    "or the training size, or use --precision fp16."
                ) from None
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            self._enable_checkpointing("the step ran out of GPU memory without it")
            loss = self.train_step(step)
        if auto and not self.unet.is_gradient_checkpointing and step == self.start_step:
            total = torch.cuda.get_device_properties(self.device).total_memory
            if torch.cuda.max_memory_allocated(self.device) > 0.85 * total:
                self._enable_checkpointing("the first step used over 85% of the GPU's memory")
        return loss

    def _enable_checkpointing(self, why: str) -> None:
        self.unet.enable_gradient_checkpointing()
        self.warnings.append(f"gradient checkpointing switched on: {why}.")

    def _after_step(self, step: int, loss: float | None) -> None:
        c, out = self.config, self.outputs
        lr = self.optimizer.param_groups[0]["lr"]
        if loss is not None:
            self.losses.append((step, loss))
        self._times.append((time.perf_counter(), step))
        if out is None:
            return
        if loss is not None:
            out.log_loss(step, self.data.steps_per_epoch, loss, lr)
            out.log_scalars(step, {"loss": loss, "learn_rate": lr})
        if c.save_hypernetwork_every and step % c.save_hypernetwork_every == 0:
            self._report("saving", step=step, loss=loss)
            self.last_snapshot = str(self._save(out.snapshot_path(step)))
            out.write_loss_curve(self.losses)
        if c.create_image_every and step % c.create_image_every == 0 and self.previewer is not None:
            self._report("preview", step=step, loss=loss)
            self.last_preview = str(self._preview(step))
        self._report("training", step=step, loss=loss)

    def _save(self, path: Path) -> Path:
        """Snapshot or final file (plus ``.optim`` sidecar), stamped with the model it was trained on."""
        if not all(bool(p.isfinite().all()) for p in self.params):  # unreachable with finite gradients; never save it
            raise HypernetError(f"the network has non-finite weights at step {self.hn.step}; {path} was not written.")
        self.hn.name, self.hn.sd_checkpoint, self.hn.sd_checkpoint_name = self.name, self.info.short_hash, self.info.name
        keep_optimizer = self.config.save_optimizer_state and path.suffix.lower() == ".pt"
        return self.hn.save(path, optimizer=self.optimizer if keep_optimizer else None)

    def _preview(self, step: int) -> Path:
        c = self.config
        seed = c.preview_seed if c.preview_seed != -1 else derive_seed(self.seed, "preview") % 2**32  # one per run
        if c.preview_from_txt2img:
            settings = Settings(
                prompt=c.preview_prompt or self._batch_prompt(), negative_prompt=c.preview_negative_prompt,
                sampler_name=c.preview_sampler_name, steps=c.preview_steps, cfg_scale=c.preview_cfg_scale, seed=seed,
                width=c.preview_width, height=c.preview_height, clip_skip=c.clip_skip,
            )
        else:  # A1111: the batch's first prompt at the training size with processing defaults
            width, height = self.data.items[0].size if c.varsize else (c.training_width, c.training_height)
            settings = Settings(prompt=self._batch_prompt(), seed=seed, width=width, height=height,
                                clip_skip=c.clip_skip, **PREVIEW_DEFAULTS)
        self.hn.eval()
        try:
            with self._models_on_device():
                result = self.previewer.generate(settings, extra_networks=[(self.hn, 1.0)])
        finally:
            self.hn.train()
            self.stack.set([(self.hn, 1.0)])  # generate() empties the stack when it ends
        return self.outputs.save_preview(result.images[0], result.infotexts[0], step)

    def _batch_prompt(self) -> str:
        return self.last_prompts[0] if self.last_prompts else self.data.prompt(0, random.Random(self.seed))

    @contextmanager
    def _models_on_device(self) -> Iterator[None]:
        moved = [m for m in self.offloaded if m.device != self.device]
        for module in moved:
            module.to(self.device)
        try:
            yield
        finally:
            for module in moved:
                module.to("cpu")

    def _finish(self, stopped: str) -> TrainResult:
        c, step, out = self.config, self.hn.step, self.outputs
        saved = None
        if self.procs.main and step > self.start_step:
            self._report("saving", step=step)
            saved = str(self._save(self.final_path))
        if out is not None:
            out.write_loss_curve(self.losses)
            out.write_contact_sheet()
        if stopped != "error":
            self.procs.barrier()
        if self.skipped_steps:
            listed = ", ".join(map(str, self.skipped_steps[:10])) + (", ..." if len(self.skipped_steps) > 10 else "")
            self.warnings.append(f"{len(self.skipped_steps)} steps had a NaN or infinite loss or gradients and were "
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
        }[stopped]
        self._report("done", step=step, message=message, last_saved=saved)
        return TrainResult(
            filename=saved, step=step, start_step=self.start_step, stopped=stopped, message=message,
            log_directory=str(out.root) if out else None, seed=self.seed, last_snapshot=self.last_snapshot,
            last_preview=self.last_preview, losses=list(self.losses), warnings=list(dict.fromkeys(self.warnings)),
        )

    def _report(self, phase: str, *, step: int | None = None, loss: float | None = None, message: str = "",
                last_saved: str | None = None) -> None:
        if self.progress is None or not self.procs.main:
            return
        step = self.start_step if step is None else step
        p = TrainProgress(phase, step, self.final_step, self.start_step, loss=loss, message=message,
                          last_preview=self.last_preview, last_saved=last_saved or self.last_snapshot)
        if self.optimizer is not None:
            spe = self.data.steps_per_epoch
            p.epoch, p.epoch_step = divmod(max(step - 1, 0), spe)
            p.learn_rate = self.optimizer.param_groups[0]["lr"]
            recent = [value for _, value in self.losses[-spe:]]
            p.loss_avg = sum(recent) / len(recent) if recent else None
            (t0, s0), (t1, s1) = self._times[0], self._times[-1]
            if s1 > s0:
                p.it_per_s = (s1 - s0) / max(t1 - t0, 1e-9)
                p.eta_s = (self.final_step - step) / p.it_per_s
        self.progress(p)


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
    back as it was afterwards (processors, scheduler, devices); otherwise ``config.model`` is loaded. Do not
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
    trainer = Trainer(config, progress, lambda: interrupt.is_set() or bool(polled and polled()))
    with ExitStack() as cleanup:
        cleanup.enter_context(_stop_on_signals(interrupt))
        devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
        cleanup.enter_context(torch.random.fork_rng(devices=devices))  # leave the global RNG as it was
        trainer.prepare(pipe, info, cleanup)
        return trainer.run()


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
