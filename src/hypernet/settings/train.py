"""One training run: every parameter of A1111's ``train_hypernetwork``, the A1111 settings that act on training, and
hypernet's own (``POST /sdapi/v1/train/hypernetwork``, ``hypernet train``, :class:`hypernet.train.TrainConfig`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hypernet.defaults import TRAIN_PRECISIONS, hypernetwork_dir
from hypernet.settings import limits as L
from hypernet.settings.base import On, SettingsModel
from hypernet.settings.folders import SERVER_DECIDES, HypernetworkDir

A1111_SETTING = "an A1111 setting: the server takes it from /options"
_EXAMPLE = '"5e-5:100, 5e-6:1500, 5e-7"'


def check_schedule(text: str, field: str) -> str:
    """A1111's ``rate:step, rate:step, rate`` text, read as A1111 reads it (left to right, up to the first bare rate
    or ``-1`` step): every rate a finite number above 0, every step a whole number from -1 up; the sentences are
    those of :mod:`hypernet.train.schedule`, which runs the schedule."""
    if not text.strip():
        raise ValueError(f'{field} is empty; expected a rate such as "1e-5" or a schedule such as {_EXAMPLE}.')
    for item in text.split(","):
        if not item.strip():
            continue
        parts = item.split(":")
        rate = parts[0]
        try:
            value = float(rate)
        except ValueError:
            raise ValueError(f'{field} "{text}" has the rate "{rate.strip()}" in "{item.strip()}", which is not a '
                             f"number; expected rate:step pairs such as {_EXAMPLE}.") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f'{field} "{text}" has the rate {rate.strip()}; every rate must be a finite number '
                             "above 0.")
        if len(parts) != 2:
            break  # A1111: a bare rate (or a:b:c) runs to the end; nothing after it is read
        try:
            end = int(parts[1])
        except ValueError:
            raise ValueError(f'{field} "{text}" has the step "{parts[1].strip()}" in "{item.strip()}", which is not a '
                             f"whole number; expected rate:step pairs such as {_EXAMPLE}.") from None
        if end < -1 or end > L.MAX_TRAIN_STEPS:
            raise ValueError(f'{field} "{text}" has the step {end}; expected -1 to {L.MAX_TRAIN_STEPS}.')
        if end == -1:
            break
    return text


def _every(help: str, flags: tuple[str, ...], label: str) -> tuple[Any, On]:
    return Field(ge=0, le=L.MAX_TRAIN_STEPS, description=help), On(cli=flags, ui=label)


class TrainSettings(SettingsModel):
    """A1111's ``train_hypernetwork`` parameters (``id_task`` aside, v1.10.1 UI defaults), A1111's training settings,
    then hypernet's additions."""

    # ---- A1111 train_hypernetwork(...) ----------------------------------------------------------------------------
    hypernetwork_name: Annotated[str, Field(max_length=200, description="The hypernetwork to train: a name in the "
                                            "hypernetwork folder (make it with `hypernet create`)."),
                                 On(cli=("NAME",), ui="Hypernetwork")] = ""
    learn_rate: Annotated[str, Field(max_length=2000, description="Rate or schedule, e.g. " + _EXAMPLE
                                     + "; training stops where it ends."),
                          On(ui="Hypernetwork learning rate")] = "0.00001"
    batch_size: Annotated[int, Field(ge=1, le=L.MAX_TRAIN_BATCH, description="Images per step (per process)."),
                          On(ui="Batch size")] = 1
    gradient_step: Annotated[int, Field(ge=1, le=L.MAX_GRADIENT_STEPS, description="Gradient accumulation: "
                                        "micro-batches per optimizer step."),
                             On(ui="Gradient accumulation steps")] = 1
    data_root: Annotated[str, Field(max_length=4096, description="Folder of training images; captions from "
                                    "<image>.txt or the file name."),
                         On(cli=("--data", "--data-root"), ui="Dataset directory")] = ""
    log_directory: Annotated[str, Field(max_length=4096, description="Snapshots, previews, loss CSV and settings go "
                                        "to <this>/<date>/<name>/."),
                             On(ui="Log directory")] = "textual_inversion"
    training_width: Annotated[int, Field(ge=L.MIN_SIDE, le=L.MAX_SIDE, description="Training width (images are "
                                         "resized to it); a multiple of 8."),
                              On(cli=("--width", "--training-width"), ui="Width")] = 512
    training_height: Annotated[int, Field(ge=L.MIN_SIDE, le=L.MAX_SIDE, description="Training height; a multiple "
                                          "of 8."),
                               On(cli=("--height", "--training-height"), ui="Height")] = 512
    varsize: Annotated[bool, Field(description="Do not resize images: train each at its own size, batched by size."),
                       On(cli=("--varsize",), ui="Do not resize images")] = False
    steps: Annotated[int, Field(ge=1, le=L.MAX_TRAIN_STEPS, description="Absolute step to stop at (a resumed "
                                "network continues from its step)."),
                     On(ui="Max steps")] = 100000
    clip_grad_mode: Annotated[Literal["disabled", "value", "norm"], Field(description="Gradient clipping."),
                              On(ui="Gradient clipping")] = "disabled"
    clip_grad_value: Annotated[str, Field(max_length=2000, description="Clip threshold; a schedule like "
                                          "--learn-rate."),
                               On(ui="Clipping value")] = "0.1"
    shuffle_tags: Annotated[bool, Field(description="Shuffle the comma-separated tags of each caption."),
                            On(cli=("--shuffle-tags",), ui="Shuffle tags by ',' when creating prompts")] = False
    tag_drop_out: Annotated[float, Field(ge=0, le=1, description="Drop each caption tag with this probability."),
                            On(cli=("--tag-dropout", "--tag-drop-out"), ui="Drop out tags when creating prompts")
                            ] = 0.0
    latent_sampling_method: Annotated[Literal["once", "deterministic", "random"],
                                      Field(description="How image latents are sampled from the VAE."),
                                      On(cli=("--latent-sampling", "--latent-sampling-method"),
                                         ui="Latent sampling method")] = "once"
    use_weight: Annotated[bool, Field(description="Use the PNG alpha channel as loss weight."),
                          On(cli=("--use-weight",), ui="Use PNG alpha channel as loss weight")] = False
    create_image_every: Annotated[int, *_every("Preview image every N steps (0: never).",
                                               ("--image-every", "--create-image-every"),
                                               "Save an image every N steps (0: off)")] = 500
    save_hypernetwork_every: Annotated[int, *_every("Save a snapshot every N steps (0: never).",
                                                    ("--save-every", "--save-hypernetwork-every"),
                                                    "Save a copy of the hypernetwork every N steps (0: off)")] = 500
    template_filename: Annotated[str, Field(max_length=255, description="Prompt template: hypernetwork.txt, "
                                            "none.txt, style.txt, style_filewords.txt, subject.txt, "
                                            "subject_filewords.txt, or a file."),
                                 On(cli=("--template", "--template-filename"), ui="Prompt template")
                                 ] = "style_filewords.txt"
    preview_from_txt2img: Annotated[bool, Field(description="Previews use the preview_* fields (A1111: 'Read "
                                                "parameters from txt2img'); on the command line any --preview-* "
                                                "option but the seed turns it on."),
                                    On(cli=(), ui="Read parameters from txt2img tab when making previews",
                                       why="the command line turns it on by giving any --preview-* option")] = False
    preview_prompt: Annotated[str, Field(max_length=L.MAX_PROMPT_CHARS, description="Preview prompt (default: the "
                                         "batch's prompt)."), On(ui="Prompt")] = ""
    preview_negative_prompt: Annotated[str, Field(max_length=L.MAX_PROMPT_CHARS, description="Preview negative "
                                                  "prompt."), On(ui="Negative prompt")] = ""
    preview_steps: Annotated[int, Field(ge=1, le=L.MAX_STEPS, description="Preview sampling steps."),
                             On(ui="Sampling steps")] = 20
    preview_sampler_name: Annotated[str, Field(max_length=100, description="Preview sampler, e.g. 'DPM++ 2M'."),
                                    On(cli=("--preview-sampler", "--preview-sampler-name"), ui="Sampling method")
                                    ] = "DPM++ 2M"
    preview_cfg_scale: Annotated[float, Field(ge=0, le=L.MAX_CFG, description="Preview CFG scale."),
                                 On(ui="CFG scale")] = 7.0
    preview_seed: Annotated[int, Field(ge=-1, le=L.SEED_MAX, description="Preview seed; -1: one random seed for "
                                       "the whole run."), On(ui="Seed (-1: random)", expect=L.SEED_EXPECT)] = -1
    preview_width: Annotated[int, Field(ge=L.MIN_SIDE, le=L.MAX_SIDE, description="Preview width."),
                             On(ui="Width")] = 512
    preview_height: Annotated[int, Field(ge=L.MIN_SIDE, le=L.MAX_SIDE, description="Preview height."),
                              On(ui="Height")] = 512

    # ---- A1111 settings that act on training -----------------------------------------------------------------------
    save_optimizer_state: Annotated[bool, Field(description="Write .pt.optim sidecars for exact resume (A1111's "
                                                "default is off)."),
                                    On(cli=("--save-optimizer-state/--no-save-optimizer-state",), ui=None,
                                       api=False, why=A1111_SETTING)] = True
    save_training_settings_to_txt: Annotated[bool, Field(description="Write settings-<time>.json to the log "
                                                         "folder."),
                                             On(cli=(), ui=None, api=False, why=A1111_SETTING)] = True
    training_write_csv_every: Annotated[int, Field(ge=0, le=L.MAX_TRAIN_STEPS, description="Write a loss CSV row "
                                                   "every N steps (0: never)."),
                                        On(cli=("--csv-every",), ui=None, api=False, why=A1111_SETTING)] = 500
    unload_models_when_training: Annotated[bool, Field(description="Move the VAE and text encoders off the GPU "
                                                       "once their outputs are cached (A1111: off)."),
                                           On(cli=(), ui=None, api=False, why=A1111_SETTING + "; the command line "
                                              "has --keep-models-on-gpu for its opposite")] = True
    dataset_filename_word_regex: Annotated[str, Field(max_length=1000, description="Captions from file names: keep "
                                                      "only this regex's matches."),
                                           On(cli=("--filename-word-regex",), ui=None, api=False,
                                              why=A1111_SETTING)] = ""
    dataset_filename_join_string: Annotated[str, Field(max_length=100, description="Joins the regex matches."),
                                            On(cli=("--filename-join-string",), ui=None, api=False,
                                               why=A1111_SETTING)] = " "
    training_enable_tensorboard: Annotated[bool, Field(description="Also log to <log>/tensorboard (needs the "
                                                       "tensorboard package)."),
                                           On(cli=("--tensorboard",), ui=None, api=False, why=A1111_SETTING)] = False
    training_tensorboard_save_images: Annotated[bool, Field(description="Also send previews to TensorBoard."),
                                                On(cli=(), ui=None, api=False, why=A1111_SETTING + "; the command "
                                                   "line's --tensorboard turns both on")] = False
    training_tensorboard_flush_every: Annotated[int, Field(ge=1, le=86400, description="TensorBoard flush "
                                                           "interval, seconds."),
                                                On(cli=(), ui=None, api=False, why=A1111_SETTING)] = 120
    clip_skip: Annotated[int, Field(ge=1, le=12, description="A1111's CLIP skip (CLIP_stop_at_last_layers)."),
                         On(ui=None, api=False, why=A1111_SETTING + " (CLIP_stop_at_last_layers)")] = 1

    # ---- hypernet ----------------------------------------------------------------------------------------------
    model: Annotated[str | None, Field(max_length=4096, description="Checkpoint (.safetensors/.ckpt), diffusers "
                                       "folder or Hub id; default: hypernet's embedded toy model. On the command line, settings the "
                                       "checkpoint records (the toy model: 64x64, 300 steps, its rate, batch and "
                                       "template) replace A1111's defaults."),
                     On(ui=None, api=False, why=SERVER_DECIDES)] = None
    vae: Annotated[str | None, Field(max_length=4096, description="Separate VAE file."),
                   On(ui=None, api=False, why=SERVER_DECIDES)] = None
    hypernetwork_dir: HypernetworkDir = Field(default_factory=lambda: str(hypernetwork_dir()))  # as Folders'
    templates_dir: Annotated[str | None, Field(max_length=4096, description="More template files (looked up by "
                                               "file name)."),
                             On(ui=None, api=False, why=SERVER_DECIDES)] = None
    resume_from: Annotated[str | None, Field(max_length=4096, description="Train from this file (e.g. a "
                                             "snapshot); the result still goes to the hypernetwork folder."),
                           On(ui=None, api=False, why=SERVER_DECIDES)] = None
    seed: Annotated[int | None, Field(ge=0, le=L.SEED_MAX, description="Seed for data order, noise and timesteps "
                                      "(default: a random one, stored with the network so a resume continues it)."),
                    On(ui=None, expect=f"a whole number from 0 to {L.SEED_MAX}",
                       why="the UI trains with a fresh seed each run")] = None
    device: Annotated[str | None, Field(max_length=64, description="cuda, cuda:1, cpu (default: cuda if "
                                        "available)."),
                      On(ui=None, api=False, why=SERVER_DECIDES)] = None
    precision: Annotated[Literal[TRAIN_PRECISIONS], Field(description="auto (bf16/fp16 autocast on "
                                                                      "CUDA, fp32 on CPU), no, fp16 or bf16; the "
                                                                      "network stays fp32."),
                         On(ui=None, why="a GPU choice the UI leaves on auto")] = "auto"
    gradient_checkpointing: Annotated[Literal["auto", "on", "off"], Field(description="auto (on when a step runs "
                                                                          "out of GPU memory), on or off."),
                                      On(ui=None, why="a GPU choice the UI leaves on auto")] = "auto"
    max_bad_steps: Annotated[int, Field(ge=1, le=100000, description="Stop after this many NaN/inf steps in a "
                                        "row."),
                             On(ui=None, why="a safety net the UI leaves at its default")] = 10
    # training health (hypernet.train.health), measured at the start and at every snapshot
    validation_split: Annotated[int, Field(ge=-1, le=100000, description="Images held out of training for the "
                                           "validation loss measured at every snapshot (0: none; -1: a few when "
                                           "the dataset has 20 or more)."),
                                On(ui="Validation images held out",
                                   expect="-1 (automatic), 0 or a positive whole number")] = -1
    health_probes: Annotated[int, Field(ge=0, le=64, description="Probe images generated at every snapshot to "
                                        "judge style and over-cooking (0: none)."),
                             On(ui="Health probe images")] = 4
    stop_when_overcooked: Annotated[bool, Field(description="Stop when a snapshot over-cooks, and keep the "
                                                "recommended snapshot as the final network."),
                                    On(cli=("--stop-when-overcooked",), ui="Stop when over-cooked")] = False

    @field_validator("learn_rate", "clip_grad_value", mode="before")
    @classmethod
    def _schedule_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return repr(float(value))  # A1111 fails on numbers; they are read as one-rate schedules
        return value

    @field_validator("learn_rate")
    @classmethod
    def _learn_rate(cls, value: str) -> str:
        return check_schedule(value, "learn_rate")

    @field_validator("clip_grad_value")
    @classmethod
    def _clip_value(cls, value: str) -> str:
        return check_schedule(value, "clip_grad_value")

    @field_validator("clip_grad_mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return str(value or "disabled").lower() if isinstance(value, str) or value is None else value

    @field_validator("create_image_every", "save_hypernetwork_every", "training_write_csv_every", mode="before")
    @classmethod
    def _none_is_never(cls, value: Any) -> Any:
        return 0 if value is None else value  # A1111 treats None as 0 (disabled)

    @model_validator(mode="after")
    def _sizes(self) -> TrainSettings:
        if not self.varsize:
            for name in ("training_width", "training_height"):
                if getattr(self, name) % 8:
                    raise ValueError(f"{name} is {getattr(self, name)}; expected a multiple of 8, e.g. 512.")
            if self.training_width * self.training_height > L.MAX_PIXELS:
                raise ValueError(f"training_width x training_height is {self.training_width}x{self.training_height}; "
                                 f"at most {L.MAX_PIXELS:,} pixels are allowed per image.")
        if self.preview_from_txt2img and self.create_image_every:
            for name in ("preview_width", "preview_height"):
                if getattr(self, name) % 8:
                    raise ValueError(f"{name} is {getattr(self, name)}; expected a multiple of 8, e.g. 512.")
            if self.preview_width * self.preview_height > L.MAX_PIXELS:
                raise ValueError(f"preview_width x preview_height is {self.preview_width}x{self.preview_height}; "
                                 f"at most {L.MAX_PIXELS:,} pixels are allowed per image.")
        return self
