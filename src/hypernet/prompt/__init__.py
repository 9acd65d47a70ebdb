"""Prompts as A1111 reads them: ``<hypernet:...>`` tags, prompt editing and alternation, emphasis, 75-token chunks."""

from hypernet.prompt.syntax import (
    BREAK_WEIGHT,
    ChunkedPrompt,
    PromptChunk,
    chunk_prompt,
    parse_prompt_attention,
    prompt_schedules,
)
from hypernet.prompt.tags import (
    EXTRA_NETWORK_TAG,
    ExtraNetworkParams,
    HypernetworkSelection,
    ParsedBatch,
    hypernetwork_selections,
    parse_batch,
    parse_prompt,
    parse_prompts,
    resolve_hypernetwork,
)

__all__ = [
    "BREAK_WEIGHT",
    "EXTRA_NETWORK_TAG",
    "ChunkedPrompt",
    "ExtraNetworkParams",
    "HypernetworkSelection",
    "ParsedBatch",
    "PromptChunk",
    "chunk_prompt",
    "hypernetwork_selections",
    "parse_batch",
    "parse_prompt",
    "parse_prompt_attention",
    "parse_prompts",
    "prompt_schedules",
    "resolve_hypernetwork",
]
