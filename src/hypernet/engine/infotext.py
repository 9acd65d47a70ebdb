"""A1111's infotext: the generation parameters every image carries, so that A1111 and its tools can read ours.

The text is the prompt (with its ``<hypernet:…>`` tags), an optional ``Negative prompt: …`` line, and one line of
``Key: value`` pairs::

    a castle <hypernet:anime:0.8>
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: …

PNG files keep it in the text chunk ``parameters``; JPEG and WebP files in the EXIF UserComment.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Mapping
from typing import Any

from PIL import ExifTags, Image, PngImagePlugin

from hypernet.errors import HypernetError
from hypernet.fileio import atomic_write_bytes

# One "Key: value" item of the parameters line. A key starts with a word character and is at least two characters
# long; a value is either a JSON string in double quotes or everything up to the next comma.
_PARAM = re.compile(
    r"""\s*
    (?P<key>\w[\w \-/]+) : \s*
    (?P<value> "(?:\\.|[^\\"])+" | [^,]* )
    (?:,|$)""",
    re.VERBOSE,
)
_SIZE = re.compile(r"(\d+)x(\d+)")
_NEGATIVE = "Negative prompt:"

# EXIF UserComment starts with 8 bytes naming its character code.
_COMMENT_CODES = {b"UNICODE\0": "utf-16-be", b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis"}

# Pillow's image.info entries that describe the file rather than the generation; A1111's png-info drops them.
_FILE_INFO_KEYS = frozenset(
    {
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
    }
)

_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Write the infotext A1111 would write for these values.

    ``params`` keeps its order (A1111's is Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model,
    …). None values are left out, and a value equal to its key is written as the bare key. Values holding a comma,
    colon or newline are written as JSON strings, like A1111; so are values starting with a double quote, which
    A1111 would otherwise read back without their quotes.
    """
    items = [key if key == value else f"{key}: {_quote(value)}" for key, value in params.items() if value is not None]
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(items)}".strip()


def parse_infotext(text: str) -> dict[str, Any]:
    """Read an infotext the way A1111's "PNG Info" and ``/sdapi/v1/png-info`` do.

    Returns the ``Key: value`` pairs as strings, plus ``"Prompt"`` and ``"Negative prompt"`` (both may span
    lines). A value like ``512x512`` comes split instead, as ``"Size-1"``/``"Size-2"`` (for any key). The last line
    counts as parameters only when it holds at least three pairs; otherwise it is part of the prompt. An old
    ``Hypernet: X`` field (before January 2023) turns into ``<hypernet:X:S>`` appended directly to the prompt,
    with ``S`` from ``Hypernet strength`` (default ``1.0``).
    """
    *lines, last = text.strip().split("\n")
    if len(list(_PARAM.finditer(last))) < 3:
        lines.append(last)
        last = ""

    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE) :].strip()
        if in_negative:
            negative = f"{negative}\n{line}" if negative else line
        else:
            prompt = f"{prompt}\n{line}" if prompt else line

    result: dict[str, Any] = {}
    for match in _PARAM.finditer(last):
        key, value = match["key"], match["value"]
        if not value:
            continue  # A1111 skips a key with an empty value
        value = _unquote(value)
        size = _SIZE.fullmatch(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.groups()
        else:
            result[key] = value

    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    if "Hypernet" in result:
        result["Prompt"] += f"<hypernet:{result['Hypernet']}:{result.get('Hypernet strength', '1.0')}>"
    return result


def image_bytes(image: Image.Image, infotext: str | None, image_format: str = "png", quality: int = 80) -> bytes:
    """Encode ``image`` as PNG, JPEG or WebP with ``infotext`` embedded where A1111 puts it.

    ``quality`` applies to JPEG and WebP (A1111's default is 80). JPEG drops any alpha channel.
    """
    pil_format = _FORMATS.get(image_format.lower().lstrip("."))
    if pil_format is None:
        raise HypernetError(f'image format "{image_format}" is not supported; expected png, jpg, jpeg or webp.')
    options: dict[str, Any] = {}
    if pil_format == "PNG":
        if infotext is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", infotext)  # tEXt, or iTXt when the text is not Latin-1
            options["pnginfo"] = info
    else:
        options["quality"] = quality
        if pil_format == "JPEG" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        if infotext is not None:
            options["exif"] = _exif_with_user_comment(infotext)
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | os.PathLike[str], infotext: str | None, quality: int = 80) -> None:
    """Write ``image`` with its infotext to ``path`` atomically; the format follows the file extension."""
    extension = os.path.splitext(os.fspath(path))[1]
    atomic_write_bytes(path, image_bytes(image, infotext, extension or "png", quality))


def read_infotext(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """The infotext stored in an opened image, and its other info entries, as A1111's png-info reports them.

    Looks in the PNG ``parameters`` chunk, then the EXIF UserComment (JPEG, WebP), then a GIF/JPEG comment.
    Returns None when the image carries none.
    """
    items = dict(image.info or {})
    infotext = items.pop("parameters", None)
    if "exif" in items:
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
        if comment:
            infotext = _decode_user_comment(comment) or infotext
    elif "comment" in items:
        comment = items["comment"]
        infotext = comment.decode("utf-8", errors="ignore") if isinstance(comment, bytes) else comment
    for key in _FILE_INFO_KEYS:
        items.pop(key, None)
    return infotext, items


def _quote(value: Any) -> str:
    text = str(value)
    if "," in text or "\n" in text or ":" in text or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _exif_with_user_comment(text: str) -> bytes:
    """A minimal EXIF block: IFD0 points to an Exif IFD holding only UserComment, typed UNDEFINED.

    Written by hand because Pillow types a bytes value as BYTE, which A1111's reader (piexif) cannot decode.
    """
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    exif_ifd_offset = 8 + 2 + 12 + 4  # TIFF header, then IFD0 with one entry and no next IFD
    comment_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"MM\0\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">HHHIII", 1, ExifTags.IFD.Exif, 4, 1, exif_ifd_offset, 0)  # LONG pointer
    tiff += struct.pack(">HHHIII", 1, ExifTags.Base.UserComment, 7, len(comment), comment_offset, 0)  # UNDEFINED
    return b"Exif\0\0" + tiff + comment


def _decode_user_comment(comment: bytes | str) -> str:
    if isinstance(comment, str):
        return comment
    encoding = _COMMENT_CODES.get(comment[:8])
    if encoding is not None:
        try:
            return comment[8:].decode(encoding)
        except UnicodeDecodeError:
            pass
    return comment.decode("utf-8", errors="ignore").strip("\0")
