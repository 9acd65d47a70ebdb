"""What a training run leaves on disk, where A1111 users look for it:

    <log_directory>/<YYYY-MM-DD>/<name>/
        hypernetworks/<name>-<step>.pt (+ .pt.optim)   snapshots, every save_hypernetwork_every steps
        images/<name>-<step>.png                       previews with infotext, every create_image_every steps
        hypernetwork_loss.csv                          step,epoch,epoch_step,loss,learn_rate
        settings-<YYYY-MM-DD-HH-MM-SS>.json            the run's parameters
        loss.png                                       hypernet: the loss curve of the run
        contact_sheet.png                              hypernet: every preview of the folder, by step
        tensorboard/                                   optional

Every file is written atomically (a temporary file renamed over the target) or, for the CSV, appended with one
``write`` per row, so a process killed at any moment leaves no half-written file behind.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from hypernet.engine.infotext import save_image
from hypernet.errors import HypernetError
from hypernet.fileio import atomic_write_bytes

CSV_NAME = "hypernetwork_loss.csv"
HEALTH_CSV = "health.csv"  # hypernet.train.health's figures of every snapshot
CSV_FIELDS = ("step", "epoch", "epoch_step", "loss", "learn_rate")


class RunOutputs:
    """The log folder of one run (main process only)."""

    def __init__(
        self,
        log_directory: str | os.PathLike[str],
        name: str,
        started: datetime,
        *,
        snapshots: bool,
        images: bool,
        csv_every: int,
        tensorboard: bool = False,
        tensorboard_images: bool = False,
        tensorboard_flush_secs: int = 120,
        root: Path | None = None,
    ) -> None:
        self.name = name
        self.started = started
        # ``root``: an interrupted run's folder, which its continuation carries on in
        self.root = root or run_folder(log_directory, name, started)
        self.snapshots = self.root / "hypernetworks"
        self.images = self.root / "images"
        self.csv_every = csv_every
        for folder, wanted in ((self.root, True), (self.snapshots, snapshots), (self.images, images)):
            if wanted:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise HypernetError(f"{folder}: cannot create the log folder ({e.strerror or e}); check log_directory.") from None
        self._remove_stale_temporaries()
        self.tensorboard = _tensorboard(self.root / "tensorboard", tensorboard_flush_secs) if tensorboard else None
        self.tensorboard_images = tensorboard_images

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of a killed earlier run of this network (never a finished file)."""
        for folder in (self.root, self.snapshots, self.images):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    if path.name.startswith((f".{self.name}", ".settings-", ".loss.png", ".contact_sheet.png")):
                        path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------- files
    def write_settings(self, settings: dict[str, Any]) -> Path:
        path = self.root / f"settings-{self.started.strftime('%Y-%m-%d-%H-%M-%S')}.json"
        atomic_write_bytes(path, json.dumps(settings, indent=4, default=str).encode())
        return path

    def log_loss(self, step: int, steps_per_epoch: int, loss: float, learn_rate: float) -> None:
        """A1111's CSV row, written when ``step`` is a multiple of ``training_write_csv_every``; the header only
        when the file is new (a second run on the same day appends)."""
        if not self.csv_every or step % self.csv_every:
            return
        path = self.root / CSV_NAME
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
        if not path.exists() or path.stat().st_size == 0:
            writer.writeheader()
        writer.writerow({
            "step": step,
            "epoch": (step - 1) // steps_per_epoch,
            "epoch_step": (step - 1) % steps_per_epoch,
            "loss": f"{loss:.7f}",
            "learn_rate": learn_rate,
        })
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, buffer.getvalue().encode())  # one write: a kill never leaves half a row
        finally:
            os.close(fd)

    def drop_rows_after(self, step: int) -> int:
        """Resuming at ``step`` in this folder: remove the CSV's last rows with a later step (the interrupted run
        wrote them after the snapshot it resumes from, and they are about to be written again), so every step has
        one row. Earlier runs' rows above them stay. Returns how many rows were dropped; the file is replaced
        atomically."""
        path = self.root / CSV_NAME
        if not path.is_file():
            return 0
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = len(lines)
        while keep > 1 and _row_step(lines[keep - 1]) is not None and _row_step(lines[keep - 1]) > step:  # type: ignore[operator]
            keep -= 1
        if keep == len(lines):
            return 0
        atomic_write_bytes(path, "".join(lines[:keep]).encode())
        return len(lines) - keep

    def snapshot_path(self, step: int) -> Path:
        return self.snapshots / f"{self.name}-{step}.pt"

    def save_preview(self, image: Image.Image, infotext: str, step: int) -> Path:
        path = self.images / f"{self.name}-{step}.png"
        save_image(image, path, infotext)
        if self.tensorboard is not None and self.tensorboard_images:
            import numpy as np

            self.tensorboard.add_image("preview", np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self.write_contact_sheet()
        return path

    def previews(self) -> list[tuple[int, Path]]:
        """This network's preview images in the folder (this run's and earlier ones of the day), by step."""
        pattern = re.compile(rf"{re.escape(self.name)}-(\d+)\.png")
        found = [(int(m.group(1)), p) for p in self.images.glob("*.png") if (m := pattern.fullmatch(p.name))]
        return sorted(found)

    def write_contact_sheet(self, marked: int | None = None) -> Path | None:
        """All previews by step; ``marked`` (the recommended snapshot's step) frames the preview made there, or
        the last one before it."""
        entries = self.previews()
        if not entries:
            return None
        path = self.root / "contact_sheet.png"
        save_image(contact_sheet(entries, title=self.name, marked=marked), path, None)
        return path

    def write_loss_curve(self, losses: Sequence[tuple[int, float]]) -> Path | None:
        if len(losses) < 2:
            return None
        path = self.root / "loss.png"
        save_image(loss_curve(losses, title=f"{self.name}: loss by step"), path, None)
        return path

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def made_files(root: Path) -> list[str]:
    """What a run folder holds, naming only what exists (a run with previews or snapshots off made none)."""
    made = []
    for folder, suffix, what in (("hypernetworks", ".pt", "snapshots"), ("images", ".png", "previews")):
        count = sum(1 for _ in (root / folder).glob(f"*{suffix}")) if (root / folder).is_dir() else 0
        if count:
            made.append(f"{count} {what if count > 1 else what[:-1]} in {folder}/")
    return made + [name for name in (CSV_NAME, "loss.png", "contact_sheet.png", HEALTH_CSV) if (root / name).is_file()]


def run_folder(log_directory: str | os.PathLike[str], name: str, started: datetime) -> Path:
    """``<log_directory>/<YYYY-MM-DD>/<name>``, A1111's folder for a run started then."""
    return Path(log_directory) / started.strftime("%Y-%m-%d") / name


def snapshot_step(path: Path, name: str) -> int | None:
    """The step in a snapshot's file name ``<name>-<step>.pt``, or None for any other file."""
    match = re.fullmatch(rf"{re.escape(name)}-(\d+)\.pt", path.name)
    return int(match.group(1)) if match else None


def snapshots_of(log_directory: str | os.PathLike[str], name: str) -> list[tuple[int, Path]]:
    """Every snapshot of ``name`` under the log folder (all dates), newest step first."""
    root = Path(log_directory)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.glob(f"*/{glob.escape(name)}/hypernetworks/*.pt")
             if (step := snapshot_step(p, name)) is not None]
    return sorted(found, key=lambda item: (item[0], item[1].stat().st_mtime), reverse=True)


def _row_step(line: str) -> int | None:
    head = line.split(",", 1)[0].strip()
    return int(head) if head.isdigit() else None


def _tensorboard(folder: Path, flush_secs: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise HypernetError(
            "training_enable_tensorboard needs the tensorboard package; install it with: pip install tensorboard."
        ) from None
    return SummaryWriter(log_dir=str(folder), flush_secs=flush_secs)


# ================================================================================================ drawings
_INK, _GRID, _RAW, _MEAN = (30, 30, 30), (225, 225, 225), (170, 190, 215), (20, 70, 160)
_MARK = (20, 150, 60)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def moving_average(values: Sequence[float]) -> tuple[int, list[float]]:
    """(window, trailing means): a window of ~2% of the run, but at least 5 steps (a quarter of a short run), so
    the trend shows through the per-step noise of small runs too. loss.png and the web UI's chart both use it."""
    window = max(1, min(len(values) // 4, max(5, len(values) // 50)))
    return window, [sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(values))]


def loss_curve(losses: Sequence[tuple[int, float]], *, title: str = "loss", size: tuple[int, int] = (960, 480)) -> Image.Image:
    """The per-step loss (light) and its moving average (dark) against the step."""
    width, height = size
    left, right, top, bottom = 80, 20, 40, 50
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    window, mean = moving_average(values)
    ordered = sorted(values)
    low, high = ordered[0], ordered[min(len(ordered) - 1, math.ceil(0.99 * (len(ordered) - 1)))]  # spikes clip
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.01
    first, last = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1

    def xy(step: int, value: float) -> tuple[float, float]:
        x = left + (step - first) / (last - first) * (width - left - right)
        y = top + (1 - (min(max(value, low), high) - low) / (high - low)) * (height - top - bottom)
        return x, y

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    for i in range(5):
        value = low + (high - low) * i / 4
        y = xy(first, value)[1]
        draw.line([(left, y), (width - right, y)], fill=_GRID)
        draw.text((left - 8, y), f"{value:.4g}", fill=_INK, font=small, anchor="rm")
    for i in range(5):
        step = round(first + (last - first) * i / 4)
        x = xy(step, low)[0]
        draw.line([(x, top), (x, height - bottom)], fill=_GRID)
        draw.text((x, height - bottom + 8), str(step), fill=_INK, font=small, anchor="mt")
    draw.line([xy(s, v) for s, v in losses], fill=_RAW, width=1)
    draw.line([xy(s, v) for s, v in zip(steps, mean)], fill=_MEAN, width=2)
    draw.rectangle([left, top, width - right, height - bottom], outline=_INK)
    draw.text((left, 12), title, fill=_INK, font=font)
    draw.text((width - right, 12), f"moving average of {window}" if window > 1 else "", fill=_MEAN, font=small, anchor="ra")
    draw.text(((left + width - right) / 2, height - 18), "step", fill=_INK, font=small, anchor="mm")
    return image


def contact_sheet(entries: Sequence[tuple[int, Path]], *, title: str = "", thumb: int = 256, columns: int = 8,
                  marked: int | None = None) -> Image.Image:
    """The preview images side by side in step order, each labelled with its step, to pick the last good one; the
    preview at (or last before) step ``marked`` is framed and labelled "recommended".
    Cells fit the previews (at most ``thumb``); tiny previews (the toy model's 64 px) are enlarged by a whole factor
    with hard pixel edges to at least 128 px, so the sheet is pictures, not white space."""
    before = [step for step, _ in entries if marked is not None and step <= marked]
    marked = before[-1] if before else None
    images: list[tuple[int, Image.Image]] = []
    for step, path in entries:
        try:
            with Image.open(path) as image:
                images.append((step, image.convert("RGB")))
        except (OSError, ValueError):
            continue  # a preview being replaced right now
    largest = max((max(image.size) for _, image in images), default=thumb)
    cell = min(thumb, max(largest * max(1, math.ceil(128 / largest)), 128))
    columns = max(1, min(columns, len(images) or 1, math.ceil(math.sqrt(max(len(images), 1) * 2))))
    rows = max(1, math.ceil(len(images) / columns))
    label, head = 22, 34 if title else 0
    sheet = Image.new("RGB", (columns * cell, head + rows * (cell + label)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    if title:
        draw.text((8, 8), title, fill=_INK, font=_font(18))
    for i, (step, image) in enumerate(images):
        x, y = (i % columns) * cell, head + (i // columns) * (cell + label)
        factor = cell // max(image.size)
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        else:
            image.thumbnail((cell, cell))
        sheet.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
        if step == marked:
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell + label - 2], outline=_MARK, width=4)
        text = f"step {step} - recommended" if step == marked else f"step {step}"
        draw.text((x + cell / 2, y + cell + 3), text, fill=_MARK if step == marked else _INK, font=font, anchor="mt")
    return sheet
