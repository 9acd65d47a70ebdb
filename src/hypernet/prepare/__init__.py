"""Preparing training images, A1111's "Preprocess images": crop, split, focal-point crop, flips, captions."""

from typing import Any

from hypernet.prepare.options import ExistingCaption, Objective, PreprocessOptions

__all__ = ["ExistingCaption", "Objective", "PreprocessOptions", "PreprocessReport", "SkippedFile", "preprocess"]
_PIPELINE = frozenset({"PreprocessReport", "SkippedFile", "preprocess"})


def __getattr__(name: str) -> Any:
    """The pipeline loads OpenCV and the captioners (torch); importing it on first use keeps the CLI fast."""
    if name in _PIPELINE:
        import hypernet.prepare.pipeline

        return getattr(hypernet.prepare.pipeline, name)
    raise AttributeError(f"module 'hypernet.prepare' has no attribute {name!r}")
