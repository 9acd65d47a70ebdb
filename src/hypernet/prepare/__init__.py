"""Preparing training images, A1111's "Preprocess images": crop, split, focal-point crop, flips, captions."""

from hypernet.prepare.options import ExistingCaption, Objective, PreprocessOptions
from hypernet.prepare.pipeline import PreprocessReport, SkippedFile, preprocess

__all__ = ["ExistingCaption", "Objective", "PreprocessOptions", "PreprocessReport", "SkippedFile", "preprocess"]
