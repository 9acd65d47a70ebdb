"""What one server process holds: its configuration, the loaded model, the settings and the job queue.

A :class:`ServerState` is built once (``ServerState.start(config)`` loads the checkpoint) and handed to
``create_app``; nothing lives at module level, so tests can run several servers in one process.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypernet.defaults import A1111_EMBEDDINGS_DIR, A1111_HYPERNETWORK_DIR, A1111_LORA_DIR, TOY_CHECKPOINT, TOY_NOTE
from hypernet.errors import HypernetError
from hypernet.server.jobs import JobQueue

log = logging.getLogger("hypernet.server")

CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".ckpt")
SAMPLE_FORMATS = ("png", "jpg", "jpeg", "webp")

# A1111's settings that mean something here, with their defaults (the type of each value is the setting's type).
# GET /options returns all of them; POST /options validates these and stores any other key as given.
OPTION_DEFAULTS: Mapping[str, Any] = {
    "sd_model_checkpoint": "",  # filled with the loaded checkpoint's title
    "sd_checkpoint_hash": None,
    "sd_hypernetwork": "None",
    "extra_networks_default_multiplier": 1.0,
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "enable_pnginfo": True,
    "jpeg_quality": 80,
    "send_seed": True,
    "send_size": True,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 1,
    "save_optimizer_state": False,
    "save_training_settings_to_txt": True,
    "dataset_filename_word_regex": "",
    "dataset_filename_join_string": " ",
    "training_image_repeats_per_epoch": 1,
    "training_write_csv_every": 500,
    "training_xattention_optimizations": False,
    "training_enable_tensorboard": False,
    "training_tensorboard_save_images": False,
    "training_tensorboard_flush_every": 120,
    "unload_models_when_training": False,
    "pin_memory": False,
    "sd_vae": "Automatic",
    # sampler settings (A1111's names and defaults); hypernet.sampling reads them as infotext fields
    "randn_source": "GPU",
    "eta_noise_seed_delta": 0,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "api_enable_requests": False,  # we never fetch image URLs (A1111: True); not changeable over the API
    "api_forbid_local_requests": True,
}
READ_ONLY_OPTIONS = frozenset({"sd_checkpoint_hash", "api_enable_requests", "api_forbid_local_requests"})


@dataclass
class TrainingRecord:
    """The server's last training run, as the training job leaves it for ``/progress`` and the web UI's chart."""

    name: str
    live: dict[str, Any]  # the latest progress, in the shape ``/progress`` reports under "training"
    losses: list[tuple[int, float]] = field(default_factory=list)
    result: Any = None  # the TrainResult once the run has ended
    error: str | None = None  # why it failed, if it raised
    preview_png: bytes | None = None  # the last preview, kept once the job is gone


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, so that a single call cannot exhaust memory or hold the model for hours."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 2048 * 2048
    max_steps: int = 500
    max_batch_size: int = 16
    max_n_iter: int = 100
    max_train_steps: int = 1_000_000


@dataclass
class ServerConfig:
    """Command-line choices. Every folder a request may name (data, logs) must lie inside one of these."""

    ckpt: Path | None = None
    models_dir: Path = Path("models/Stable-diffusion")
    hypernetwork_dir: Path = A1111_HYPERNETWORK_DIR
    esrgan_dir: Path = Path("models/ESRGAN")
    lora_dir: Path = A1111_LORA_DIR
    embeddings_dir: Path = A1111_EMBEDDINGS_DIR
    data_dir: Path = Path("training_data")
    log_dir: Path = Path("textual_inversion")
    outputs_dir: Path = Path("outputs")
    host: str = "127.0.0.1"
    port: int = 7860
    api_auth: tuple[tuple[str, str], ...] = ()
    ui: bool = True
    limits: Limits = field(default_factory=Limits)
    device: str | None = None  # None: CUDA when available, else the CPU
    precision: str = "fp32"  # model weights: fp32, fp16 or bf16 (hypernetworks stay fp32)
    medvram: bool = False
    lowvram: bool = False

    def __post_init__(self) -> None:
        # absolute, so that answers (A1111 lists full paths) and confinement do not depend on a later chdir
        for name in ("ckpt", "models_dir", "hypernetwork_dir", "lora_dir", "embeddings_dir", "esrgan_dir", "data_dir",
                     "log_dir", "outputs_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).expanduser().absolute())

    def flags(self) -> dict[str, Any]:
        """``GET /cmd-flags``: our flags plus the A1111 names clients look for (credentials masked)."""
        return {
            "ckpt": str(self.ckpt) if self.ckpt else None,
            "ckpt_dir": str(self.models_dir),
            "models_dir": str(self.models_dir),
            "hypernetwork_dir": str(self.hypernetwork_dir),
            "esrgan_dir": str(self.esrgan_dir),
            "esrgan_models_path": str(self.esrgan_dir),
            "lora_dir": str(self.lora_dir),
            "embeddings_dir": str(self.embeddings_dir),
            "data_dir": str(self.data_dir),
            "log_dir": str(self.log_dir),
            "outputs_dir": str(self.outputs_dir),
            "host": self.host,
            "port": self.port,
            "listen": self.host not in ("127.0.0.1", "localhost", "::1"),
            "api": True,
            "api_auth": "***" if self.api_auth else None,
            "nowebui": not self.ui,
            "max_request_bytes": self.limits.max_request_bytes,
            "device": self.device,
            "precision": self.precision,
            "medvram": self.medvram,
            "lowvram": self.lowvram,
        }


@dataclass(frozen=True)
class Checkpoint:
    """One entry of ``GET /sd-models``: A1111 names a checkpoint by its path relative to the models folder."""

    path: Path
    name: str  # relative path, e.g. "sub/model.safetensors"
    short_hash: str | None = None

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    def as_api(self) -> dict[str, Any]:
        return {"title": self.title, "model_name": self.model_name, "hash": self.short_hash, "sha256": None,
                "filename": str(self.path), "config": None}

    def matches(self, wanted: str) -> bool:
        """A1111 accepts a title, a name, a model name or a short hash; so do we (titles without their hash too)."""
        bare = wanted.split(" [")[0].strip()
        return wanted in (self.title, self.short_hash) or bare in (self.name, self.model_name, self.path.stem,
                                                                  str(self.path))


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    generator: Any  # hypernet.engine.generate.Generator (imported lazily: diffusers is slow to import)


class ServerState:
    """The model, its settings and its job queue; shared by the API routes and the web UI."""

    def __init__(self, config: ServerConfig, model: LoadedModel) -> None:
        self.config = config
        self.model = model
        self.jobs = JobQueue()
        self._options: dict[str, Any] = dict(OPTION_DEFAULTS) | training_defaults()
        self._options_lock = threading.Lock()
        self.last_training: TrainingRecord | None = None  # the UI shows the finished run's losses
        self.checkpoints = self.scan_checkpoints()

    @classmethod
    def start(cls, config: ServerConfig) -> ServerState:
        """Find the checkpoint to serve (``--ckpt``, else the first in ``--models-dir``, else the toy model) and load it."""
        found = scan_checkpoints(config)
        if config.ckpt is not None:
            chosen = next((c for c in found if c.path.resolve() == Path(config.ckpt).resolve()), None)
            chosen = chosen or Checkpoint(Path(config.ckpt), Path(config.ckpt).name)
        elif found:
            chosen = found[0]
        else:  # nothing of the user's: the embedded toy model, so a fresh install serves something real
            log.warning("%s; pass --ckpt FILE or put checkpoints in %s", TOY_NOTE, config.models_dir)
            chosen = Checkpoint(TOY_CHECKPOINT, TOY_CHECKPOINT.name)
        return cls(config, load_model(chosen, config))

    # ------------------------------------------------------------------ checkpoints
    def scan_checkpoints(self) -> list[Checkpoint]:
        """The models folder's checkpoints, plus the loaded one (with its hash) wherever it lives."""
        loaded = self.model.checkpoint
        found = [loaded if c.path.resolve() == loaded.path.resolve() else c for c in scan_checkpoints(self.config)]
        if all(c is not loaded for c in found):
            found.insert(0, loaded)
        self.checkpoints = found
        return found

    def find_checkpoint(self, wanted: str) -> Checkpoint:
        for checkpoint in self.checkpoints:
            if checkpoint.matches(wanted):
                return checkpoint
        titles = ", ".join(repr(c.title) for c in self.checkpoints)
        raise HypernetError(f"model {wanted!r} not found; expected one of: {titles}.")

    def switch_model(self, checkpoint: Checkpoint) -> None:
        """Load ``checkpoint`` in place of the current model (call from a job: it must not race a generation)."""
        if checkpoint.path.resolve() == self.model.checkpoint.path.resolve():
            return
        self.model = load_model(checkpoint, self.config)  # the old one stays usable if this load fails
        gc.collect()
        _empty_cuda_cache()
        self.scan_checkpoints()

    # ------------------------------------------------------------------ settings
    def options(self) -> dict[str, Any]:
        """Every setting, as ``GET /options`` returns them (the checkpoint fields follow the loaded model)."""
        with self._options_lock:
            current = dict(self._options)
        current["sd_model_checkpoint"] = self.model.checkpoint.title
        current["sd_checkpoint_hash"] = None
        return current

    def option(self, key: str) -> Any:
        with self._options_lock:
            return self._options.get(key, OPTION_DEFAULTS.get(key))

    def validate_options(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Coerce known settings to their type and check their values; unknown keys pass unchanged."""
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key in READ_ONLY_OPTIONS or key == "sd_model_checkpoint":
                continue  # the checkpoint is switched by the caller, through the job queue
            default = OPTION_DEFAULTS.get(key)
            if key in OPTION_DEFAULTS and default is not None:
                value = _coerce(key, value, type(default))
            if key == "sd_hypernetwork":
                value = value or "None"
                available = self.model.generator.available()
                if value != "None" and value not in available:
                    from hypernet.prompt.tags import resolve_hypernetwork

                    resolve_hypernetwork(value, available)  # raises with a did-you-mean message
            elif key == "samples_format" and value.lower() not in SAMPLE_FORMATS:
                raise HypernetError(f"samples_format {value!r} is not supported; expected one of {', '.join(SAMPLE_FORMATS)}.")
            elif key == "CLIP_stop_at_last_layers" and not 1 <= value <= 12:
                raise HypernetError(f"CLIP_stop_at_last_layers is {value}; expected 1 to 12.")
            clean[key] = value
        return clean

    def set_options(self, changes: Mapping[str, Any]) -> None:
        clean = self.validate_options(changes)
        with self._options_lock:
            self._options.update(clean)

    def close(self) -> None:
        self.jobs.close()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def training_defaults() -> dict[str, Any]:
    """The trainer's own defaults for the A1111 settings it reads (it differs from A1111 where resume needs it)."""
    from dataclasses import fields

    from hypernet.train.config import TrainConfig

    return {f.name: f.default for f in fields(TrainConfig) if f.name in OPTION_DEFAULTS}


def _coerce(key: str, value: Any, kind: type) -> Any:
    """JSON gives ints for floats and sometimes strings for numbers; settings keep their declared type."""
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise HypernetError(f"setting {key} = {value!r} is not a valid {kind.__name__}.") from None


def scan_checkpoints(config: ServerConfig) -> list[Checkpoint]:
    """Checkpoint files (recursive) and diffusers folders in the models folder, sorted like A1111 (by name)."""
    root = Path(config.models_dir)
    found: list[Checkpoint] = []
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file() and path.suffix.lower() in CHECKPOINT_FILE_SUFFIXES:
                found.append(Checkpoint(path, path.relative_to(root).as_posix()))
            elif path.is_file() and path.name == "model_index.json":
                found.append(Checkpoint(path.parent, path.parent.relative_to(root).as_posix()))
    return sorted(found, key=lambda c: c.name.lower())


def load_model(checkpoint: Checkpoint, config: ServerConfig) -> LoadedModel:
    """Load a checkpoint onto the configured device, as ``hypernet generate`` does (same memory options)."""
    from hypernet.engine.generate import Generator
    from hypernet.engine.loading import open_model

    log.info("loading %s (%s, %s)", checkpoint.path, config.device or "default device", config.precision)
    pipe, info = open_model(checkpoint.path, precision=config.precision, device=config.device,
                            medvram=config.medvram, lowvram=config.lowvram)
    named = Checkpoint(checkpoint.path, checkpoint.name, info.short_hash)
    return LoadedModel(named, Generator(pipe, info, config.hypernetwork_dir, config.esrgan_dir,
                                        lora_dirs=[config.lora_dir], embeddings_dir=config.embeddings_dir))
