"""Reading images as people have them (rotated phone photos, CMYK, palettes, 16-bit scans): one reader for
preparation and training, so a photo is upright and in sRGB whichever of them reads it."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageCms, ImageOps

# The most pixels an input image may have (8192x8192, 256 MB decoded as RGB), checked from the header before any
# pixel is decoded: a small PNG can declare a huge image. hypernet.settings.limits publishes it with the other caps.
MAX_DECODED_PIXELS = 8192 * 8192

# Modes whose pixels carry more than 8 bits; Pillow's own convert("RGB") clips them instead of scaling.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def open_image(path: Path) -> Image.Image:
    """Decode ``path`` fully, upright (EXIF orientation applied), as RGB, or RGBA when it has transparency.

    Alpha is kept because training's ``use_weight`` reads it as a loss weight; an alpha channel that is opaque
    everywhere is dropped, since it carries no weight information. Colours are converted to sRGB when the file
    embeds an ICC profile (CMYK print files, Display P3 phone photos).

    Raises whatever Pillow raises for an unreadable file (``OSError``, ``SyntaxError``, ``ValueError``), and
    Pillow's ``DecompressionBombError`` for an image above :data:`MAX_DECODED_PIXELS`.
    """
    with Image.open(path) as im:
        width, height = im.size
        if width * height > MAX_DECODED_PIXELS:
            raise Image.DecompressionBombError(f"{width}x{height} is {width * height:,} pixels; images of at most "
                                               f"{MAX_DECODED_PIXELS:,} pixels are read")
        im.load()
        upright = ImageOps.exif_transpose(im)
    return to_working_mode(upright)


def to_working_mode(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB or RGBA, scaling 16-bit and float greyscale down to 8 bits."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit_grey(im)
    has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    mode = "RGBA" if has_alpha else "RGB"
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            im = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode=mode) or im
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: keep the numbers as they are, like every viewer that ignores it
    im = im.convert(mode)
    if mode == "RGBA" and im.getchannel("A").getextrema()[0] == 255:
        im = im.convert("RGB")
    return im


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    import numpy as np  # here: the command line reads MAX_DECODED_PIXELS and should not pay for numpy

    pixels = np.asarray(im).astype(np.float32)
    peak = float(pixels.max()) if pixels.size else 0.0
    if im.mode == "F" and peak <= 1.0:
        scale = 255.0  # float images in 0..1
    elif im.mode == "I" and peak <= 255:
        scale = 1.0  # 32-bit container holding 8-bit values
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8), "L")
