"""A hypernetwork's attention deltas as a LoRA file: kohya names (A1111, ComfyUI, diffusers) or diffusers/PEFT names.

What each loader reads (their sources, checked):

- A1111's Lora extension (v1.10): ``lora_up``/``lora_down``/``alpha`` and "full" modules (``diff``, optional
  ``diff_b``). The to_out.0 bias is written as a full module, a zero ``diff`` plus ``diff_b``, which it adds scaled
  by the LoRA weight. Older A1111 releases, whose "full" module reads only ``diff``, lose the value bias.
- ComfyUI's LoRA loader: the same keys (``diff_b`` becomes a patch of the layer's bias), scaled by the strength.
- diffusers' ``load_lora_weights`` converts kohya files only when every key is a ``lora_down``/``lora_up``/``alpha``
  one; a file with ``diff``/``diff_b`` keys is refused whole. So kohya files made with ``include_bias=False`` (no
  value bias: exact for networks whose value branch has no bias, else an offset per layer is lost) load there,
  and the diffusers format carries the bias as PEFT's ``lora_B.bias``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch

from hypernet.errors import HypernetError
from hypernet.export.deltas import Factor, LayerDelta, factorize
from hypernet.export.keys import kohya_name
from hypernet.fileio import atomic_write_bytes

Format = Literal["kohya", "diffusers"]
FORMATS = ("kohya", "diffusers")
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


@dataclass
class ExportedLayer:
    """One attention layer's LoRA: factors for to_k and to_v, the to_out.0 bias, and how far each is from exact."""

    delta: LayerDelta
    key: Factor
    value: Factor

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ΔW_k, ΔW_v, Δb_out) as the file reconstructs them (float64)."""
        return self.key.up @ self.key.down, self.value.up @ self.value.down, self.delta.out_bias


@dataclass
class LoraPlan:
    """Everything that goes into a LoRA file, before choosing its format."""

    layers: list[ExportedLayer]
    family: str
    layers_per_block: int
    method: str
    metadata: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, object]]:
        """The per-layer report: module, projection, rank, relative error (and fit residual for approximations)."""
        out: list[dict[str, object]] = []
        for layer in self.layers:
            for proj, factor, fit in (("to_k", layer.key, 0), ("to_v", layer.value, 1)):
                row: dict[str, object] = {"module": layer.delta.module, "proj": proj, "width": layer.delta.width,
                                          "rank": factor.rank, "error": factor.error}
                if layer.delta.fit_error is not None:
                    row["fit_error"] = layer.delta.fit_error[fit]
                out.append(row)
        return out

    def overall_error(self) -> float:
        """Relative Frobenius error over every exported delta together."""
        num = den = 0.0
        for layer in self.layers:
            for factor, delta in ((layer.key, layer.delta.key), (layer.value, layer.delta.value)):
                norm = float(delta.square().sum())
                num += norm * factor.error**2
                den += norm
        return (num / den) ** 0.5 if den > 0 else 0.0


def plan_lora(deltas: Sequence[LayerDelta], *, family: str, layers_per_block: int, rank: int | None,
              method: str) -> LoraPlan:
    """Factor every delta: ``rank=None`` keeps each one exact (its numerical rank), else the best rank-``rank`` SVD."""
    if rank is not None and rank < 1:
        raise HypernetError(f"rank {rank} must be at least 1 (or use --full for the exact delta).")
    layers = [ExportedLayer(d, factorize(d.key, rank), factorize(d.value, rank)) for d in deltas]
    return LoraPlan(layers, family, layers_per_block, method)


def kohya_state_dict(plan: LoraPlan, dtype: torch.dtype, *, include_bias: bool = True) -> dict[str, torch.Tensor]:
    """kohya keys: ``lora_unet_<layer>.lora_down.weight``/``.lora_up.weight``/``.alpha``, and for the value bias
    ``lora_unet_<layer>_to_out_0.diff`` (zeros) plus ``.diff_b``.

    Every loader scales a module by ``alpha / rank``. One alpha for the whole file (the commonest rank), with ``up``
    multiplied by ``rank / alpha``, keeps that product exact everywhere: diffusers reads per-module alphas of SD
    files into patterns that do not match its module names, so unequal alphas would scale some layers wrongly."""
    state: dict[str, torch.Tensor] = {}
    ranks = [factor.rank for layer in plan.layers for factor in (layer.key, layer.value)]
    alpha = float(max(set(ranks), key=ranks.count)) if ranks else 1.0
    for layer in plan.layers:
        module = layer.delta.module
        for proj, factor in (("to_k", layer.key), ("to_v", layer.value)):
            name = kohya_name(f"{module}.{proj}", plan.family, plan.layers_per_block)
            state[f"{name}.lora_down.weight"] = factor.down.to(dtype).contiguous()
            state[f"{name}.lora_up.weight"] = (factor.up * (factor.rank / alpha)).to(dtype).contiguous()
            state[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
        if include_bias:
            name = kohya_name(f"{module}.to_out.0", plan.family, plan.layers_per_block)
            bias = layer.delta.out_bias
            state[f"{name}.diff"] = torch.zeros(bias.shape[0], layer.delta.value.shape[0], dtype=dtype)
            state[f"{name}.diff_b"] = bias.to(dtype).contiguous()
    return state


def diffusers_state_dict(plan: LoraPlan, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """diffusers/PEFT keys (``unet.<module>.lora_A.weight``/``lora_B.weight``; the value bias as the ``lora_B.bias``
    of a zero rank-1 adapter on to_out.0) and the LoraConfig that diffusers reads from the file's metadata."""
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for layer in plan.layers:
        module = layer.delta.module
        for proj, factor in (("to_k", layer.key), ("to_v", layer.value)):
            state[f"unet.{module}.{proj}.lora_A.weight"] = factor.down.to(dtype).contiguous()
            state[f"unet.{module}.{proj}.lora_B.weight"] = factor.up.to(dtype).contiguous()
            # PEFT's lora_bias is one switch for the whole adapter: every lora_B needs a bias, zero here
            state[f"unet.{module}.{proj}.lora_B.bias"] = torch.zeros(factor.up.shape[0], dtype=dtype)
            ranks[f"{module}.{proj}"] = factor.rank
        bias = layer.delta.out_bias
        state[f"unet.{module}.to_out.0.lora_A.weight"] = torch.zeros(1, layer.delta.value.shape[0], dtype=dtype)
        state[f"unet.{module}.to_out.0.lora_B.weight"] = torch.zeros(bias.shape[0], 1, dtype=dtype)
        state[f"unet.{module}.to_out.0.lora_B.bias"] = bias.to(dtype).contiguous()
        ranks[f"{module}.to_out.0"] = 1
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {name: r for name, r in ranks.items() if r != common}
    config = {"r": common, "lora_alpha": common, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
              "target_modules": sorted(ranks), "lora_bias": True, "use_dora": False}
    return state, config


def lora_bytes(plan: LoraPlan, format: Format, dtype: torch.dtype, *, include_bias: bool = True) -> bytes:
    """The ``.safetensors`` file for ``plan`` in ``format``, metadata included."""
    metadata = dict(plan.metadata)
    metadata.setdefault("ss_base_model_version", BASE_MODEL_VERSION.get(plan.family, plan.family))
    if plan.family == "sd2":
        metadata.setdefault("ss_v2", "True")
    if format == "kohya":
        state = kohya_state_dict(plan, dtype, include_bias=include_bias)
        ranks = sorted({layer.key.rank for layer in plan.layers} | {layer.value.rank for layer in plan.layers})
        metadata.setdefault("ss_network_module", "networks.lora")
        metadata.setdefault("ss_network_dim", str(ranks[-1]) if len(ranks) == 1 else "dynamic")
        metadata.setdefault("ss_network_alpha", str(float(state[next(k for k in state if k.endswith(".alpha"))])))
    elif format == "diffusers":
        state, config = diffusers_state_dict(plan, dtype)
        metadata["lora_adapter_metadata"] = json.dumps({f"unet.{k}": v for k, v in config.items()}, sort_keys=True)
    else:
        raise HypernetError(f"LoRA format {format!r} must be one of: {', '.join(FORMATS)}.")
    return safetensors.torch.save(state, metadata=metadata)


def write_lora(plan: LoraPlan, path: str | Path, format: Format = "kohya", dtype: torch.dtype = torch.float16,
               *, include_bias: bool = True) -> Path:
    """Write ``plan`` atomically to ``path`` (a ``.safetensors`` file)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise HypernetError(f"{path}: a LoRA is written as .safetensors; name the output file *.safetensors.")
    atomic_write_bytes(path, lora_bytes(plan, format, dtype, include_bias=include_bias))
    return path
