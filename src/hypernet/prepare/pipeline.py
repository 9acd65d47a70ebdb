"""``preprocess``: a folder of photos in, a training set of PNGs and captions out, named as A1111 names them.

The image work (decode, crop, detect, encode) runs in worker processes; captioning models run once, in this
process, on the images the workers wrote, while the workers go on with the next files.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import cv2
from PIL import Image

from hypernet.errors import HypernetError
from hypernet.fileio import atomic_write_bytes
from hypernet.prepare.captions import Captioner, combine
from hypernet.prepare.crops import auto_size, centre_crop_resize, crop_and_resize, flips, split_ratio, split_tiles
from hypernet.prepare.focal import FocalSettings, check_face_model, focal_crop
from hypernet.prepare.images import on_white, open_image, save_png
from hypernet.prepare.options import PreprocessOptions

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class PreprocessReport:
    """What a run wrote and what it could not use, for the CLI to print and the HTTP API to return."""

    images: list[Path] = field(default_factory=list)
    captions: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False


@dataclass
class _Output:
    path: Path
    caption: bool  # False for focal-crop debug images, which are not training images


@dataclass
class _SourceResult:
    outputs: list[_Output] = field(default_factory=list)
    existing_caption: str | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None


def preprocess(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: PreprocessOptions | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PreprocessReport:
    """Turn every image directly in ``src`` into ``options.width x options.height`` PNGs (and captions) in ``dst``.

    Outputs are named ``{index:05}-{subindex}-{source stem}.png`` as A1111 names them, where ``index`` is the
    file's position in ``src`` (sorted by name; every entry counts, images or not) and ``subindex`` counts that
    file's outputs. Source files are only read. ``progress(done, total)`` is called once the folders are checked
    and the captioning models loaded, then after each source file;
    ``should_stop()`` returning True ends the run early (``report.interrupted``).
    """
    options = options or PreprocessOptions()
    src_dir, dst_dir = _check_folders(Path(src), Path(dst))
    if options.focal_crop and options.face_model is not None:
        check_face_model(options.face_model)
    captioner = Captioner(options) if options.caption_blip or options.caption_tagger else None
    jobs = [(index, src_dir / name) for index, name in enumerate(sorted(os.listdir(src_dir)))]
    dst_dir.mkdir(parents=True, exist_ok=True)
    workers = min(options.workers or _usable_cores(), max(len(jobs), 1))

    report = PreprocessReport()
    if progress:
        progress(0, len(jobs))
    with _Workers(workers) as pool:
        for done, ((_, path), result) in enumerate(pool.map(_process_source, jobs, dst_dir, options), start=1):
            if result.skipped:
                report.skipped.append(SkippedFile(path, result.skipped))
            report.warnings.extend(result.warnings)
            report.images.extend(out.path for out in result.outputs)
            report.captions.extend(_write_captions(result, options, captioner))
            if progress:
                progress(done, len(jobs))
            if should_stop and should_stop():
                report.interrupted = done < len(jobs)
                break
    return report


def _check_folders(src: Path, dst: Path) -> tuple[Path, Path]:
    if not src.is_dir():
        raise HypernetError(f"source folder {src} does not exist or is not a folder")
    src, dst = src.resolve(), dst.resolve()
    if src == dst:
        raise HypernetError(f"destination {dst} is the source folder; choose another folder for the training set")
    if dst.exists() and not dst.is_dir():
        raise HypernetError(f"destination {dst} is a file; expected a folder (it is created if missing)")
    return src, dst


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_captions(result: _SourceResult, options: PreprocessOptions, captioner: Captioner | None) -> list[Path]:
    targets = [out.path for out in result.outputs if out.caption]
    if not targets or (captioner is None and not result.existing_caption):
        return []
    if captioner is None:
        generated = [""] * len(targets)
    else:
        images = []
        for path in targets:
            with Image.open(path) as im:
                images.append(on_white(im))
        generated = captioner(images)
    written = []
    for path, text in zip(targets, generated):
        caption = combine(text, result.existing_caption, options.existing_caption)
        if caption:
            atomic_write_bytes(path.with_suffix(".txt"), caption.encode("utf-8"))
            written.append(path.with_suffix(".txt"))
    return written


def _process_source(index: int, path: Path, dst: Path, options: PreprocessOptions) -> _SourceResult:
    """Everything A1111 does to one source file, in its order: split, focal crop, auto-sized crop, original, default."""
    result = _SourceResult()
    if path.suffix.lower() == ".txt":
        return result  # captions are read with their image
    if path.is_dir():
        result.skipped = "a folder (only files directly in the source folder are used)"
        return result
    try:
        im = open_image(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        result.skipped = f"not a readable image ({_reason(e)})"
        return result

    caption_file = path.with_suffix(".txt")
    if caption_file.is_file():
        try:
            result.existing_caption = caption_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            result.warnings.append(f"{caption_file.name}: not UTF-8 text; the existing caption was ignored")

    width, height = options.width, options.height
    transforms = flips(options.flip, options.flip_vertical, options.flip_both)
    upscaled = False

    def save(image: Image.Image, training: bool = True) -> None:
        # Training images get their flipped copies and captions; each file takes the next subindex.
        copies = [image, *(flip(image) for flip in transforms)] if training else [image]
        for copy in copies:
            out = dst / f"{index:05}-{len(result.outputs)}-{path.stem}.png"
            save_png(copy, out)
            result.outputs.append(_Output(out, caption=training))

    ratio = split_ratio(im.size, width, height)
    if options.split and ratio < 1.0 and ratio <= options.split_threshold:
        upscaled |= (im.width < width) if im.height > im.width else (im.height < height)
        for tile in split_tiles(im, width, height, options.overlap_ratio):
            save(tile)
    if options.focal_crop and im.width != im.height:
        settings = FocalSettings(width, height, options.focal_face_weight, options.focal_entropy_weight,
                                 options.focal_edges_weight, options.face_model)
        focal = focal_crop(im, settings, debug=options.focal_debug)
        upscaled |= focal.scale > 1
        save(focal.crop)
        if focal.debug is not None:
            save(focal.debug, training=False)
    if options.multicrop:
        size = auto_size(im.size, options.multicrop_min_dim, options.multicrop_max_dim, options.multicrop_min_area,
                         options.multicrop_max_area, options.multicrop_objective, options.multicrop_threshold)
        if size is None:
            result.warnings.append(
                f"{path.name}: skipped by the auto-sized crop, no size within the error threshold fits "
                f"{im.width}x{im.height}"
            )
        else:
            upscaled |= size[0] > im.width or size[1] > im.height
            save(centre_crop_resize(im, *size))
    if options.keep_original_size:
        save(im)
    if not (options.multicrop or options.keep_original_size or result.outputs):
        upscaled |= im.width < width or im.height < height
        save(crop_and_resize(im, width, height))
    if upscaled:
        result.warnings.append(f"{path.name}: {im.width}x{im.height} is smaller than the target, so it was upscaled")
    return result


def _reason(error: Exception) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not a format Pillow can read"
    return str(error) or type(error).__name__


class _Workers:
    """Runs source files in worker processes (or inline for one worker), yielding results in file order."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Workers:
        if self.count > 1:
            # Workers come from a fresh server process, never forked from this one: this process may hold
            # threads (a web server, torch, OpenCV's pool) whose locks a forked child would inherit mid-use.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload([__name__])  # imported once in the server, not in every worker
            self.pool = ProcessPoolExecutor(self.count, mp_context=context, initializer=_init_worker)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(
        self, fn: Callable[..., _SourceResult], jobs: Iterable[tuple[int, Path]], *args: object
    ) -> Iterator[tuple[tuple[int, Path], _SourceResult]]:
        if self.pool is None:
            for job in jobs:
                yield job, fn(*job, *args)
            return
        # A bounded window of submitted jobs keeps memory flat and lets should_stop() end the run quickly.
        todo = iter(jobs)
        pending: deque[tuple[tuple[int, Path], Future[_SourceResult]]] = deque()
        for job in islice(todo, 2 * self.count):
            pending.append((job, self.pool.submit(fn, *job, *args)))
        while pending:
            job, future = pending.popleft()
            upcoming = next(todo, None)
            if upcoming is not None:
                pending.append((upcoming, self.pool.submit(fn, *upcoming, *args)))
            yield job, future.result()


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the processes already use every core; OpenCV's own threads would only compete
