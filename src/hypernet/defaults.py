"""Defaults every layer agrees on, defined once: the embedded toy model, the model folders, widths, precisions.

A leaf: it imports nothing from hypernet, so the network, engine, trainer, server and CLI can all read it without
depending on each other (the toy package, for instance, trains networks and so sits above the trainer).
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"

TOY_CHECKPOINT = ASSETS / "toy" / "toy-sd1.safetensors"
TOY_SIZE = 64  # the toy world's image size; its UNet works on 8x8 latents
TOY_NOTE = (f"no model given: using hypernet's embedded toy model ({TOY_CHECKPOINT.name}, {TOY_SIZE}x{TOY_SIZE} "
            "scenes such as 'a red circle on a white background, top left')")

HYPERNETWORK_DIR_ENV = "HYPERNET_HYPERNETWORK_DIR"
A1111_HYPERNETWORK_DIR = Path("models/hypernetworks")
LORA_DIR_ENV = "HYPERNET_LORA_DIR"
A1111_LORA_DIR = Path("models/Lora")
EMBEDDINGS_DIR_ENV = "HYPERNET_EMBEDDINGS_DIR"
A1111_EMBEDDINGS_DIR = Path("embeddings")

# A1111's "Create hypernetwork" form: the context widths of SD 1.x (768) and SD 2.x/XL's cross-attention (320..1280)
DEFAULT_WIDTHS = (768, 320, 640, 1280)

# Model weights' precision, as the CLI, the server and the settings name it (hypernetworks themselves stay fp32
# unless generation asks for a hypernetwork precision, which uses the same names).
MODEL_PRECISIONS = ("fp32", "fp16", "bf16")
# Training's mixed precision (accelerate's names): "auto" picks bf16/fp16 on CUDA and fp32 ("no") on the CPU.
TRAIN_PRECISIONS = ("auto", "no", "fp16", "bf16")


def hypernetwork_dir() -> Path:
    """The folder ``<hypernet:NAME>`` names are looked up in: ``$HYPERNET_HYPERNETWORK_DIR``, else A1111's."""
    return Path(os.environ.get(HYPERNETWORK_DIR_ENV) or A1111_HYPERNETWORK_DIR)


def lora_dir() -> Path:
    """The folder ``<lora:NAME:WEIGHT>`` names are looked up in: ``$HYPERNET_LORA_DIR``, else A1111's."""
    return Path(os.environ.get(LORA_DIR_ENV) or A1111_LORA_DIR)


def embeddings_dir() -> Path:
    """The folder textual-inversion embeddings are read from: ``$HYPERNET_EMBEDDINGS_DIR``, else A1111's."""
    return Path(os.environ.get(EMBEDDINGS_DIR_ENV) or A1111_EMBEDDINGS_DIR)
