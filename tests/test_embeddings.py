"""Textual-inversion embeddings as A1111 applies them: an embedding's name in a prompt equals writing its vectors
into the model's token table by hand; emphasis, chunking, SDXL's two encoders, other widths and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hypernet.engine.checkpoints import ModelInfo
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.embeddings import EmbeddingLibrary
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext
from hypernet.fileio import sha256_file
from hypernet.network.embeddings import load_embedding
from hypernet.prompt.syntax import chunk_prompt
from hypernet.testing import TEXT_WIDTHS, save_tensors, tiny_pipeline

FAST = dict(steps=2, width=64, height=64, seed=5, sampler_name="Euler")
HAND_WORDS = ("cat", "dog")  # one token each: their rows of the token table get the vectors by hand


def vectors(width: int, seed: int, count: int = 2) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.05


def generator_for(family: str, embeddings_dir: Path | None, pipe=None) -> Generator:
    pipe = pipe or tiny_pipeline(family, seed=0)
    info = ModelInfo(family, "epsilon", TEXT_WIDTHS[family], f"tiny-{family}", "", None)
    return Generator(pipe, info, embeddings_dir=embeddings_dir)


def by_hand(family: str, per_encoder: list[torch.Tensor]) -> Generator:
    """A fresh copy of the model whose token table holds the vectors at the rows of ``HAND_WORDS``."""
    pipe = tiny_pipeline(family, seed=0)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    with torch.no_grad():
        for encoder, vecs in zip(encoders, per_encoder):
            for word, vec in zip(HAND_WORDS, vecs):
                [token] = pipe.tokenizer(word, add_special_tokens=False)["input_ids"]
                encoder.get_input_embeddings().weight[token] = vec
    return generator_for(family, None, pipe)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_negative_embedding_equals_vectors_by_hand(tmp_path: Path, family: str) -> None:
    widths = TEXT_WIDTHS[family]
    if family == "sdxl":
        per_encoder = [vectors(widths[0], 1), vectors(widths[1], 2)]
        save_tensors({"clip_l": per_encoder[0], "clip_g": per_encoder[1]}, tmp_path / "emb" / "EasyNeg.safetensors")
    else:
        per_encoder = [vectors(widths[0], 1)]
        (tmp_path / "emb").mkdir()
        torch.save({"string_to_param": {"*": per_encoder[0]}, "name": "ignored", "step": 42,
                    "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, tmp_path / "emb" / "EasyNeg.pt")
    gen = generator_for(family, tmp_path / "emb")
    result = gen.generate(Settings("a castle", negative_prompt="(EasyNeg:1.2), blurry", **FAST))
    hand = by_hand(family, per_encoder).generate(Settings("a castle", negative_prompt="(cat dog:1.2), blurry", **FAST))
    plain = gen.generate(Settings("a castle", negative_prompt="(cat dog:1.2), blurry", **FAST))
    pixels = lambda r: np.asarray(r.images[0], dtype=np.float64)  # noqa: E731
    assert np.array_equal(pixels(result), pixels(hand))
    assert not np.array_equal(pixels(result), pixels(plain))
    assert result.embeddings == ["EasyNeg"]
    file = next((tmp_path / "emb").iterdir())
    assert parse_infotext(result.infotexts[0])["TI hashes"] == f"EasyNeg: {sha256_file(file)[:12]}"
    again = gen.generate(Settings("a castle", negative_prompt="(cat dog:1.2), blurry", **FAST))
    assert np.array_equal(pixels(again), pixels(plain)) and "TI hashes" not in again.infotexts[0]


def test_matching_is_by_tokens_longest_first_and_emphasis_applies(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd1", seed=0)
    width = TEXT_WIDTHS["sd1"][0]
    torch.save({"emb_params": vectors(width, 3, 1)}, tmp_path / "bad-hands.bin")
    torch.save({"emb_params": vectors(width, 4, 3)}, tmp_path / "bad-hands-5.bin")
    library = EmbeddingLibrary(tmp_path)
    encoder = PromptEncoder(pipe, embeddings=library.for_width(width))
    chunk = encoder._chunks("a BAD - hands - 5, bad-hands", pipe.tokenizer).chunks[0]
    assert chunk.fixes == ((1, "bad-hands-5"), (5, "bad-hands"))  # case and spacing that tokenize alike match
    assert chunk.tokens[2:5] == (0, 0, 0)
    weighted = encoder._chunks("(bad-hands:1.5)", pipe.tokenizer).chunks[0]
    assert weighted.multipliers[1] == 1.5 and weighted.fixes == ((0, "bad-hands"),)


def test_embedding_is_never_split_across_chunks() -> None:
    def find(tokens, position):
        return ("emb", 1, 3) if tokens[position] == 9 else None

    chunks = chunk_prompt("x", lambda s: [5] * 73 + [9], bos_id=1, eos_id=2, comma_id=None,
                          find_embedding=find).chunks
    assert len(chunks) == 2 and chunks[0].fixes == () and chunks[1].fixes == ((0, "emb"),)
    assert chunks[0].tokens[74:] == (2, 2, 2) and chunks[1].tokens[1:5] == (0, 0, 0, 2)


def test_other_widths_are_skipped_and_bad_files_named(tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": vectors(80, 1)}}, tmp_path / "sd2emb.pt")
    torch.save({"emb_params": vectors(48, 1)}, tmp_path / "good.pt")
    save_tensors({"lora_unet_a.lora_up.weight": torch.zeros(2, 1)}, tmp_path / "alora.safetensors")
    (tmp_path / "broken.pt").write_bytes(b"not a pickle at all")
    (tmp_path / "empty.pt").write_bytes(b"")
    gen = generator_for("sd1", tmp_path)
    loaded = gen.embeddings.for_width(48)
    assert list(loaded) == ["good"] and list(gen.embeddings.skipped) == ["sd2emb"]
    assert "LoRA file, not an embedding" in gen.embeddings.errors[str(tmp_path / "alora.safetensors")]
    assert "not a PyTorch file" in gen.embeddings.errors[str(tmp_path / "broken.pt")]  # as for hypernetworks
    result = gen.generate(Settings("a sd2emb cat", **FAST))
    assert any("'sd2emb' was made for text width 80" in w for w in result.warnings)
    assert result.embeddings == []


def test_embedding_file_formats(tmp_path: Path) -> None:
    vec = vectors(48, 9, 1)[0]
    torch.save({"<tok>": vec}, tmp_path / "diffusers.bin")  # diffusers' learned_embeds.bin: 1-D
    emb = load_embedding(tmp_path / "diffusers.bin")
    assert emb.name == "diffusers" and emb.count == 1 and emb.shape == 48 and torch.equal(emb.vectors[0], vec)
    save_tensors({"clip_l": vectors(48, 1, 4), "clip_g": vectors(80, 1, 4)}, tmp_path / "xl.safetensors")
    xl = load_embedding(tmp_path / "xl.safetensors")
    assert xl.shape == 128 and xl.count == 4 and xl.as_api()["vectors"] == 4
