"""Preparing training images: A1111 v1.6's "Preprocess images" tab and its later Extras scripts
(``POST /sdapi/v1/preprocess``, ``hypernet preprocess``, :class:`hypernet.prepare.PreprocessOptions`).

Field names follow the CLI flags; A1111's parameter names (``process_width``, ...) are the aliases.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator

from hypernet.settings import limits as L
from hypernet.settings.base import On, SettingsModel

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_TAGGER_MODEL = "SmilingWolf/wd-swinv2-tagger-v3"
MAX_AREA = L.MAX_PREPROCESS_SIDE * L.MAX_PREPROCESS_SIDE


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


A1111_OBJECTIVES = {"Maximize area": Objective.MAXIMIZE_AREA, "Minimize error": Objective.MINIMIZE_ERROR}
_SIZE, _CAPTIONS, _FLIPS, _SPLIT, _FOCAL, _MULTI, _RUN = ("Size", "Captions", "Flipped copies",
                                                        "Split oversized images", "Auto focal point crop",
                                                        "Auto-sized crop", "Run")


def _a1111(name: str, ours: str) -> Any:
    return Field(alias=name, validation_alias=AliasChoices(ours, name))


class PreprocessSettings(SettingsModel):
    """Every preprocessing option with A1111's defaults; invalid values are refused in one sentence."""

    width: Annotated[int, _a1111("process_width", "width"),
                     Field(ge=64, le=L.MAX_PREPROCESS_SIDE, description="Output width; a multiple of 8."),
                     On(ui="Width")] = 512
    height: Annotated[int, _a1111("process_height", "height"),
                      Field(ge=64, le=L.MAX_PREPROCESS_SIDE, description="Output height; a multiple of 8."),
                      On(ui="Height")] = 512
    existing_caption: Annotated[ExistingCaption, _a1111("preprocess_txt_action", "existing_caption"),
                                Field(description="What to do with <source stem>.txt next to a source image."),
                                On(ui="Existing caption txt action")] = ExistingCaption.IGNORE
    keep_original_size: Annotated[bool, _a1111("process_keep_original_size", "keep_original_size"),
                                  Field(description="Also save the unresized image."),
                                  On(cli=("--keep-original-size",), ui="Keep original size")] = False
    flip: Annotated[bool, _a1111("process_flip", "flip"), Field(description="Also save a horizontally mirrored copy."),
                    On(cli=("--flip",), ui="Create flipped copies")] = False
    flip_vertical: Annotated[bool, Field(description="Also save a vertically flipped copy."),
                             On(cli=("--flip-vertical",), ui="Vertically flipped copies")] = False
    flip_both: Annotated[bool, Field(description="Also save a copy flipped on both axes."),
                         On(cli=("--flip-both",), ui="Copies flipped on both axes")] = False
    split: Annotated[bool, _a1111("process_split", "split"),
                     Field(description="Cut images much longer than the target into overlapping tiles."),
                     On(cli=("--split",), ui="Split oversized images")] = False
    split_threshold: Annotated[float, Field(ge=0, le=1, description="Split when the target covers at most this "
                                            "share of the long side."),
                               On(ui="Split image threshold")] = 0.5
    overlap_ratio: Annotated[float, Field(ge=0, le=0.9, description="Overlap between neighbouring tiles."),
                             On(ui="Split image overlap ratio")] = 0.2
    focal_crop: Annotated[bool, _a1111("process_focal_crop", "focal_crop"),
                          Field(description="Crop around faces and detail instead of the centre."),
                          On(cli=("--focal-crop",), ui="Auto focal point crop")] = False
    focal_face_weight: Annotated[float, _a1111("process_focal_crop_face_weight", "focal_face_weight"),
                                 Field(ge=0, le=1, description="Pull of faces."), On(ui="Focal point face weight")
                                 ] = 0.9
    focal_entropy_weight: Annotated[float, _a1111("process_focal_crop_entropy_weight", "focal_entropy_weight"),
                                    Field(ge=0, le=1, description="Pull of the most detailed region."),
                                    On(ui="Focal point entropy weight")] = 0.15
    focal_edges_weight: Annotated[float, _a1111("process_focal_crop_edges_weight", "focal_edges_weight"),
                                  Field(ge=0, le=1, description="Pull of corners."), On(ui="Focal point edges weight")
                                  ] = 0.5
    focal_debug: Annotated[bool, _a1111("process_focal_crop_debug", "focal_debug"),
                           Field(description="Also save an annotated image showing why the crop was chosen."),
                           On(cli=("--focal-debug",), ui="Create debug image")] = False
    face_model: Annotated[Path | None, Field(description="YuNet face detector (.onnx); without it OpenCV's bundled "
                                             "Haar cascades are used."),
                          On(ui=None, api=False, why="a file on the server's machine; the command line sets it")
                          ] = None
    multicrop: Annotated[bool, _a1111("process_multicrop", "multicrop"),
                         Field(description="Crop each image to the best-fitting size within the bounds."),
                         On(cli=("--multicrop",), ui="Auto-sized crop")] = False
    multicrop_min_dim: Annotated[int, _a1111("process_multicrop_mindim", "multicrop_min_dim"),
                                 Field(ge=64, le=L.MAX_PREPROCESS_SIDE, description="Dimension lower bound."),
                                 On(ui="Dimension lower bound")] = 384
    multicrop_max_dim: Annotated[int, _a1111("process_multicrop_maxdim", "multicrop_max_dim"),
                                 Field(ge=64, le=L.MAX_PREPROCESS_SIDE, description="Dimension upper bound."),
                                 On(ui="Dimension upper bound")] = 768
    multicrop_min_area: Annotated[int, _a1111("process_multicrop_minarea", "multicrop_min_area"),
                                  Field(ge=0, le=MAX_AREA, description="Area lower bound."), On(ui="Area lower bound")
                                  ] = 64 * 64
    multicrop_max_area: Annotated[int, _a1111("process_multicrop_maxarea", "multicrop_max_area"),
                                  Field(ge=0, le=MAX_AREA, description="Area upper bound."), On(ui="Area upper bound")
                                  ] = 640 * 640
    multicrop_objective: Annotated[Objective, _a1111("process_multicrop_objective", "multicrop_objective"),
                                   Field(description="Prefer the largest size or the closest aspect."),
                                   On(ui="Resizing objective")] = Objective.MAXIMIZE_AREA
    multicrop_threshold: Annotated[float, _a1111("process_multicrop_threshold", "multicrop_threshold"),
                                   Field(ge=0, le=1, description="Largest aspect error allowed."),
                                   On(ui="Error threshold")] = 0.1
    caption_blip: Annotated[bool, _a1111("process_caption", "caption_blip"),
                            Field(description="Caption every image with BLIP."),
                            On(cli=("--caption-blip",), ui="Use BLIP for caption")] = False
    blip_model: Annotated[str, Field(max_length=4096, description="BLIP captioning model: a folder or a Hugging Face "
                                     "id."), On(ui=None, api=False, why="models are the server's choice")
                          ] = DEFAULT_BLIP_MODEL
    blip_num_beams: Annotated[int, Field(ge=1, le=64, description="BLIP beam count."), On(ui="BLIP beams")] = 1
    blip_min_length: Annotated[int, Field(ge=0, le=512, description="BLIP minimum length, tokens."),
                               On(ui="BLIP minimum length")] = 24
    blip_max_length: Annotated[int, Field(ge=1, le=512, description="BLIP maximum length, tokens."),
                               On(ui="BLIP maximum length")] = 48
    caption_tagger: Annotated[bool, _a1111("process_caption_deepbooru", "caption_tagger"),
                              Field(description="Add booru-style tags from a WD14 ONNX tagger."),
                              On(cli=("--caption-tagger", "--caption-deepbooru"),
                                 ui="Use deepbooru-style tagger for caption")] = False
    tagger_model: Annotated[str, Field(max_length=4096, description="Tagger: a folder with model.onnx and "
                                       "selected_tags.csv, or a Hugging Face id."),
                            On(ui=None, api=False, why="models are the server's choice")] = DEFAULT_TAGGER_MODEL
    tagger_threshold: Annotated[float, Field(ge=0, le=1, description="Lowest score for a tag to be written."),
                                On(ui="Tagger threshold")] = 0.35
    workers: Annotated[int, Field(ge=0, le=256, description="Worker processes; 0 = every CPU core."),
                       On(ui=None, api=False, why="the server preprocesses in its own process")] = 0
    device: Annotated[str | None, Field(max_length=64, description="Device for the captioning models (default: "
                                        "cuda if available)."),
                      On(ui=None, api=False, why="the server's device is configured when it starts")] = None

    @field_validator("multicrop_objective", mode="before")
    @classmethod
    def _a1111_objective(cls, value: Any) -> Any:
        return A1111_OBJECTIVES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessSettings:
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} {getattr(self, name)} must be a multiple of 8 and at least 64, e.g. 512.")
        if self.width * self.height > L.MAX_PIXELS:
            raise ValueError(f"width x height is {self.width}x{self.height} ({self.width * self.height:,} pixels); at "
                             f"most {L.MAX_PIXELS:,} pixels are allowed per image.")
        if self.multicrop_min_dim > self.multicrop_max_dim:
            raise ValueError(f"multicrop_min_dim {self.multicrop_min_dim} and multicrop_max_dim "
                             f"{self.multicrop_max_dim} must satisfy 64 <= min <= max.")
        if self.multicrop_min_area > self.multicrop_max_area:
            raise ValueError(f"multicrop_min_area {self.multicrop_min_area} must be between 0 and "
                             f"multicrop_max_area {self.multicrop_max_area}.")
        if self.blip_min_length > self.blip_max_length:
            raise ValueError(f"blip_min_length {self.blip_min_length} must be between 0 and blip_max_length "
                             f"{self.blip_max_length}.")
        if self.face_model is not None and not Path(self.face_model).is_file():
            raise ValueError(f"face_model {self.face_model} is not a file; expected a YuNet .onnx model.")
        return self
