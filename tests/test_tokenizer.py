"""The shipped CLIP tokenizer: SD's token ids, per-family padding, and a rebuild that reproduces the shipped files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hypernet.engine.tokenizer import PAD_ENDOFTEXT, PAD_EXCLAMATION, TOKENIZER_DIR, load_clip_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eos_tokenizer():
    return load_clip_tokenizer(PAD_ENDOFTEXT)


@pytest.fixture(scope="module")
def bang_tokenizer():
    return load_clip_tokenizer(PAD_EXCLAMATION)


def test_sd_token_ids(eos_tokenizer, bang_tokenizer):
    for tokenizer in (eos_tokenizer, bang_tokenizer):
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert tokenizer.model_max_length == 77
        assert len(tokenizer) == 49408
    assert eos_tokenizer.convert_tokens_to_ids(["!", "a</w>", "photo</w>", "cat</w>", "<|startoftext|>"]) == [
        0,
        320,
        1125,
        2368,
        49406,
    ]


def test_lower_cases_and_splits_punctuation_and_digits(eos_tokenizer):
    assert eos_tokenizer.tokenize("Hello, World! 42") == ["hello</w>", ",</w>", "world</w>", "!</w>", "4</w>", "2</w>"]


def test_padding_differs_per_family(eos_tokenizer, bang_tokenizer):
    sd1 = eos_tokenizer("a cat", padding="max_length", max_length=77).input_ids
    sd2 = bang_tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(sd1) == len(sd2) == 77
    assert sd1[:4] == sd2[:4] == [49406, 320, 2368, 49407]
    assert set(sd1[4:]) == {49407} and eos_tokenizer.pad_token_id == 49407
    assert set(sd2[4:]) == {0} and bang_tokenizer.pad_token_id == 0


def test_long_prompts_truncate_to_77_ending_in_eos(bang_tokenizer):
    ids = bang_tokenizer("cat " * 100, truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_each_call_returns_an_independent_tokenizer():
    assert load_clip_tokenizer(PAD_ENDOFTEXT) is not load_clip_tokenizer(PAD_ENDOFTEXT)


def test_unknown_pad_is_refused():
    with pytest.raises(ValueError, match="pad must be"):
        load_clip_tokenizer("<pad>")


def test_shipped_files_and_licence():
    names = {p.name for p in TOKENIZER_DIR.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    licence = (TOKENIZER_DIR / "LICENSE-open-clip.txt").read_text()
    assert "open-clip-torch" in licence and "MIT" in licence and "Permission is hereby granted" in licence
    merges = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["bos_token"] == "<|startoftext|>"


def test_build_script_reproduces_the_shipped_files(tmp_path, shared_dir):
    spec = importlib.util.spec_from_file_location("build_tokenizer", REPO / "scripts" / "build_tokenizer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.build(shared_dir / "assets" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz", tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
