"""The CLIP tokenizer every SD family uses, loaded from the copy hypernet ships (no Hub access).

The families differ only in the padding token, and padding changes the conditioning (all 77 positions reach the
UNet), so the caller names it: SD1 and SDXL's first encoder pad with ``<|endoftext|>`` (id 49407), OpenCLIP
encoders (SD2, SDXL's second) with ``!`` (id 0).
"""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tokenizer" / "clip"
PAD_ENDOFTEXT = "<|endoftext|>"
PAD_EXCLAMATION = "!"


def load_clip_tokenizer(pad: str) -> CLIPTokenizer:
    """A fresh 77-token CLIP tokenizer padding with ``pad`` (``"<|endoftext|>"`` or ``"!"``)."""
    if pad not in (PAD_ENDOFTEXT, PAD_EXCLAMATION):
        raise ValueError(f"pad must be {PAD_ENDOFTEXT!r} or {PAD_EXCLAMATION!r}, not {pad!r}")
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token=pad, local_files_only=True)
