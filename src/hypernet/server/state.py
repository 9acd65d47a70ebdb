"""What one server process holds: its configuration, the loaded model, the settings and the job queue.

A :class:`ServerState` is built once (``ServerState.start(config)`` loads the checkpoint) and handed to
``create_app``; nothing lives at module level, so tests can run several servers in one process.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from hypernet.defaults import TOY_CHECKPOINT, TOY_NOTE
from hypernet.engine.generate import Generator
from hypernet.engine.loading import open_model
from hypernet.errors import HypernetError
from hypernet.prompt.tags import resolve_hypernetwork
from hypernet.server.jobs import JobQueue
from hypernet.settings import SettingsError
from hypernet.settings.serve import ServeSettings
from hypernet.settings.server import ServerOptions, plain_json
from hypernet.settings.train import TrainSettings

log = logging.getLogger("hypernet.server")

CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".ckpt")

# A1111's settings that mean something here, with their defaults: hypernet.settings.ServerOptions defines them.
# GET /options returns all of them; POST /options validates these and stores any other key as given (plain JSON).
OPTION_DEFAULTS: Mapping[str, Any] = MappingProxyType(ServerOptions().model_dump())
KEPT_RUNS = 64
READ_ONLY_OPTIONS = frozenset(k for k in ServerOptions.model_fields if not ServerOptions.surface(k).api)


@dataclass
class TrainingRecord:
    """The server's last training run, as the training job leaves it for ``/progress`` and the web UI's chart."""

    name: str
    live: dict[str, Any]  # the latest progress, in the shape ``/progress`` reports under "training"
    losses: list[tuple[int, float]] = field(default_factory=list)
    result: Any = None  # the TrainResult once the run has ended
    error: str | None = None  # why it failed, if it raised
    preview_png: bytes | None = None  # the last preview, kept once the job is gone


def _serve_default(name: str, kind: Callable[[Any], Any] = lambda value: value) -> Any:
    """``hypernet serve``'s default for ``name`` (ServeSettings defines it once), for a server made in-process;
    read when the config is made, so the folders follow ``$HYPERNET_*`` as the command line does."""
    return field(default_factory=lambda: kind(ServeSettings.model_fields[name].get_default(call_default_factory=True)))


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, so that a single call cannot exhaust memory or hold the model for hours."""

    max_request_bytes: int = ServeSettings.model_fields["max_request_mb"].default * 1024 * 1024
    max_pixels: int = 2048 * 2048
    max_steps: int = 500
    max_batch_size: int = 16
    max_n_iter: int = 100
    max_train_steps: int = 1_000_000


@dataclass
class ServerConfig:
    """Command-line choices. Every folder a request may name (data, logs) must lie inside one of these."""

    ckpt: Path | None = None
    models_dir: Path = _serve_default("models_dir", Path)
    hypernetwork_dir: Path = _serve_default("hypernetwork_dir", Path)
    esrgan_dir: Path = _serve_default("esrgan_dir", Path)
    lora_dir: Path = _serve_default("lora_dir", Path)
    embeddings_dir: Path = _serve_default("embeddings_dir", Path)
    data_dir: Path = _serve_default("data_dir", Path)
    log_dir: Path = _serve_default("log_dir", Path)
    outputs_dir: Path = _serve_default("outputs_dir", Path)
    host: str = _serve_default("host")
    port: int = _serve_default("port")
    api_auth: tuple[tuple[str, str], ...] = ()
    ui: bool = True
    limits: Limits = field(default_factory=Limits)
    device: str | None = None  # None: CUDA when available, else the CPU
    precision: str = _serve_default("precision")  # model weights (hypernetworks stay fp32)
    medvram: bool = _serve_default("medvram")
    lowvram: bool = _serve_default("lowvram")

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
        self._outside: list[Checkpoint] = []  # checkpoints served from outside the models folder, kept selectable
        self.training_runs: OrderedDict[str, TrainingRecord] = OrderedDict()  # task id -> its run (newest last)
        self.unloaded = False
        self.checkpoints = self.scan_checkpoints()

    # ------------------------------------------------------------------ unload / reload (A1111's endpoints)
    @property
    def device(self) -> str:
        return self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def unload(self) -> None:
        """A1111's unload-checkpoint: the weights leave the GPU for system memory (call from a job). With
        --medvram/--lowvram they already live there between uses, so nothing changes."""
        if self.unloaded or self.config.medvram or self.config.lowvram:
            return
        self.model.generator.pipe.to("cpu")
        gc.collect()
        _empty_cuda_cache()
        self.unloaded = True

    def reload(self) -> None:
        """A1111's reload-checkpoint, also done by the first job after an unload."""
        if self.unloaded:
            self.model.generator.pipe.to(self.device)
            self.unloaded = False

    def remember_training(self, task_id: str, record: TrainingRecord) -> None:
        """Keep a run's record under its task id, so that queued ``?async=true`` runs never overwrite each other's
        outcome (the oldest of more than ``KEPT_RUNS`` are forgotten)."""
        self.training_runs[task_id] = record
        while len(self.training_runs) > KEPT_RUNS:
            self.training_runs.popitem(last=False)

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
        """The models folder's checkpoints, then every one served from elsewhere this session (``--ckpt``, the
        embedded toy model, which is always offered) so switching back to them works; the loaded one with its hash."""
        loaded = self.model.checkpoint
        found = scan_checkpoints(self.config)
        folder = {c.path.resolve() for c in found}
        for extra in (loaded, Checkpoint(TOY_CHECKPOINT, TOY_CHECKPOINT.name)):
            if extra.path.resolve() not in folder and all(c.path.resolve() != extra.path.resolve() for c in self._outside):
                self._outside.append(extra)
        found += self._outside
        found = [loaded if c.path.resolve() == loaded.path.resolve() else c for c in found]
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
        """Check known settings against :class:`~hypernet.settings.server.ServerOptions` (a one-sentence 422
        otherwise); unknown keys pass unchanged if they are plain, finite JSON. Read-only keys are ignored."""
        known = {k: ("None" if k == "sd_hypernetwork" and v is None else v) for k, v in changes.items()
                 if k in ServerOptions.model_fields and k not in READ_ONLY_OPTIONS and k != "sd_model_checkpoint"}
        checked = ServerOptions.parse(known)
        clean = {key: getattr(checked, key) for key in known if key in checked.model_fields_set}
        for key, value in changes.items():
            if key not in ServerOptions.model_fields:
                try:
                    clean[key] = plain_json(value, key)
                except ValueError as e:
                    raise SettingsError(str(e), key) from None
        name = clean.get("sd_hypernetwork")
        if name is not None and name != "None":
            available = self.model.generator.available()
            if name not in available:
                resolve_hypernetwork(name, available)  # raises with a did-you-mean message
        return clean

    def set_options(self, changes: Mapping[str, Any]) -> None:
        clean = self.validate_options(changes)
        with self._options_lock:
            self._options.update(clean)

    def close(self) -> None:
        self.jobs.close()


def _empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def training_defaults() -> dict[str, Any]:
    """The trainer's own defaults for the A1111 settings it reads (it differs from A1111 where resume needs it)."""
    return {name: f.default for name, f in TrainSettings.model_fields.items() if name in OPTION_DEFAULTS}


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
    log.info("loading %s (%s, %s)", checkpoint.path, config.device or "default device", config.precision)
    pipe, info = open_model(checkpoint.path, precision=config.precision, device=config.device,
                            medvram=config.medvram, lowvram=config.lowvram)
    named = Checkpoint(checkpoint.path, checkpoint.name, info.short_hash)
    return LoadedModel(named, Generator(pipe, info, config.hypernetwork_dir, config.esrgan_dir,
                                        lora_dirs=[config.lora_dir], embeddings_dir=config.embeddings_dir))
