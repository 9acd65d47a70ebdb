"""Writing hypernetwork files: A1111 ``.pt`` (which a stock A1111 loads), our ``.safetensors``, ``.pt.optim`` sidecars.

Writing is atomic, and ``.pt`` files contain only the zip records and pickle globals a stock A1111 accepts, so they
can be shared with A1111 users. The writer only needs what a network reports about itself (:class:`Writable`), so
``Hypernetwork.save`` can use it without this module knowing the class.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import safetensors.torch
import torch

from hypernet.errors import HypernetError
from hypernet.fileio import atomic_write_bytes, short_hash

SAFETENSORS_FORMAT = "hypernet.hypernetwork/1"
EXTENSIONS = (".pt", ".safetensors")

# Zip records a stock A1111 allows inside a .pt (newer torch also writes .format_version and .storage_alignment).
_A1111_RECORDS = ("data.pkl", "version", "byteorder", ".data/serialization_id")
_ZIP_ALIGNMENT = 64  # torch aligns tensor data so that files can be memory-mapped


class Writable(Protocol):
    """What a file holds: per-width (k, v) state dicts, in file order, and A1111's metadata keys."""

    @property
    def widths(self) -> list[int]: ...

    def metadata(self) -> dict[str, Any]: ...

    def module_state_dicts(self) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]: ...


def save_hypernetwork(hn: Writable, path: str | os.PathLike[str], *, optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write ``hn`` atomically in the format named by the extension; optionally the ``.pt.optim`` sidecar."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if optimizer is not None:
            raise HypernetError(f"{path}: optimizer state can only be saved next to a .pt file")
        atomic_write_bytes(path, safetensors_bytes(hn))
    elif suffix == ".pt":
        payload: dict[Any, Any] = {w: (OrderedDict(k), OrderedDict(v)) for w, (k, v) in hn.module_state_dicts().items()}
        payload.update(hn.metadata())
        data = a1111_pt_bytes(payload, archive_name=path.stem)
        if optimizer is not None:  # the sidecar first: a .pt on disk always has its optimizer state beside it
            write_optimizer_sidecar(path, type(optimizer).__name__, optimizer.state_dict(),
                                    pt_hash=hashlib.sha256(data).hexdigest()[:10])
        atomic_write_bytes(path, data)
    else:
        raise HypernetError(f"{path}: unknown hypernetwork file extension; expected one of {', '.join(EXTENSIONS)}")
    return path


def safetensors_bytes(hn: Writable) -> bytes:
    """Our safetensors layout: tensors ``<width>.<0=k|1=v>.<state-dict key>``, A1111 metadata as JSON in the header."""
    tensors = {
        f"{width}.{i}.{key}": tensor
        for width, pair in hn.module_state_dicts().items()
        for i, sd in enumerate(pair)
        for key, tensor in sd.items()
    }
    header = {
        "format": SAFETENSORS_FORMAT,
        "widths": json.dumps(hn.widths),
        "metadata": json.dumps(hn.metadata()),
    }
    return safetensors.torch.save(tensors, metadata=header)


def a1111_pt_bytes(obj: Any, *, archive_name: str = "archive") -> bytes:
    """``torch.save`` bytes restricted to the zip records A1111's pre-load check allows, data 64-byte aligned."""
    raw = io.BytesIO()
    torch.save(obj, raw)
    raw.seek(0)
    prefix = "".join(c for c in archive_name if c not in "/\\") or "archive"
    out = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            record = info.filename.split("/", 1)[1]
            if record not in _A1111_RECORDS and not record.startswith("data/"):
                continue
            name = f"{prefix}/{record}"
            zinfo = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zinfo.compress_type = zipfile.ZIP_STORED
            header_end = out.tell() + 30 + len(name.encode()) + 4
            zinfo.extra = b"FB" + (_pad := (-header_end) % _ZIP_ALIGNMENT).to_bytes(2, "little") + b"Z" * _pad
            dst.writestr(zinfo, src.read(info))
    return out.getvalue()


def write_optimizer_sidecar(pt_path: Path, optimizer_name: str, state_dict: Mapping[str, Any], *,
                            pt_hash: str | None = None) -> Path:
    """``<file>.pt.optim`` as A1111 writes it, with the short hash of the ``.pt`` (``pt_hash``, or the file's) so
    resume finds it."""
    sidecar = pt_path.with_name(pt_path.name + ".optim")
    digest = pt_hash or short_hash(pt_path)
    payload = {"optimizer_name": optimizer_name, "hash": digest, "optimizer_state_dict": state_dict}
    atomic_write_bytes(sidecar, a1111_pt_bytes(payload, archive_name=sidecar.stem))
    return sidecar
