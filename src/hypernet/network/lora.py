"""LoRA files as A1111's built-in Lora extension (v1.10) finds, names, hashes and reads them, and the maths of each
network type (pure torch; the mapping of keys onto a model's layers lives in :mod:`hypernet.engine.lora`).

- Discovery: recursive, natural-sort order, ``.pt .ckpt .safetensors``; name = file stem (a later duplicate wins);
  alias = ``ss_output_name`` from the safetensors metadata.
- Hash: A1111's "addnet hash" (sha256 of a safetensors file after its header; of the whole file otherwise), or
  the trusted ``sshs_model_hash`` metadata value.
- Types: ``lora`` (kohya ``lora_up/lora_down``, PEFT-style ``lora_A/lora_B``, LoCon convolutions, CP ``lora_mid``,
  ``dyn``), ``hada`` (LoHa), ``lokr`` (LoKr), ``full`` (``diff``/``diff_b``), ``norm``; ΔW is computed in float32.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import torch

from hypernet.errors import HypernetError
from hypernet.network.weights import first_line, read_weights

LORA_EXTENSIONS = (".pt", ".ckpt", ".safetensors")
FORBIDDEN_ALIASES = frozenset({"none", "addams"})
"""A1111's ``forbidden_network_aliases`` start: names that resolve only as a file stem."""

_METADATA_PRIORITY = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                      "ss_tag_frequency": 20}


# =============================================================================================== discovery
@dataclass(frozen=True)
class LoraFile:
    """One file in the Lora folder: ``name`` (stem) and ``alias`` are what ``<lora:...>`` may say."""

    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def alias(self) -> str:
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def sd_version(self) -> str:
        """A1111's guess from the training metadata ("SDXL", "SD2", "SD1" or "Unknown"); only the UI uses it."""
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            return "SDXL"
        if str(self.metadata.get("ss_v2", "")) == "True":
            return "SD2"
        return "SD1" if self.metadata else "Unknown"


def natural_key(text: str) -> list[Any]:
    """A1111's natural sort: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_loras(directories: Iterable[str | os.PathLike[str] | None]) -> dict[str, LoraFile]:
    """Every LoRA file under ``directories`` (in order: a later folder's file wins a name), keyed by stem.

    Folders and files are walked in natural-sort order, as A1111 does, so the same name picks the same file.
    """
    found: dict[str, LoraFile] = {}
    for directory in directories:
        if directory is None or not Path(directory).is_dir():
            continue
        for root, dirs, files in os.walk(directory, followlinks=True):
            dirs.sort(key=natural_key)
            for filename in sorted(files, key=natural_key):
                path = Path(root) / filename
                if path.suffix.lower() in LORA_EXTENSIONS and path.is_file():
                    found[path.stem] = LoraFile(path.stem, path, read_lora_metadata(path))
    return found


def read_lora_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A safetensors file's ``__metadata__``, JSON values parsed and keys in A1111's order; ``{}`` otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError):
        return {}  # a damaged file is named as such when it is used
    raw = header.get("__metadata__") or {}
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        metadata[key] = value
    return dict(sorted(metadata.items(), key=lambda kv: _METADATA_PRIORITY.get(kv[0], 999)))


def resolve_lora(name: str, available: Mapping[str, LoraFile]) -> LoraFile:
    """The file ``<lora:NAME>`` means, by A1111's rules: by stem or alias (case-sensitive); a name whose lower case
    is a forbidden alias (``none``, ``Addams``, or an alias two files share) only by stem.

    Raises HypernetError naming the closest names when nothing matches.
    """
    aliases: dict[str, LoraFile] = {}
    forbidden = set(FORBIDDEN_ALIASES)
    for lora in available.values():
        if lora.alias in aliases:
            forbidden.add(lora.alias.lower())
        aliases[lora.name] = lora
        aliases[lora.alias] = lora
    if name.lower() in forbidden:
        found = available.get(name)
    else:
        found = aliases.get(name)
    if found is None:
        raise unknown_name_error("LoRA", name, sorted(aliases))
    return found


def unknown_name_error(kind: str, name: str, names: list[str]) -> HypernetError:
    """``Unknown LoRA 'x'; did you mean ...?``: the closest names (case-insensitive equal ones first)."""
    unknown = f"Unknown {kind} {name!r}"
    if not names:
        return HypernetError(f"{unknown}; expected the name of a {kind} file, but none were found.")
    loose = name.strip().casefold()
    close = [n for n in names if n.strip().casefold() == loose]
    close += [n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.5) if n not in close]
    if close:
        return HypernetError(f"{unknown}; did you mean " + " or ".join(repr(n) for n in close[:3])
                             + "? (names are exact and case-sensitive)")
    if len(names) <= 5:
        return HypernetError(f"{unknown}; expected one of " + ", ".join(repr(n) for n in names) + ".")
    return HypernetError(f"{unknown}; expected one of the {len(names)} available names, none of which is similar.")


def lora_hash(lora: LoraFile) -> str:
    """A1111's full LoRA hash: ``sshs_model_hash`` if the file carries it, else the addnet hash (sha256 of a
    safetensors file after its header, of the whole file for other formats). ``[:12]`` is the short hash."""
    trusted = lora.metadata.get("sshs_model_hash")
    if trusted:
        return str(trusted)
    h = hashlib.sha256()
    with open(lora.path, "rb") as fh:
        if lora.path.suffix.lower() == ".safetensors":
            (size,) = struct.unpack("<Q", fh.read(8))
            fh.seek(8 + size)
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# =============================================================================================== reading
def load_lora_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file; other kinds of file (a checkpoint, a hypernetwork, an embedding) are named."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged header
            raise HypernetError(f"{path}: the file is truncated or corrupt and cannot be read ({first_line(e)}).") from None
        if header.get("format", "").startswith("hypernet.hypernetwork"):
            raise HypernetError(f"{path}: this is a hypernetwork file, not a LoRA; put it in the hypernetworks "
                                "folder and use <hypernet:NAME>.")
    state = read_weights(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        raise HypernetError(f"{path}: this is a Stable Diffusion checkpoint, not a LoRA; put it in the models "
                            "folder.")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        _refuse_other_kinds(path, state)
        raise HypernetError(f"{path}: not a LoRA file (expected a flat table of tensors such as "
                            "'lora_unet_..._lora_up.weight').")
    _refuse_other_kinds(path, state)
    return {str(k): v for k, v in state.items()}


def _refuse_other_kinds(path: Path, state: Any) -> None:
    if not isinstance(state, dict):
        return
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
           for k in keys):
        raise HypernetError(f"{path}: this is a Stable Diffusion checkpoint, not a LoRA; put it in the models "
                            "folder.")
    if "string_to_param" in keys or "emb_params" in keys or {"clip_l", "clip_g"} <= set(keys):
        raise HypernetError(f"{path}: this is a textual inversion embedding, not a LoRA; put it in the "
                            "embeddings folder and write its name in the prompt.")
    if any(isinstance(k, int) for k in state) or "layer_structure" in keys:
        raise HypernetError(f"{path}: this is a hypernetwork file, not a LoRA; put it in the hypernetworks folder "
                            "and use <hypernet:NAME>.")


# =============================================================================================== maths
class UnsupportedModule(HypernetError):
    """A layer's weights match no network type hypernet implements (A1111 then fails to load the whole file)."""


def module_type(parts: Mapping[str, torch.Tensor]) -> str:
    """The network type of one layer's weights, checked in A1111's order; raises UnsupportedModule if none fits."""
    has = parts.keys()
    if {"lora_up.weight", "lora_down.weight"} <= has or {"lora_A.weight", "lora_B.weight"} <= has:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= has:
        return "hada"
    if "weight" in has:
        raise UnsupportedModule("IA3 (weight) layers are not supported")
    if ("lokr_w1" in has or {"lokr_w1_a", "lokr_w1_b"} <= has) and ("lokr_w2" in has or {"lokr_w2_a", "lokr_w2_b"} <= has):
        return "lokr"
    if "diff" in has:
        return "full"
    if {"w_norm", "b_norm"} <= has:
        return "norm"
    kinds = {"a1.weight": "GLoRA", "oft_blocks": "OFT", "oft_diag": "OFT"}
    for key, kind in kinds.items():
        if key in has:
            raise UnsupportedModule(f"{kind} layers are not supported")
    raise UnsupportedModule(f"no known network type has the weights {sorted(has)}")


def module_delta(
    parts: Mapping[str, torch.Tensor], weight: torch.Tensor, multiplier: float, dyn: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(ΔW, Δb)`` of one layer in float32, shaped like ``weight``: A1111's ``calc_updown`` then its finalize step
    (bias, reshape, ``Δb·m``, ``ΔW·scale``, DoRA, ``·m``), with ``scale = alpha / rank`` when both are known.

    Raises ValueError when the result does not fit ``weight`` (a file made for another model).
    """
    p = {k: v.to(weight.device, torch.float32) for k, v in parts.items()}  # on the model's device: faster on a GPU
    kind = module_type(parts)
    dim: int | None = None
    bias_delta: torch.Tensor | None = None
    if kind == "lora":
        up = p.get("lora_up.weight", p.get("lora_B.weight"))
        down = p.get("lora_down.weight", p.get("lora_A.weight"))
        dim = down.shape[0]
        shape = [up.shape[0], down.shape[1]]
        if "lora_mid.weight" in p:
            mid = p["lora_mid.weight"]
            delta = torch.einsum("nmkl,in,mj->ijkl", mid, up.reshape(up.shape[0], -1), down.reshape(dim, -1))
            shape += list(mid.shape[2:])
        else:
            if down.dim() == 4:
                shape += list(down.shape[2:])
            u, d = up.reshape(up.shape[0], -1), down.reshape(dim, -1)
            if dyn is not None:
                u, d = u[:, :dyn], d[:dyn]
            delta = (u @ d).reshape(shape)
        bias_delta = p.get("lora_up.bias")  # PEFT's lora_bias (diffusers files): scaled like the weight below
    elif kind == "hada":
        dim = p["hada_w1_b"].shape[0]
        shape = [p["hada_w1_a"].shape[0], p["hada_w1_b"].shape[1]]
        if "hada_t1" in p:
            shape = [p["hada_w1_a"].shape[1], p["hada_w1_b"].shape[1], *p["hada_t1"].shape[2:]]
            w1 = _cp(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"])
        else:
            if p["hada_w1_b"].dim() == 4:
                shape += list(p["hada_w1_b"].shape[2:])
            w1 = _conventional(p["hada_w1_a"], p["hada_w1_b"], shape)
        w2 = (_cp(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"]) if "hada_t2" in p
              else _conventional(p["hada_w2_a"], p["hada_w2_b"], shape))
        delta = w1 * w2
    elif kind == "lokr":
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _cp(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:
            w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
        dim = (p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p
               else None)
        shape = list(weight.shape) if weight.dim() == 4 else [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2).reshape(shape)
    elif kind == "full":
        delta, shape = p["diff"], list(p["diff"].shape)
        bias_delta = p.get("diff_b")
    else:  # norm
        delta, shape = p["w_norm"], list(p["w_norm"].shape)
        bias_delta = p["b_norm"]

    if "bias" in p:
        delta = (delta.reshape(p["bias"].shape) + p["bias"]).reshape(shape)
    if len(shape) == 4:
        delta = delta.reshape(shape)
    if delta.numel() == weight.numel():
        delta = delta.reshape(weight.shape)
    elif weight.dim() == 4 and delta.dim() == 4 and weight.shape[1] == 9 and delta.shape[1] == 4:
        delta = torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, 5))  # inpainting UNet: 4 -> 9 input channels
    if delta.shape != weight.shape:
        raise ValueError(f"the weights' shape {tuple(delta.shape)} does not fit the layer's {tuple(weight.shape)}")
    if "scale" in p:
        scale = float(p["scale"])
    elif dim is not None and "alpha" in p:
        scale = float(p["alpha"]) / dim
    else:
        scale = 1.0  # no alpha: alpha = rank, as in A1111
    delta = delta * scale
    if bias_delta is not None:
        bias_delta = bias_delta * (multiplier * scale if kind == "lora" else multiplier)
    if "dora_scale" in p:
        merged = weight.float() + delta
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
        delta = merged * (p["dora_scale"] / norm) - weight.float()
    return delta * multiplier, bias_delta


def _conventional(a: torch.Tensor, b: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return (a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)).reshape(shape)


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' Tucker (CP) rebuild: ``t`` contracted with ``wb`` on its 2nd and ``wa`` on its 1st axis."""
    temp = torch.einsum("ijkl,jr->irkl", t, wb)
    return torch.einsum("ijkl,ir->rjkl", temp, wa)
