"""Reading hypernetwork files: A1111 ``.pt`` of every era, our ``.safetensors``, ``.pt.optim`` sidecars; discovery.

Reading never executes code: pickles are loaded with ``weights_only=True``. Writing lives in
:mod:`hypernet.network.writing`, which :class:`Hypernetwork` uses for ``save`` (this module builds networks, so the
writer must not depend on it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch

from hypernet.errors import HypernetError
from hypernet.fileio import short_hash
from hypernet.network.hypernetwork import Architecture, Hypernetwork, check_architecture
from hypernet.network.weights import first_line, torch_load
from hypernet.network.writing import EXTENSIONS, SAFETENSORS_FORMAT, save_hypernetwork

__all__ = ["EXTENSIONS", "describe_file", "list_hypernetworks", "load_hypernetwork", "sanitize_name", "save_hypernetwork"]



# =============================================================================================== loading
def load_hypernetwork(path: str | os.PathLike[str]) -> Hypernetwork:
    """Load a ``.pt`` (any A1111 era, NovelAI-style included) or hypernet ``.safetensors`` file.

    Raises HypernetError naming the file for anything that is not a loadable hypernetwork.
    """
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"{path}: no such hypernetwork file")
    if path.suffix.lower() == ".safetensors":
        widths, metadata = _read_safetensors(path)
    else:
        widths, metadata = _read_pt(path)
    hn = _build(path, widths, metadata)
    hn.filename = str(path)
    _read_optimizer_sidecar(hn, path)
    return hn


def _read_pt(path: Path) -> tuple[dict[int, tuple[Mapping[str, torch.Tensor], ...]], dict[str, Any]]:
    data = torch_load(path)
    if not isinstance(data, dict):
        raise HypernetError(f"{path}: not a hypernetwork file (it holds a {type(data).__name__}, expected a dict)")
    _refuse_other_kinds(path, [k for k in data if isinstance(k, str)] + _nested_keys(data))
    widths: dict[int, tuple[Mapping[str, torch.Tensor], ...]] = {}
    metadata: dict[str, Any] = {}
    for key, value in data.items():
        if type(key) is int:  # A1111: only keys whose type is exactly int are modules
            if not isinstance(value, (tuple, list)) or len(value) < 2 or not all(isinstance(v, Mapping) for v in value[:2]):
                raise HypernetError(f"{path}: width {key} must hold a (key, value) pair of state dicts")
            widths[key] = (value[0], value[1])
        else:
            metadata[str(key)] = value
    if not widths:
        raise HypernetError(f"{path}: not a hypernetwork file (no integer width keys such as 768 or 320 found)")
    return widths, metadata


def _nested_keys(data: dict[Any, Any]) -> list[str]:
    sd = data.get("state_dict")
    return [k for k in sd if isinstance(k, str)][:50] if isinstance(sd, Mapping) else []


def _refuse_other_kinds(path: Path, keys: list[str]) -> None:
    """Name the kind of file people most often pass by mistake instead of failing on a missing key."""
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")) for k in keys) or (
        "state_dict" in keys
    ):
        raise HypernetError(f"{path}: this looks like a Stable Diffusion checkpoint, not a hypernetwork")
    if any(
        part in k
        for k in keys
        for part in ("lora_up", "lora_down", "lora_A", "lora_B", "lora_unet_", "lora_te", ".alpha", "hada_w", "lokr_")
    ):
        raise HypernetError(f"{path}: this looks like a LoRA file, not a hypernetwork (hypernet applies hypernetworks only)")
    if "string_to_param" in keys or "emb_params" in keys:
        raise HypernetError(f"{path}: this looks like a textual inversion embedding, not a hypernetwork")


def _read_safetensors(path: Path) -> tuple[dict[int, tuple[Mapping[str, torch.Tensor], ...]], dict[str, Any]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            names = list(f.keys())
            if header.get("format") != SAFETENSORS_FORMAT:
                _refuse_other_kinds(path, names)
                raise HypernetError(
                    f"{path}: not a hypernet .safetensors file (header 'format' is {header.get('format')!r}, "
                    f"expected {SAFETENSORS_FORMAT!r})"
                )
            tensors = {name: f.get_tensor(name) for name in names}
    except HypernetError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        raise HypernetError(f"{path}: the file is truncated or corrupt and cannot be read ({first_line(e)})") from None
    try:
        metadata = json.loads(header["metadata"])
        order = json.loads(header["widths"])
    except (KeyError, json.JSONDecodeError) as e:
        raise HypernetError(f"{path}: damaged hypernet header ({first_line(e)})") from None
    widths: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {w: ({}, {}) for w in order}
    for name, tensor in tensors.items():
        width, kv, key = name.split(".", 2)
        if int(width) not in widths or kv not in ("0", "1"):
            raise HypernetError(f"{path}: unexpected tensor {name!r} (expected '<width>.<0|1>.<key>' for listed widths)")
        widths[int(width)][int(kv)][key] = tensor
    return widths, metadata


# ----------------------------------------------------------------------------------- metadata rules
def _architecture_from_metadata(md: Mapping[str, Any]) -> Architecture:
    """A1111's loading defaults for every missing key (hypernetwork-format.md §4)."""
    ls = list(md.get("layer_structure") or [1, 2, 1])
    ds = md.get("dropout_structure")
    use_dropout = True if ds is not None and any(p != 0 for p in ds) else bool(md.get("use_dropout", False))
    last_layer_dropout = bool(md.get("last_layer_dropout", False))
    if ds is None:
        if use_dropout:
            ds = [0] + [0.3] * (len(ls) - 3) + [0.3 if last_layer_dropout else 0] + [0]
        else:
            ds = [0] * len(ls)
    return Architecture(
        layer_structure=ls,
        activation_func=md.get("activation_func"),
        add_layer_norm=bool(md.get("is_layer_norm", False)),
        activate_output=bool(md.get("activate_output", True)),  # True: pre-2022-10-26 nets activated the output
        dropout_structure=list(ds),
        use_dropout=use_dropout,
        last_layer_dropout=last_layer_dropout,
        weight_init=md.get("weight_initialization", "Normal"),
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32 else None


_LEGACY_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
                "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


def _build(path: Path, widths: Mapping[int, tuple[Mapping[str, torch.Tensor], ...]], md: Mapping[str, Any]) -> Hypernetwork:
    arch = _architecture_from_metadata(md)
    try:
        check_architecture(arch)
    except HypernetError as e:
        raise HypernetError(f"{path}: {e}") from None
    hn = Hypernetwork(
        widths,
        arch,
        name=md.get("name") or path.stem,
        step=int(md.get("step") or 0),
        sd_checkpoint=md.get("sd_checkpoint"),
        sd_checkpoint_name=md.get("sd_checkpoint_name"),
        optional_info=md.get("optional_info"),
        training_seed=_int_or_none(md.get("hypernet_training_seed")),
        lineage=str(md["hypernet_lineage"]) if isinstance(md.get("hypernet_lineage"), str) else None,
    )
    for width, pair in widths.items():
        for which, sd, module in zip(("k", "v"), pair, hn.modules_for(width) or ()):
            sd = {_LEGACY_KEYS.get(k, k): v for k, v in sd.items()}
            _load_strict(path, width, which, module, sd, arch)
    return hn.eval()


def _load_strict(path: Path, width: int, which: str, module: torch.nn.Module, sd: dict[str, torch.Tensor], arch: Architecture) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(t.shape)})" for k, t in expected.items() if k in sd and sd[k].shape != t.shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append("missing keys " + ", ".join(missing))
        if unexpected:
            problems.append("unexpected keys " + ", ".join(unexpected))
        if wrong:
            problems.append("wrong shapes " + ", ".join(wrong))
        raise HypernetError(
            f"{path}: the {which} module for width {width} does not match its metadata "
            f"(layer_structure={arch.layer_structure}, activation={arch.activation_func}, "
            f"layer_norm={arch.add_layer_norm}, dropout={arch.dropout_structure}): {'; '.join(problems)}. "
            "A1111 cannot load this file either"
        )
    module.load_state_dict({k: t.to(torch.float32) for k, t in sd.items()}, strict=True)


def _read_optimizer_sidecar(hn: Hypernetwork, path: Path) -> None:
    """Keep the optimizer state only if the sidecar's hash matches this file (A1111's rule)."""
    sidecar = path.with_name(path.name + ".optim")
    if path.suffix.lower() != ".pt" or not sidecar.is_file():
        return
    data = torch_load(sidecar)
    if not isinstance(data, dict) or data.get("hash") != short_hash(path):
        return
    hn.optimizer_name = str(data.get("optimizer_name") or "AdamW")
    hn.optimizer_state_dict = data.get("optimizer_state_dict")


# ============================================================================================= discovery
def list_hypernetworks(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """A1111's discovery: recursive ``*.pt`` (plus our ``.safetensors``), sorted case-insensitively by path,
    keyed by file stem (a later duplicate wins), ``None.pt`` skipped."""
    root = Path(directory)
    if not root.is_dir():
        return {}
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS]
    result: dict[str, Path] = {}
    for p in sorted(found, key=lambda p: str(p).lower()):
        if p.stem == "None":
            continue
        result[p.stem] = p
    return result


def sanitize_name(name: str) -> str:
    """A1111 keeps only letters, digits and ``._- `` in a new network's name (the file is named after it)."""
    clean = "".join(c for c in name if c.isalnum() or c in "._- ").strip()
    if not clean:
        raise HypernetError(f"hypernetwork name {name!r} has no usable characters (letters, digits, '._- ')")
    return clean


def describe_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """A file's structure, training state and hash as plain data: what ``inspect``, the HTTP API and the UI show."""
    path = Path(path)
    net = load_hypernetwork(path)
    a = net.arch
    return {
        "name": net.name,
        "file": str(path),
        "format": "safetensors (hypernet)" if path.suffix.lower() == ".safetensors" else "pt (A1111)",
        "widths": net.widths,
        "layer_structure": a.layer_structure,
        "activation": a.activation_func,
        "activate_output": a.activate_output,
        "layer_norm": a.add_layer_norm,
        "dropout_structure": a.dropout_structure,
        "weight_init": a.weight_init,
        "parameters": net.num_parameters(),
        "step": net.step,
        "sd_checkpoint": net.sd_checkpoint,
        "sd_checkpoint_name": net.sd_checkpoint_name,
        "sha256": short_hash(path),
        "optimizer_state": net.optimizer_name if net.optimizer_state_dict is not None else None,
    }
