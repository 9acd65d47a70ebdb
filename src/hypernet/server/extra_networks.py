"""A1111's LoRA and textual-inversion routes: ``GET /loras``, ``GET /embeddings`` and their refresh calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from hypernet.server.models import M
from hypernet.server.state import ServerState


def lora_list(state: ServerState, *, refresh: bool = False) -> list[dict[str, Any]]:
    """A1111's ``/loras`` entries in scan order: name (stem), alias, full path, safetensors metadata."""
    files = state.model.generator.loras.available(refresh=refresh)
    return [{"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": f.metadata} for f in files.values()]


def embedding_lists(state: ServerState, *, refresh: bool = False) -> dict[str, dict[str, Any]]:
    """A1111's ``/embeddings``: ``loaded`` (this model's text width) and ``skipped`` (other widths)."""
    generator = state.model.generator
    library = generator.embeddings
    library.for_width(sum(generator.info.text_widths), force=refresh)
    return {"loaded": {n: e.as_api() for n, e in library.loaded.items()},
            "skipped": {n: e.as_api() for n, e in library.skipped.items()}}


def add_routes(api: APIRouter, state: ServerState) -> None:
    """Register the routes on ``api`` (before its catch-all)."""

    @api.get("/loras")
    async def loras() -> list[dict[str, Any]]:
        return await run_in_threadpool(lora_list, state)

    @api.post("/refresh-loras")
    async def refresh_loras() -> None:
        await run_in_threadpool(lora_list, state, refresh=True)

    @api.get("/embeddings", response_model=M.EmbeddingsResponse)
    async def embeddings() -> Any:
        return await run_in_threadpool(embedding_lists, state)

    @api.post("/refresh-embeddings")
    async def refresh_embeddings() -> None:
        await run_in_threadpool(embedding_lists, state, refresh=True)
