"""A1111's grid pictures: cells in rows on white, axis labels above the columns and left of the rows.

Sizes follow A1111 v1.10 (``images.image_grid`` / ``draw_grid_annotations``): font size ``(w + h) // 25`` of a
cell, line spacing half of it, a left band ``3/4`` of a cell wide when rows have labels, labels word-wrapped to
the cell (or band) width and shrunk a point at a time until each line fits. The font is Pillow's bundled one
(A1111 ships Roboto), so glyph widths and hence wrapping may differ slightly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = "#ffffff"
TEXT_COLOUR = "#000000"


def image_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """``images`` row by row, ``ceil(n / rows)`` columns; every slot as large as the largest image, smaller ones
    centred in theirs."""
    cols = math.ceil(len(images) / rows)
    w = max(image.width for image in images)
    h = max(image.height for image in images)
    grid = Image.new("RGB", (cols * w, rows * h), BACKGROUND)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image, (c * w + (w - image.width) // 2, r * h + (h - image.height) // 2))
    return grid


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(max(size, 1))


@dataclass
class _Line:
    text: str
    width: int
    height: int


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, room: float) -> list[str]:
    """Greedy word wrap: words join the current line while it still fits in ``room`` pixels."""
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if draw.textlength(joined, font=font) <= room:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def annotate(grid: Image.Image, cell_w: int, cell_h: int, column_labels: Sequence[str], row_labels: Sequence[str],
             margin: int = 0) -> Image.Image:
    """Add labels to a grid of ``cell_w`` x ``cell_h`` cells (one label per column and per row), with ``margin``
    pixels between cells."""
    cols, rows = grid.width // cell_w, grid.height // cell_h
    if (cols, rows) != (len(column_labels), len(row_labels)):
        raise ValueError(f"{cols}x{rows} cells but {len(column_labels)} column and {len(row_labels)} row labels")
    size = (cell_w + cell_h) // 25
    spacing = size // 2
    font = _font(size)
    pad_left = cell_w * 3 // 4 if any(row_labels) else 0
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def lines_of(label: str, room: float) -> list[_Line]:
        out = []
        for text in _wrap(measure, label, font, room):
            box = measure.multiline_textbbox((0, 0), text, font=font)
            out.append(_Line(text, box[2] - box[0], box[3] - box[1]))
        return out

    columns = [lines_of(label, cell_w) for label in column_labels]
    row_lines = [lines_of(label, pad_left) for label in row_labels]
    column_heights = [sum(line.height + spacing for line in lines) - spacing for lines in columns]
    row_heights = [sum(line.height for line in lines) for lines in row_lines]
    pad_top = max(column_heights) + 2 * spacing if sum(column_heights) > 0 else 0

    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1),
                               grid.height + pad_top + margin * (rows - 1)), BACKGROUND)
    for r in range(rows):
        for c in range(cols):
            cell = grid.crop((c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h))
            result.paste(cell, (pad_left + (cell_w + margin) * c, pad_top + (cell_h + margin) * r))
    draw = ImageDraw.Draw(result)

    def write(x: float, y: float, lines: list[_Line], room: float) -> None:
        for line in lines:
            fitted, points = font, size
            while measure.multiline_textbbox((0, 0), line.text, font=fitted)[2] > room and points > 1:
                points -= 1
                fitted = _font(points)
            draw.multiline_text((x, y + line.height / 2), line.text, font=fitted, fill=TEXT_COLOUR, anchor="mm",
                                align="center")
            y += line.height + spacing

    for c, lines in enumerate(columns):
        write(pad_left + (cell_w + margin) * c + cell_w / 2, pad_top / 2 - column_heights[c] / 2, lines, cell_w)
    for r, lines in enumerate(row_lines):
        write(pad_left / 2, pad_top + (cell_h + margin) * r + cell_h / 2 - row_heights[r] / 2, lines, pad_left)
    return result
