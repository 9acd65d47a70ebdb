"""Textual-inversion embedding files as A1111 v1.10 reads them (pure torch).

``.pt``/``.bin`` (``string_to_param``, or diffusers' ``{token: tensor}``) and ``.safetensors`` (``emb_params``, or
SDXL's ``clip_l``/``clip_g``) under the embeddings folder, named by file stem. Image embeddings (``.png`` with the
data in a text chunk or the pixels) are not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hypernet.errors import HypernetError
from hypernet.network.weights import read_weights

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")


@dataclass
class Embedding:
    """One embedding: ``vectors`` is ``(n, width)`` float32, or for SDXL ``{"clip_l": …, "clip_g": …}``.

    ``shape`` is the width A1111 compares with the model's (SD1 768, SD2 1024, SDXL 768 + 1280 = 2048).
    """

    name: str
    path: Path
    vectors: torch.Tensor | dict[str, torch.Tensor]
    shape: int
    count: int
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    def for_encoder(self, index: int) -> torch.Tensor:
        """The vectors for text encoder ``index`` (SDXL: 0 takes ``clip_l``, 1 takes ``clip_g``)."""
        if isinstance(self.vectors, dict):
            return self.vectors["clip_l" if index == 0 else "clip_g"]
        return self.vectors

    def as_api(self) -> dict[str, Any]:
        """A1111's ``/sdapi/v1/embeddings`` entry."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint, "sd_checkpoint_name": self.sd_checkpoint_name,
                "shape": self.shape, "vectors": self.count}


def load_embedding(path: str | os.PathLike[str]) -> Embedding:
    """Read one embedding file; anything else (a LoRA, a hypernetwork, a damaged file) is a HypernetError naming it."""
    path = Path(path)
    data: Any = read_weights(path)
    if not isinstance(data, dict) or not data:
        raise HypernetError(f"{path}: not a textual inversion embedding (expected 'string_to_param', 'emb_params' "
                            "or 'clip_l'/'clip_g').")
    name = path.stem
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise HypernetError(f"{path}: 'string_to_param' must hold exactly one tensor.")
        vec = _matrix(path, next(iter(params.values())))
        return Embedding(name, path, vec, vec.shape[-1], vec.shape[0], _opt_int(data.get("step")),
                         _opt_str(data.get("sd_checkpoint")), _opt_str(data.get("sd_checkpoint_name")))
    if "clip_g" in data and "clip_l" in data:
        g, l = _matrix(path, data["clip_g"]), _matrix(path, data["clip_l"])
        return Embedding(name, path, {"clip_l": l, "clip_g": g}, g.shape[-1] + l.shape[-1], g.shape[0])
    first = next(iter(data.values()))
    if isinstance(first, torch.Tensor):
        if len(data) != 1 or any(isinstance(k, str) and (k.startswith("lora_") or "." in k) for k in data):
            raise _other_kind(path, data)
        vec = _matrix(path, first)
        return Embedding(name, path, vec, vec.shape[-1], vec.shape[0])
    raise _other_kind(path, data)


def list_embedding_files(directory: str | os.PathLike[str] | None) -> list[Path]:
    """Embedding files under ``directory`` (recursive, following links, empty files skipped), in A1111's walk order
    (a later file of the same name replaces an earlier one)."""
    if directory is None or not Path(directory).is_dir():
        return []
    found = []
    for root, _dirs, files in os.walk(directory, followlinks=True):
        for filename in files:
            path = Path(root) / filename
            if path.suffix.lower() in EMBEDDING_EXTENSIONS and path.is_file() and path.stat().st_size > 0:
                found.append(path)
    return found


def _matrix(path: Path, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2) or value.numel() == 0:
        raise HypernetError(f"{path}: the embedding vectors must be a (vectors, width) tensor.")
    value = value.detach().float()
    return value.unsqueeze(0) if value.dim() == 1 else value


def _other_kind(path: Path, data: dict) -> HypernetError:
    keys = [str(k) for k in data]
    if any(k.startswith(("lora_", "lora_unet", "lora_te")) or "lora_up" in k for k in keys):
        return HypernetError(f"{path}: this is a LoRA file, not an embedding; put it in the Lora folder and use "
                             "<lora:NAME:WEIGHT>.")
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys) or "state_dict" in keys:
        return HypernetError(f"{path}: this is a Stable Diffusion checkpoint, not an embedding.")
    if any(isinstance(k, int) for k in data) or "layer_structure" in keys:
        return HypernetError(f"{path}: this is a hypernetwork file, not an embedding; use <hypernet:NAME>.")
    return HypernetError(f"{path}: not a textual inversion embedding (it has the keys {keys[:5]}; expected "
                         "'string_to_param', 'emb_params' or 'clip_l'/'clip_g').")


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
