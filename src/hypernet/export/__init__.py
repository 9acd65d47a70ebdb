"""Hypernetworks for tools that no longer run them: export as a LoRA, or bake into a checkpoint."""

from hypernet.export.api import ExportReport, bake, export_lora, parse_network_spec, resolve_networks
from hypernet.export.compare import ImageCheck, lora_applied
from hypernet.export.deltas import LayerDelta, exact_deltas, factorize, nonlinear_reason
from hypernet.export.fit import DEFAULT_PROMPTS, FitOptions, fitted_deltas
from hypernet.export.lora import FORMATS, LoraPlan, plan_lora, write_lora

__all__ = [
    "DEFAULT_PROMPTS", "FORMATS", "ExportReport", "FitOptions", "ImageCheck", "LayerDelta", "LoraPlan", "bake",
    "exact_deltas", "export_lora", "factorize", "fitted_deltas", "lora_applied", "nonlinear_reason",
    "parse_network_spec", "plan_lora", "resolve_networks", "write_lora",
]
