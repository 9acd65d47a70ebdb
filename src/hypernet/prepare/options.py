"""What ``hypernet preprocess`` should do, with A1111's defaults, checked once so the workers never meet a bad value."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from hypernet.errors import HypernetError

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_TAGGER_MODEL = "SmilingWolf/wd-swinv2-tagger-v3"


class ExistingCaption(enum.StrEnum):
    """What to do with ``<source stem>.txt`` (A1111's ``preprocess_txt_action``)."""

    IGNORE = "ignore"
    COPY = "copy"
    PREPEND = "prepend"
    APPEND = "append"


class Objective(enum.StrEnum):
    """How the auto-sized crop picks among the sizes within the error threshold."""

    MAXIMIZE_AREA = "maximize-area"
    MINIMIZE_ERROR = "minimize-error"


@dataclass
class PreprocessOptions:
    """Every option of A1111's v1.6 "Preprocess images" tab and its later Extras scripts, with their defaults.

    Field names follow the CLI flags; :meth:`from_a1111` accepts A1111's own parameter names. The enum fields
    also take their string values (``existing_caption="copy"``), as JSON requests carry them. Invalid values raise
    :class:`~hypernet.errors.HypernetError`.
    """

    width: int = 512
    height: int = 512
    existing_caption: ExistingCaption = ExistingCaption.IGNORE
    keep_original_size: bool = False
    flip: bool = False
    """Also save a horizontally mirrored copy of every saved image."""
    flip_vertical: bool = False
    flip_both: bool = False
    """Also save a copy flipped on both axes (a 180° rotation)."""

    split: bool = False
    split_threshold: float = 0.5
    overlap_ratio: float = 0.2

    focal_crop: bool = False
    focal_face_weight: float = 0.9
    focal_entropy_weight: float = 0.15
    focal_edges_weight: float = 0.5
    focal_debug: bool = False
    face_model: Path | None = None
    """A YuNet ONNX face detector; without one, OpenCV's bundled Haar cascades find faces."""

    multicrop: bool = False
    multicrop_min_dim: int = 384
    multicrop_max_dim: int = 768
    multicrop_min_area: int = 64 * 64
    multicrop_max_area: int = 640 * 640
    multicrop_objective: Objective = Objective.MAXIMIZE_AREA
    multicrop_threshold: float = 0.1

    caption_blip: bool = False
    blip_model: str = DEFAULT_BLIP_MODEL
    blip_num_beams: int = 1
    blip_min_length: int = 24
    blip_max_length: int = 48
    caption_tagger: bool = False
    tagger_model: str = DEFAULT_TAGGER_MODEL
    tagger_threshold: float = 0.35

    workers: int = 0
    """Worker processes for the image work; 0 uses every CPU core this process may run on."""
    device: str | None = None
    """Where the captioning models run; None picks CUDA when available, else the CPU."""

    def __post_init__(self) -> None:
        self.existing_caption = _choice(ExistingCaption, self.existing_caption, "existing_caption")
        self.multicrop_objective = _choice(Objective, self.multicrop_objective, "multicrop_objective")
        if self.face_model is not None:
            self.face_model = Path(self.face_model)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 64 or value % 8:
                raise HypernetError(f"{name} {value} must be a multiple of 8 and at least 64, e.g. 512")
        _in_range("split_threshold", self.split_threshold, 0.0, 1.0)
        _in_range("overlap_ratio", self.overlap_ratio, 0.0, 0.9)
        for name in ("focal_face_weight", "focal_entropy_weight", "focal_edges_weight"):
            _in_range(name, getattr(self, name), 0.0, 1.0)
        if not 64 <= self.multicrop_min_dim <= self.multicrop_max_dim:
            raise HypernetError(
                f"multicrop_min_dim {self.multicrop_min_dim} and multicrop_max_dim {self.multicrop_max_dim} must "
                "satisfy 64 <= min <= max"
            )
        if not 0 <= self.multicrop_min_area <= self.multicrop_max_area:
            raise HypernetError(
                f"multicrop_min_area {self.multicrop_min_area} must be between 0 and multicrop_max_area "
                f"{self.multicrop_max_area}"
            )
        _in_range("multicrop_threshold", self.multicrop_threshold, 0.0, 1.0)
        _in_range("tagger_threshold", self.tagger_threshold, 0.0, 1.0)
        if self.blip_num_beams < 1 or not 0 <= self.blip_min_length <= self.blip_max_length:
            raise HypernetError(
                f"blip_num_beams {self.blip_num_beams} must be >= 1 and blip_min_length {self.blip_min_length} "
                f"must be between 0 and blip_max_length {self.blip_max_length}"
            )
        if self.workers < 0:
            raise HypernetError(f"workers {self.workers} must be 0 (all cores) or a positive number")
        if self.face_model is not None and not self.face_model.is_file():
            raise HypernetError(f"face_model {self.face_model} is not a file; expected a YuNet .onnx model")

    @classmethod
    def from_a1111(cls, params: Mapping[str, Any]) -> PreprocessOptions:
        """Options from the keyword arguments of A1111's v1.6 ``preprocess`` (the body of ``POST /sdapi/v1/preprocess``).

        ``id_task``, ``process_src`` and ``process_dst`` are accepted and ignored; like A1111, the split threshold
        and overlap ratio are clamped, and multicrop values left as None keep their defaults.
        """
        kwargs: dict[str, Any] = {}
        for key, value in params.items():
            if key in ("id_task", "process_src", "process_dst"):
                continue
            name = _A1111_NAMES.get(key)
            if name is None:
                raise HypernetError(f"{key!r} is not a parameter of A1111's preprocess")
            if value is None:
                continue
            if name == "multicrop_objective":
                value = _A1111_OBJECTIVES.get(value, value)
            elif name == "split_threshold":
                value = min(max(float(value), 0.0), 1.0)
            elif name == "overlap_ratio":
                value = min(max(float(value), 0.0), 0.9)
            kwargs[name] = value
        return cls(**kwargs)


_A1111_NAMES = MappingProxyType({
    "process_width": "width",
    "process_height": "height",
    "preprocess_txt_action": "existing_caption",
    "process_keep_original_size": "keep_original_size",
    "process_flip": "flip",
    "process_split": "split",
    "process_caption": "caption_blip",
    "process_caption_deepbooru": "caption_tagger",
    "split_threshold": "split_threshold",
    "overlap_ratio": "overlap_ratio",
    "process_focal_crop": "focal_crop",
    "process_focal_crop_face_weight": "focal_face_weight",
    "process_focal_crop_entropy_weight": "focal_entropy_weight",
    "process_focal_crop_edges_weight": "focal_edges_weight",
    "process_focal_crop_debug": "focal_debug",
    "process_multicrop": "multicrop",
    "process_multicrop_mindim": "multicrop_min_dim",
    "process_multicrop_maxdim": "multicrop_max_dim",
    "process_multicrop_minarea": "multicrop_min_area",
    "process_multicrop_maxarea": "multicrop_max_area",
    "process_multicrop_objective": "multicrop_objective",
    "process_multicrop_threshold": "multicrop_threshold",
})
_A1111_OBJECTIVES = MappingProxyType({"Maximize area": Objective.MAXIMIZE_AREA, "Minimize error": Objective.MINIMIZE_ERROR})

_E = TypeVar("_E", bound=enum.StrEnum)


def _choice(kind: type[_E], value: str, name: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(str(c)) for c in kind)
        raise HypernetError(f"{name} {value!r} must be one of {choices}") from None


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise HypernetError(f"{name} {value} must be between {low:g} and {high:g}")
