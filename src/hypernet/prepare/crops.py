"""A1111's geometric steps: crop-and-resize, splitting oversized images into tiles, the auto-sized crop, flips.

The arithmetic (integer divisions, float steps, filters) follows A1111 so outputs have the same sizes and offsets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import Image, ImageOps

from hypernet.prepare.options import Objective


def crop_and_resize(im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's "crop and resize": scale with LANCZOS until the image covers ``width x height``, keep the centre."""
    if width / height > im.width / im.height:
        scaled = (width, im.height * width // im.width)
    else:
        scaled = (im.width * height // im.height, height)
    resized = im.resize(scaled, Image.Resampling.LANCZOS)
    left = scaled[0] // 2 - width // 2
    top = scaled[1] // 2 - height // 2
    return resized.crop((left, top, left + width, top + height))


def split_ratio(size: tuple[int, int], width: int, height: int) -> float:
    """How much of the long side a ``width x height`` tile covers after fitting the short side (1 = same shape)."""
    w, h = size
    if h > w:
        return (w * height) / (h * width)
    return (h * width) / (w * height)


def split_tiles(im: Image.Image, width: int, height: int, overlap_ratio: float) -> list[Image.Image]:
    """Fit the short side to the target, then cut overlapping tiles evenly along the long side (A1111's split).

    Portrait images are tiled top to bottom, others left to right. The count is
    ``ceil((L - t*overlap) / (t*(1 - overlap)))`` for long side ``L`` and tile length ``t``.
    """
    portrait = im.height > im.width
    if portrait:
        length, tile = im.height * width // im.width, height
        im = im.resize((width, length), Image.Resampling.BICUBIC)
    else:
        length, tile = im.width * height // im.height, width
        im = im.resize((length, height), Image.Resampling.BICUBIC)
    count = math.ceil((length - tile * overlap_ratio) / (tile * (1.0 - overlap_ratio)))
    # A short side that only just rounds down to the target leaves room for one tile (A1111 divides by zero).
    step = (length - tile) / (count - 1) if count > 1 else 0.0
    tiles = []
    for i in range(count):
        offset = int(step * i)
        box = (0, offset, width, offset + tile) if portrait else (offset, 0, offset + tile, height)
        tiles.append(im.crop(box))
    return tiles


def auto_size(
    size: tuple[int, int],
    min_dim: int,
    max_dim: int,
    min_area: int,
    max_area: int,
    objective: Objective,
    threshold: float,
) -> tuple[int, int] | None:
    """The output size of the auto-sized crop, or None when no size is within the error threshold.

    Candidates step by 64 from ``min_dim``; the aspect error is ``1 - min(r, 1/r)`` with ``r`` the ratio of the
    image's aspect to the candidate's.
    """
    iw, ih = size

    def error(w: int, h: int) -> float:
        r = iw / ih / (w / h)
        return 1 - min(r, 1 / r)

    candidates = [
        (w, h)
        for w in range(min_dim, max_dim + 1, 64)
        for h in range(min_dim, max_dim + 1, 64)
        if min_area <= w * h <= max_area and error(w, h) <= threshold
    ]
    if not candidates:
        return None
    if objective is Objective.MAXIMIZE_AREA:
        return max(candidates, key=lambda wh: (wh[0] * wh[1], -error(*wh)))
    return max(candidates, key=lambda wh: (-error(*wh), wh[0] * wh[1]))


def centre_crop_resize(im: Image.Image, width: int, height: int) -> Image.Image:
    """Cut the largest centred region with the target's aspect (sub-pixel exact) and LANCZOS it to the target."""
    iw, ih = im.size
    if ih / height < iw / width:
        margin = (iw - width * ih / height) / 2
        box = (margin, 0.0, iw - margin, float(ih))
    else:
        margin = (ih - height * iw / width) / 2
        box = (0.0, margin, float(iw), ih - margin)
    return im.resize((width, height), Image.Resampling.LANCZOS, box=box)


def flips(horizontal: bool, vertical: bool, both: bool) -> list[Callable[[Image.Image], Image.Image]]:
    """The flipped copies to save after each image, in A1111's order: horizontal, vertical, both axes."""
    chosen: list[Callable[[Image.Image], Image.Image]] = []
    if horizontal:
        chosen.append(ImageOps.mirror)
    if vertical:
        chosen.append(ImageOps.flip)
    if both:
        chosen.append(_rotate_180)
    return chosen


def _rotate_180(im: Image.Image) -> Image.Image:
    return im.transpose(Image.Transpose.ROTATE_180)
