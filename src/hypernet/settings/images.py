"""Opening user images within the limits: the size is read from the header and checked before any pixel is decoded.

A 258 KB PNG can declare 9000x9000 pixels (324 MB decoded); every path that decodes a user's image (img2img init
images, PNG info, ``--init-image``) opens it here, so the cap in :mod:`hypernet.settings.limits` holds everywhere.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hypernet.errors import HypernetError
from hypernet.settings.limits import MAX_INPUT_PIXELS


def open_image(source: Path | bytes, what: str, *, load: bool = True) -> Image.Image:
    """The image at ``source`` (a path or the file's bytes); a sentence naming ``what`` if it is missing,
    unreadable, or larger than ``MAX_INPUT_PIXELS`` according to its header."""
    if isinstance(source, Path):
        if not source.exists():
            raise HypernetError(f"{what} {source}: no such file.")
        if source.is_dir():
            raise HypernetError(f"{what} {source}: is a folder; expected an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides, below
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError:  # PIL's own ceiling (twice its warning size) is far above ours
        raise HypernetError(f"{what}: the image has more than {MAX_INPUT_PIXELS:,} pixels; smaller images are "
                            "accepted.") from None
    except (UnidentifiedImageError, OSError, ValueError):
        where = what if isinstance(source, bytes) else f"{what} {source}"
        raise HypernetError(f"{where}: not a readable image (PNG, JPEG, WebP...).") from None
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        image.close()
        raise HypernetError(f"{what} is {width}x{height} ({width * height:,} pixels); images of at most "
                            f"{MAX_INPUT_PIXELS:,} pixels are accepted.")
    if load:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            where = what if isinstance(source, bytes) else f"{what} {source}"
            raise HypernetError(f"{where}: the image data is damaged or truncated.") from None
    return image
