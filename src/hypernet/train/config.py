"""Every parameter of A1111's ``train_hypernetwork`` (same names, same defaults, same meaning), A1111's training
settings, and hypernet's own additions; :meth:`TrainConfig.check` turns A1111's bare assertions into sentences."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hypernet.defaults import A1111_HYPERNETWORK_DIR, TRAIN_PRECISIONS
from hypernet.errors import HypernetError

CLIP_GRAD_MODES = ("disabled", "value", "norm")
LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")
CHECKPOINTING = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """One training run. The first block is A1111's ``train_hypernetwork`` signature (``id_task`` aside), with the
    UI defaults of v1.10.1; the second block is A1111 settings that change training; the last block is hypernet's.

    The HTTP API can build one straight from A1111's request body: ``TrainConfig(**body_without_id_task)``.
    """

    # ---- A1111 train_hypernetwork(...) ------------------------------------------------------------------------
    hypernetwork_name: str = ""
    learn_rate: str = "0.00001"  # a schedule: "5e-5:100, 5e-6:1500, 5e-7"
    batch_size: int = 1  # per process
    gradient_step: int = 1  # gradient accumulation
    data_root: str = ""
    log_directory: str = "textual_inversion"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False  # "Do not resize images": keep sizes, batch by size buckets
    steps: int = 100000  # absolute maximum step
    clip_grad_mode: str = "disabled"  # disabled | value | norm
    clip_grad_value: str = "0.1"  # a schedule, like learn_rate
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"  # once | deterministic | random
    use_weight: bool = False  # PNG alpha channel as loss weight
    create_image_every: int = 500
    save_hypernetwork_every: int = 500
    template_filename: str = "style_filewords.txt"
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str = "DPM++ 2M"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512

    # ---- A1111 settings that act on training -------------------------------------------------------------------
    save_optimizer_state: bool = True  # A1111's default is False; exact resume needs the sidecar
    save_training_settings_to_txt: bool = True
    training_write_csv_every: int = 500
    unload_models_when_training: bool = True  # A1111: False. VAE and text encoders leave the GPU once cached
    dataset_filename_word_regex: str = ""
    dataset_filename_join_string: str = " "
    training_enable_tensorboard: bool = False
    training_tensorboard_save_images: bool = False
    training_tensorboard_flush_every: int = 120  # seconds
    clip_skip: int = 1  # A1111's CLIP_stop_at_last_layers

    # ---- hypernet ----------------------------------------------------------------------------------------------
    model: str | None = None  # checkpoint file, diffusers folder or Hub id; not needed when a pipeline is passed
    vae: str | None = None
    hypernetwork_dir: str = str(A1111_HYPERNETWORK_DIR)
    templates_dir: str | None = None  # searched (recursively) besides hypernet's own templates; later names win
    resume_from: str | None = None  # train this file (e.g. a snapshot) instead of <hypernetwork_dir>/<name>
    seed: int | None = None  # None: a random seed, written to the settings JSON; resume exactly with the same one
    device: str | None = None  # None: cuda if available, else cpu (under accelerate launch: this process's device)
    precision: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU) | no | fp16 | bf16
    gradient_checkpointing: str = "auto"  # auto (on CUDA: when the first step runs out of memory) | on | off
    max_bad_steps: int = 10  # stop after this many NaN/inf steps in a row
    # training health (hypernet.train.health), measured at the start and at every snapshot
    validation_split: int = -1  # images held out for the validation loss; -1: a few when the dataset has 20 or more
    health_probes: int = 4  # probe images generated per snapshot (training captions, fixed seeds); 0: none
    stop_when_overcooked: bool = False  # stop when a snapshot over-cooks; the recommended snapshot becomes the final

    # ------------------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The network's base name: A1111 cuts everything from the last ``(`` (old ``name(hash)`` titles)."""
        name = self.hypernetwork_name
        return name.rsplit("(", 1)[0].strip() if "(" in name else name

    @property
    def dynamic_captions(self) -> bool:
        """Whether an image's prompt can change between accesses (so its text encoding cannot be cached)."""
        return bool(self.shuffle_tags) or self.tag_drop_out != 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def check(self) -> None:
        """Refuse values A1111 asserts on, and hypernet's own impossible ones, before any work is done."""
        if not self.hypernetwork_name or not self.name:
            raise HypernetError("hypernetwork_name is empty; name the hypernetwork to train (create one with `hypernet create NAME`).")
        if isinstance(self.learn_rate, (int, float)) and not isinstance(self.learn_rate, bool):
            self.learn_rate = repr(float(self.learn_rate))  # A1111 fails on numbers; we read them as one-rate schedules
        if not isinstance(self.learn_rate, str) or not self.learn_rate.strip() or _is_zero(self.learn_rate):
            raise HypernetError(f'learn_rate "{self.learn_rate}" is empty or 0; expected a rate such as "1e-5" or a schedule such as "5e-5:100, 5e-6:1500, 5e-7".')
        _int(self, "batch_size", minimum=1)
        _int(self, "gradient_step", minimum=1)
        _int(self, "steps", minimum=1)
        for name in ("save_hypernetwork_every", "create_image_every", "training_write_csv_every"):
            if getattr(self, name) is None:
                setattr(self, name, 0)  # A1111 treats None as 0 (disabled)
            _int(self, name, minimum=0)
        _int(self, "clip_skip", minimum=1)
        _int(self, "max_bad_steps", minimum=1)
        _int(self, "validation_split", minimum=-1)
        _int(self, "health_probes", minimum=0)
        if not self.data_root:
            raise HypernetError("data_root is empty; pass the folder of training images (--data).")
        root = Path(self.data_root)
        if not root.is_dir():
            raise HypernetError(f"{root}: the dataset folder does not exist (data_root); pass a folder of training images.")
        if not any(root.iterdir()):
            raise HypernetError(f"{root}: the dataset folder is empty (data_root); put the training images (and optional .txt captions) in it.")
        if not self.log_directory:
            raise HypernetError("log_directory is empty; pass a folder for snapshots, previews and logs (A1111's default is textual_inversion).")
        if not self.varsize:
            for name in ("training_width", "training_height"):
                _int(self, name, minimum=8)
                if getattr(self, name) % 8:
                    raise HypernetError(f"{name} is {getattr(self, name)}; expected a multiple of 8, e.g. 512.")
        mode = str(self.clip_grad_mode or "disabled").lower()
        if mode not in CLIP_GRAD_MODES:
            raise HypernetError(f'clip_grad_mode "{self.clip_grad_mode}" is unknown; expected one of: {", ".join(CLIP_GRAD_MODES)}.')
        self.clip_grad_mode = mode
        if self.latent_sampling_method not in LATENT_SAMPLING_METHODS:
            raise HypernetError(
                f'latent_sampling_method "{self.latent_sampling_method}" is unknown; expected one of: {", ".join(LATENT_SAMPLING_METHODS)}.'
            )
        drop = float(self.tag_drop_out or 0)
        if not 0 <= drop <= 1:
            raise HypernetError(f"tag_drop_out is {self.tag_drop_out}; expected a probability between 0 and 1.")
        self.tag_drop_out = drop
        if self.precision not in TRAIN_PRECISIONS:
            raise HypernetError(f'precision "{self.precision}" is unknown; expected one of: {", ".join(TRAIN_PRECISIONS)}.')
        if self.gradient_checkpointing not in CHECKPOINTING:
            raise HypernetError(
                f'gradient_checkpointing "{self.gradient_checkpointing}" is unknown; expected one of: {", ".join(CHECKPOINTING)}.'
            )
        if self.create_image_every:
            _int(self, "preview_steps", minimum=1)
            for name in ("preview_width", "preview_height"):
                if self.preview_from_txt2img and (getattr(self, name) < 8 or getattr(self, name) % 8):
                    raise HypernetError(f"{name} is {getattr(self, name)}; expected a positive multiple of 8, e.g. 512.")
        if self.resume_from is not None and not Path(self.resume_from).is_file():
            raise HypernetError(f"{self.resume_from}: no such hypernetwork file to resume from (resume_from).")
        if self.templates_dir is not None and not Path(self.templates_dir).is_dir():
            raise HypernetError(f"{self.templates_dir}: the templates folder does not exist (templates_dir).")

    def settings_json(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The keys A1111 writes to ``settings-<time>.json`` plus hypernet's own, in A1111's order first."""
        keys = [
            "batch_size", "clip_grad_mode", "clip_grad_value", "create_image_every", "data_root", "gradient_step",
            "latent_sampling_method", "learn_rate", "steps", "training_width", "training_height",
            "save_hypernetwork_every",
        ]
        preview = [
            "preview_prompt", "preview_negative_prompt", "preview_steps", "preview_sampler_name", "preview_cfg_scale",
            "preview_seed", "preview_width", "preview_height",
        ]
        out = {key: getattr(self, key) for key in keys}
        out["hypernetwork_name"] = self.name
        if self.preview_from_txt2img:
            out |= {key: getattr(self, key) for key in preview}
        ours = ["varsize", "shuffle_tags", "tag_drop_out", "use_weight", "clip_skip", "precision", "gradient_checkpointing",
                "resume_from", "model", "vae", "validation_split", "health_probes", "stop_when_overcooked"]
        out |= {key: getattr(self, key) for key in ours}
        return extra | out


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False  # a schedule; the parser names its bad parts


def _int(config: TrainConfig, name: str, *, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # A1111's API rejects 1.0; a JSON client sending it meant 1
            setattr(config, name, value)
        else:
            raise HypernetError(f"{name} is {value!r}; expected a whole number.")
    if value < minimum:
        what = {-1: "-1 (automatic), 0 or a positive whole number", 0: "0 or a positive whole number", 1: "a positive whole number"}.get(minimum, f"a whole number of at least {minimum}")
        raise HypernetError(f"{name} is {value}; expected {what}.")

