"""Hard caps that hold on every path (CLI, Python, HTTP, UI), so that no single value can exhaust memory or time.

They sit above what A1111's own UI offers (2048x2048, 150 steps, batch 8 x 100) so that A1111-accepted requests stay
accepted, and below what would take a machine down (a 100000x100000 image is 40 GB of pixels before any model
runs). A server may set tighter limits of its own (``hypernet.server.Limits``); never looser ones.
"""

from __future__ import annotations

from typing import Final

from hypernet.imageio import MAX_DECODED_PIXELS

SEED_MAX: Final = 2**32 - 1  # A1111's seeds live in 0..2^32-1 (numpy's RandomState range); -1 means random
SEED_EXPECT: Final = f"-1 (random) or a whole number from 0 to {SEED_MAX}"

MIN_SIDE: Final = 8  # one latent pixel
MAX_SIDE: Final = 8192
MAX_PIXELS: Final = 2048 * 2048  # per generated, previewed or training image (A1111's UI maximum)
MAX_STEPS: Final = 500  # sampling steps: generation, hires pass and training previews
MAX_BATCH_SIZE: Final = 16
MAX_BATCH_COUNT: Final = 100
MAX_IMAGES: Final = 800  # batch size x batch count per request (A1111's UI: 8 x 100)
MAX_CFG: Final = 100.0
MAX_HR_SCALE: Final = 8.0

MAX_TRAIN_STEPS: Final = 1_000_000
MAX_TRAIN_BATCH: Final = 64
MAX_GRADIENT_STEPS: Final = 1024

MAX_NETWORK_WIDTH: Final = 4096  # SDXL's widest context is 2048; wider widths are never used by any model
MAX_NETWORK_WIDTHS: Final = 16
MAX_LAYER_ENTRIES: Final = 16
MAX_LAYER_MULTIPLIER: Final = 16.0
MAX_NETWORK_PARAMETERS: Final = 256 * 1024 * 1024  # 1 GiB of fp32 weights

MAX_PREPROCESS_SIDE: Final = 4096
# decoded images (init images, PNG info, training and preprocessing data), checked from the header
MAX_INPUT_PIXELS: Final = MAX_DECODED_PIXELS

MAX_PROMPT_CHARS: Final = 100_000
