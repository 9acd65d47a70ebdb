"""Textual-inversion embeddings in prompts, as A1111 v1.10 applies them.

:class:`EmbeddingLibrary` holds the embeddings folder's files, split like A1111 into ``loaded`` (made for this
model's text width) and ``skipped``. :class:`EmbeddingMatcher` finds embedding names in a prompt's tokens (longest
name first, token-level, so case and spacing that tokenize alike match) and writes the vectors over the placeholder
positions through a forward hook on the text encoder's token embedding, which is where A1111 inserts them; position
embeddings, the transformer and emphasis then act on them like on any token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from hypernet.errors import HypernetError
from hypernet.fileio import sha256_file
from hypernet.network.embeddings import Embedding, list_embedding_files, load_embedding
from hypernet.prompt.syntax import PromptChunk

log = logging.getLogger("hypernet.embeddings")


class EmbeddingLibrary:
    """The embeddings folder (A1111: ``embeddings/``), reloaded when the folder changes or on :meth:`refresh`."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.expected_shape: int | None = None
        self.loaded: dict[str, Embedding] = {}
        self.skipped: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}  # file -> why it could not be read
        self._mtime: float | None = None
        self._hashes: dict[tuple[str, float], str] = {}

    def for_width(self, expected_shape: int, *, force: bool = False) -> dict[str, Embedding]:
        """The embeddings usable with a model of this text width (SDXL: both widths summed), reloading the folder
        when its modification time changed (A1111 checks the top folder only), the width changed or ``force``."""
        mtime = self.directory.stat().st_mtime if self.directory is not None and self.directory.is_dir() else None
        if force or expected_shape != self.expected_shape or mtime != self._mtime:
            self._reload(expected_shape)
            self._mtime = mtime
        return self.loaded

    def _reload(self, expected_shape: int) -> None:
        self.expected_shape = expected_shape
        found: dict[str, Embedding] = {}
        self.errors = {}
        for path in list_embedding_files(self.directory):
            try:
                embedding = load_embedding(path)
            except HypernetError as e:
                self.errors[str(path)] = str(e)
                log.warning("%s", e)
                continue
            found[embedding.name] = embedding
        loaded = {n: e for n, e in found.items() if e.shape == expected_shape}
        self.loaded = dict(sorted(loaded.items(), key=lambda kv: kv[0].lower()))
        self.skipped = {n: e for n, e in found.items() if e.shape != expected_shape}
        for name, embedding in self.skipped.items():
            log.warning("embedding %r has width %d, this model's text width is %d: skipped", name, embedding.shape,
                        expected_shape)

    def short_hash(self, embedding: Embedding) -> str:
        """A1111's TI hash: sha256 of the whole file, first 12 digits."""
        key = (str(embedding.path), embedding.path.stat().st_mtime)
        if key not in self._hashes:
            self._hashes[key] = sha256_file(embedding.path)
        return self._hashes[key][:12]

    def infotext(self, used: Sequence[str]) -> dict[str, str]:
        """A1111's ``TI hashes`` field for the embeddings a generation used (``:`` and ``,`` removed from names)."""
        entries = [f"{n.replace(':', '').replace(',', '')}: {self.short_hash(self.loaded[n])}"
                   for n in used if n in self.loaded]
        return {"TI hashes": ", ".join(entries)} if entries else {}

    def skipped_warnings(self, texts: Sequence[str]) -> list[str]:
        """Warnings for skipped (other-width) embeddings whose names the prompts mention."""
        warnings = []
        for name, embedding in self.skipped.items():
            if any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) for text in texts):
                warnings.append(f"embedding {name!r} was made for text width {embedding.shape}, this model's is "
                                f"{self.expected_shape}: it was skipped and its name is read as plain words.")
        return warnings


class EmbeddingMatcher:
    """Finds embedding names in token ids and writes their vectors into a text encoder's input."""

    def __init__(self, tokenizer, embeddings: Mapping[str, Embedding]) -> None:  # noqa: ANN001 - CLIP tokenizer
        self.embeddings = dict(embeddings)
        self.used: dict[str, None] = {}  # names in the order prompts used them
        self._lookup: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name in self.embeddings:
            ids = tuple(tokenizer(name, add_special_tokens=False, truncation=False)["input_ids"])
            if ids:
                self._lookup.setdefault(ids[0], []).append((ids, name))
        for candidates in self._lookup.values():
            candidates.sort(key=lambda c: len(c[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._lookup)

    def find(self, tokens: Sequence[int], position: int) -> tuple[str, int, int] | None:
        """The embedding whose name's tokens start at ``position`` (the longest), as (name, tokens, vectors)."""
        for ids, name in self._lookup.get(tokens[position], ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                self.used[name] = None
                return name, len(ids), self.embeddings[name].count
        return None

    @contextlib.contextmanager
    def written_into(self, encoder: torch.nn.Module, chunk: PromptChunk, index: int) -> Iterator[None]:
        """While encoding ``chunk``, replace its placeholder rows of the token embedding with the vectors
        (text encoder ``index``: SDXL's second takes ``clip_g``)."""
        if not chunk.fixes:
            yield
            return

        def write(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            length = output.shape[1]
            for offset, name in chunk.fixes:
                vectors = self.embeddings[name].for_encoder(index).to(output.device, output.dtype)
                count = min(length - offset - 1, vectors.shape[0])
                if count > 0:
                    output[:, offset + 1 : offset + 1 + count] = vectors[:count]
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(write)
        try:
            yield
        finally:
            handle.remove()
