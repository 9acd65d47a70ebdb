"""The folders hypernet reads models and networks from (``hypernet generate``, ``hypernet serve``, training).

Folders come from the command line or the server's configuration, never from an HTTP request. Each is defined
once here (flags, help, default: an environment variable, else A1111's folder) and used by every command that has
it (:func:`hypernet.settings.cli.field_option`), so ``--lora-dir`` means the same on ``generate`` and ``serve``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from hypernet.defaults import embeddings_dir, hypernetwork_dir, lora_dir
from hypernet.settings.base import On, SettingsModel

SERVER_DECIDES = "paths and devices come from the server's configuration, never from a request"
MAX_PATH = 4096  # characters, enough for a path on any system

HypernetworkDir = Annotated[str, Field(max_length=MAX_PATH, description="Hypernetworks: where <hypernet:NAME> names "
                                       "are looked up, networks are created and trained ($HYPERNET_HYPERNETWORK_DIR, "
                                       "else A1111's models/hypernetworks)."),
                            On(cli=("--hypernetwork-dir", "--dir"), ui=None, api=False, why=SERVER_DECIDES)]
LoraDir = Annotated[str, Field(max_length=MAX_PATH, description="LoRA files: where <lora:NAME:WEIGHT> names are looked "
                               "up ($HYPERNET_LORA_DIR, else A1111's models/Lora)."),
                    On(cli=("--lora-dir",), ui=None, api=False, why=SERVER_DECIDES)]
EmbeddingsDir = Annotated[str, Field(max_length=MAX_PATH, description="Textual-inversion embeddings, used by file name "
                                     "in prompts ($HYPERNET_EMBEDDINGS_DIR, else A1111's embeddings)."),
                          On(cli=("--embeddings-dir",), ui=None, api=False, why=SERVER_DECIDES)]
EsrganDir = Annotated[str, Field(max_length=MAX_PATH, description="ESRGAN upscaler models (.pth/.safetensors) for the "
                                 "hires fix, named by file stem."),
                      On(cli=("--esrgan-dir",), ui=None, api=False, why=SERVER_DECIDES)]


class Folders(SettingsModel):
    """Where models and networks are found. The environment is read when a Folders is made, not when this module
    is imported, so a server or a test that sets ``$HYPERNET_*`` afterwards gets its folders."""

    hypernetwork_dir: HypernetworkDir = Field(default_factory=lambda: str(hypernetwork_dir()))
    lora_dir: LoraDir = Field(default_factory=lambda: str(lora_dir()))
    embeddings_dir: EmbeddingsDir = Field(default_factory=lambda: str(embeddings_dir()))
    esrgan_dir: EsrganDir = "models/ESRGAN"

