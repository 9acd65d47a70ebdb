"""Hypernetwork training, step for step as A1111's "Train Hypernetwork" tab does it, resumable and NaN-safe.

``train_hypernetwork(TrainConfig(...))`` is the Python entry point (the CLI's ``hypernet train`` and the HTTP API
call it); see :mod:`hypernet.train.loop` for the training step. The names are imported lazily, so that importing
:mod:`hypernet.train.command` for the CLI does not load torch and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypernet.train.config import TrainConfig
    from hypernet.train.loop import AlreadyTrained, TrainProgress, TrainResult, train_hypernetwork

__all__ = ["AlreadyTrained", "TrainConfig", "TrainProgress", "TrainResult", "train_hypernetwork"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from hypernet.train.config import TrainConfig

        return TrainConfig
    if name in __all__:
        from hypernet.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'hypernet.train' has no attribute {name!r}")
