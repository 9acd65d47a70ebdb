"""Hypernetworks for tools that no longer run them: export as a LoRA, or bake into a checkpoint.

The names below load their module (and torch, diffusers) on first use, so that ``hypernet.export.command`` can be
registered with the command line without slowing every other command down.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypernet.export.api import ExportReport, bake, export_lora, parse_network_spec, resolve_networks
    from hypernet.export.compare import ImageCheck, lora_applied
    from hypernet.export.deltas import LayerDelta, exact_deltas, factorize, nonlinear_reason
    from hypernet.export.fit import DEFAULT_PROMPTS, FitOptions, fitted_deltas
    from hypernet.export.lora import FORMATS, LoraPlan, plan_lora, write_lora

_WHERE = {
    "ExportReport": "api", "bake": "api", "export_lora": "api", "parse_network_spec": "api", "resolve_networks": "api",
    "ImageCheck": "compare", "lora_applied": "compare",
    "LayerDelta": "deltas", "exact_deltas": "deltas", "factorize": "deltas", "nonlinear_reason": "deltas",
    "DEFAULT_PROMPTS": "fit", "FitOptions": "fit", "fitted_deltas": "fit",
    "FORMATS": "lora", "LoraPlan": "lora", "plan_lora": "lora", "write_lora": "lora",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hypernet.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hypernet.export.{_WHERE[name]}"), name)
