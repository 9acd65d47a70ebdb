"""Prompt text -> text-encoder conditioning, as A1111 computes it: 75-token chunks, emphasis weights with the mean
restored, clip skip, and (for SDXL) two encoders concatenated plus the pooled embedding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from hypernet.engine.embeddings import EmbeddingMatcher
from hypernet.network.embeddings import Embedding
from hypernet.prompt.syntax import PromptChunk, chunk_prompt


@dataclass
class Conditioning:
    """``embeds``: (1, 77 * chunks, width); ``pooled``: (1, projection) for SDXL, else None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


class PromptEncoder:
    """Encodes prompts with a pipeline's tokenizer(s) and text encoder(s), caching each distinct text."""

    def __init__(self, pipe: DiffusionPipeline, *, clip_skip: int = 1,
                 embeddings: Mapping[str, Embedding] | None = None) -> None:
        if clip_skip < 1:
            raise ValueError("clip_skip must be >= 1")
        self.pairs = [(pipe.tokenizer, pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            self.pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        self.sdxl = len(self.pairs) == 2
        self.clip_skip = clip_skip
        self._cache: dict[str, Conditioning] = {}
        self.embeddings = EmbeddingMatcher(self.pairs[0][0], embeddings or {})

    def token_count(self, text: str) -> int:
        """A1111's token counter for the prompt box."""
        return self._chunks(text, self.pairs[0][0]).token_count

    def _chunks(self, text: str, tokenizer):  # noqa: ANN001, ANN202 - a transformers CLIP tokenizer
        return chunk_prompt(
            text,
            lambda s: tokenizer(s, add_special_tokens=False, truncation=False)["input_ids"],
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            comma_id=tokenizer.get_vocab().get(",</w>"),
            find_embedding=self.embeddings.find if self.embeddings else None,
        )

    @torch.no_grad()
    def encode(self, text: str) -> Conditioning:
        if text not in self._cache:
            parts: list[torch.Tensor] = []
            pooled = None
            for index, (tokenizer, encoder) in enumerate(self.pairs):
                chunks = self._chunks(text, tokenizer).chunks
                zs = []
                for i, chunk in enumerate(chunks):
                    with self.embeddings.written_into(encoder, chunk, index):
                        z, pool = self._encode_chunk(encoder, chunk)
                    zs.append(z)
                    if i == 0 and pool is not None:
                        pooled = pool
                parts.append(torch.cat(zs, dim=1))
            self._cache[text] = Conditioning(torch.cat(parts, dim=-1), pooled if self.sdxl else None)
        return self._cache[text]

    def _encode_chunk(self, encoder: torch.nn.Module, chunk: PromptChunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = encoder.device
        ids = torch.tensor([chunk.tokens], device=device)
        out = encoder(ids, output_hidden_states=True)
        if self.sdxl:  # SDXL conditions on the penultimate layer of both encoders, without the final norm
            z = out.hidden_states[-(self.clip_skip + 1)]
            pooled = out.text_embeds if hasattr(out, "text_embeds") else None
        else:
            z = out.last_hidden_state if self.clip_skip == 1 else encoder.final_layer_norm(out.hidden_states[-self.clip_skip])
            pooled = None
        # A1111's emphasis: scale each token's vector by its weight, then restore the original mean.
        # (All-1 weights leave z exactly unchanged, so skip them and a 0/0 on a zero-mean embedding.)
        if any(m != 1.0 for m in chunk.multipliers):
            weights = torch.tensor(chunk.multipliers, device=device, dtype=z.dtype)[None, :, None]
            original_mean = z.mean()
            z = z * weights
            new_mean = z.mean()
            if new_mean != 0:
                z = z * (original_mean / new_mean)
        return z, pooled

    def pad_to_same_length(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cond and uncond of different chunk counts: extend the shorter with the empty prompt's encoding."""
        empty = self.encode("").embeds
        while a.shape[1] < b.shape[1]:
            a = torch.cat([a, empty], dim=1)
        while b.shape[1] < a.shape[1]:
            b = torch.cat([b, empty], dim=1)
        return a, b
