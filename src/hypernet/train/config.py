"""A training run's configuration: :class:`~hypernet.settings.train.TrainSettings` (every field, its limits and
help, defined once) plus what the trainer derives from it; :meth:`TrainConfig.check` adds the checks that need the
file system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypernet.errors import HypernetError
from hypernet.settings.train import TrainSettings


# A preparing TrainProgress message that starts with this is a warning (printed when it happens, not after the run).
WARNING = "warning: "


class TrainConfig(TrainSettings):
    """One training run. Constructing one checks every value (a one-sentence
    :class:`~hypernet.settings.SettingsError` otherwise); the HTTP API builds one straight from A1111's request body.
    """

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
        return self.model_dump()

    @classmethod
    def field_names(cls) -> list[str]:
        return list(cls.model_fields)

    def check(self) -> None:
        """Refuse what the values alone cannot tell: empty names, missing folders and files."""
        if not self.hypernetwork_name or not self.name:
            raise HypernetError("hypernetwork_name is empty; name the hypernetwork to train (create one with `hypernet create NAME`).")
        if not self.data_root:
            raise HypernetError("data_root is empty; pass the folder of training images (--data).")
        root = Path(self.data_root)
        if root.is_file():
            raise HypernetError(f"{root}: is a file; data_root must be the folder of training images.")
        if not root.is_dir():
            raise HypernetError(f"{root}: the dataset folder does not exist (data_root); pass a folder of training images.")
        if not any(root.iterdir()):
            raise HypernetError(f"{root}: the dataset folder is empty (data_root); put the training images (and optional .txt captions) in it.")
        if not self.log_directory:
            raise HypernetError("log_directory is empty; pass a folder for snapshots, previews and logs (A1111's default is textual_inversion).")
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
