"""Build hypernet's shipped CLIP tokenizer files from OpenAI's BPE merges file, offline.

The transformers and diffusers wheels carry no CLIP vocabulary, so hypernet ships one in
``src/hypernet/assets/tokenizer/clip/``. This script regenerates it from ``bpe_simple_vocab_16e6.txt.gz`` as found
in an installed open-clip-torch or clip-anytorch package (or given with ``--bpe``), building the vocabulary
exactly as OpenAI's and Hugging Face's CLIP tokenizers do:

    python scripts/build_tokenizer.py [--bpe path/to/bpe_simple_vocab_16e6.txt.gz]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "hypernet" / "assets" / "tokenizer" / "clip"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # OpenAI's tokenizer uses lines [1 : 49152 - 256 - 2 + 1] of the file
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

SPECIAL_TOKENS = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": 77,
    "do_lower_case": True,
    "errors": "replace",
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    **SPECIAL_TOKENS,
}


def bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable unicode table, in id order (printable ranges first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remapped = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(remapped))]


def find_bpe_file() -> Path:
    """The BPE file inside an installed open_clip or clip package, located without importing either."""
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidate = Path(spec.submodule_search_locations[0]) / BPE_NAME
            if candidate.is_file():
                return candidate
    raise SystemExit(f"{BPE_NAME} not found: install open-clip-torch or clip-anytorch, or pass --bpe PATH")


def build(bpe_path: Path, out_dir: Path) -> None:
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"{bpe_path} does not look like OpenAI's CLIP BPE merges file")

    symbols = bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != 49408 or vocab["a</w>"] != 320 or vocab[EOS] != 49407:
        raise SystemExit(f"{bpe_path} produced an unexpected vocabulary ({len(vocab)} entries)")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    for name, content in (("tokenizer_config.json", TOKENIZER_CONFIG), ("special_tokens_map.json", SPECIAL_TOKENS)):
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpe", type=Path, help=f"path to {BPE_NAME} (default: from open_clip or clip)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args()
    build(args.bpe or find_bpe_file(), args.out)


if __name__ == "__main__":
    main()
