"""Reading weight files without running code: the weights-only rules and their sentences, in one place for
hypernetworks, LoRAs and embeddings."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from hypernet.errors import HypernetError

TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # zip, or pickle protocol 2-5


def torch_load(path: Path) -> Any:
    """A PyTorch file's contents, read with ``weights_only=True``; a file that is not one, is damaged or holds code
    is a HypernetError naming it (never torch's advice to retry unsafely)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic.startswith(TORCH_MAGIC):  # a zip archive (torch >= 1.6) or a pickle (older torch.save)
        raise HypernetError(f"{path}: not a PyTorch file (a .pt file is a zip archive or a pickle; this is neither)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "global" in line.lower()), None)
        if detail is None:  # no forbidden object named: the bytes are not a pickle torch wrote
            raise HypernetError(f"{path}: not a PyTorch file (its data cannot be read as one)") from None
        raise HypernetError(
            f"{path}: refused to load: the file contains Python objects other than tensors and plain data "
            f"({detail.strip()}); hypernet never runs code from model files"
        ) from None
    except (KeyError, IndexError, TypeError, AttributeError) as e:  # garbage that happens to start like a pickle
        raise HypernetError(f"{path}: not a PyTorch file ({type(e).__name__} while reading it)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise HypernetError(f"{path}: the file is truncated or corrupt and cannot be read ({first_line(e)})") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_weights(path: Path) -> Any:
    """The tensors of a ``.safetensors`` file, or what a PyTorch file holds (read as :func:`torch_load` does)."""
    if path.suffix.lower() != ".safetensors":
        return torch_load(path)
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise HypernetError(f"{path}: the file is truncated or corrupt and cannot be read ({first_line(e)})") from None
