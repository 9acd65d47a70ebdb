"""Preparation's images: read as people have them (:mod:`hypernet.imageio`), flattened on white, written as PNGs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from hypernet.fileio import atomic_open
from hypernet.imageio import open_image, to_working_mode

__all__ = ["on_white", "open_image", "save_png", "to_working_mode"]

def on_white(im: Image.Image) -> Image.Image:
    """RGB for the captioners: transparent areas become white, as taggers are trained to expect."""
    if im.mode != "RGBA":
        return im.convert("RGB")
    canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
    canvas.alpha_composite(im)
    return canvas.convert("RGB")


def save_png(im: Image.Image, path: Path) -> None:
    """Write ``im`` as PNG atomically (no half-written file if the run is stopped).

    zlib level 1: the same pixels, encoded 3-4x faster than Pillow's default level 6, for files about 8% larger.
    """
    with atomic_open(path) as fh:
        im.save(fh, format="PNG", compress_level=1)
