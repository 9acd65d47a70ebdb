"""``hypernet preprocess SRC DST``: the CLI face of :func:`hypernet.prepare.preprocess`, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hypernet.prepare.options import DEFAULT_BLIP_MODEL, DEFAULT_TAGGER_MODEL, ExistingCaption, Objective, PreprocessOptions
from hypernet.prepare.pipeline import preprocess as run_preprocess

_SIZE = "Size"
_CAPTIONS = "Captions"
_FLIPS = "Flipped copies"
_SPLIT = "Split oversized images"
_FOCAL = "Auto focal point crop"
_MULTICROP = "Auto-sized crop"
_RUN = "Run"


def preprocess(
    src: Annotated[Path, typer.Argument(help="Folder of source images (files directly in it; not searched recursively).")],
    dst: Annotated[Path, typer.Argument(help="Folder for the training set; created if missing. Must differ from SRC.")],
    width: Annotated[int, typer.Option(help="Output width.", rich_help_panel=_SIZE)] = 512,
    height: Annotated[int, typer.Option(help="Output height.", rich_help_panel=_SIZE)] = 512,
    keep_original_size: Annotated[
        bool, typer.Option("--keep-original-size", help="Also save the unresized image.", rich_help_panel=_SIZE)
    ] = False,
    existing_caption: Annotated[
        ExistingCaption,
        typer.Option(help="What to do with <source stem>.txt next to a source image.", rich_help_panel=_CAPTIONS),
    ] = ExistingCaption.IGNORE,
    caption_blip: Annotated[
        bool, typer.Option("--caption-blip", help="Caption every image with BLIP.", rich_help_panel=_CAPTIONS)
    ] = False,
    blip_model: Annotated[
        str, typer.Option(help="BLIP captioning model: a folder or a Hugging Face id.", rich_help_panel=_CAPTIONS)
    ] = DEFAULT_BLIP_MODEL,
    blip_num_beams: Annotated[int, typer.Option(help="BLIP beam count.", rich_help_panel=_CAPTIONS)] = 1,
    blip_min_length: Annotated[int, typer.Option(help="BLIP minimum length, tokens.", rich_help_panel=_CAPTIONS)] = 24,
    blip_max_length: Annotated[int, typer.Option(help="BLIP maximum length, tokens.", rich_help_panel=_CAPTIONS)] = 48,
    caption_tagger: Annotated[
        bool,
        typer.Option("--caption-tagger", "--caption-deepbooru", help="Add booru-style tags from a WD14 ONNX tagger.",
                     rich_help_panel=_CAPTIONS),
    ] = False,
    tagger_model: Annotated[
        str,
        typer.Option(help="Tagger: a folder with model.onnx and selected_tags.csv, or a Hugging Face id.",
                     rich_help_panel=_CAPTIONS),
    ] = DEFAULT_TAGGER_MODEL,
    tagger_threshold: Annotated[
        float, typer.Option(help="Lowest score for a tag to be written.", rich_help_panel=_CAPTIONS)
    ] = 0.35,
    flip: Annotated[
        bool, typer.Option("--flip", help="Also save a horizontally mirrored copy.", rich_help_panel=_FLIPS)
    ] = False,
    flip_vertical: Annotated[
        bool, typer.Option("--flip-vertical", help="Also save a vertically flipped copy.", rich_help_panel=_FLIPS)
    ] = False,
    flip_both: Annotated[
        bool, typer.Option("--flip-both", help="Also save a copy flipped on both axes.", rich_help_panel=_FLIPS)
    ] = False,
    split: Annotated[
        bool, typer.Option("--split", help="Cut images much longer than the target into overlapping tiles.",
                           rich_help_panel=_SPLIT)
    ] = False,
    split_threshold: Annotated[
        float, typer.Option(help="Split when the target covers at most this share of the long side (0-1).",
                            rich_help_panel=_SPLIT)
    ] = 0.5,
    overlap_ratio: Annotated[
        float, typer.Option(help="Overlap between neighbouring tiles (0-0.9).", rich_help_panel=_SPLIT)
    ] = 0.2,
    focal_crop: Annotated[
        bool, typer.Option("--focal-crop", help="Crop around faces and detail instead of the centre.",
                           rich_help_panel=_FOCAL)
    ] = False,
    focal_face_weight: Annotated[float, typer.Option(help="Pull of faces (0-1).", rich_help_panel=_FOCAL)] = 0.9,
    focal_entropy_weight: Annotated[
        float, typer.Option(help="Pull of the most detailed region (0-1).", rich_help_panel=_FOCAL)
    ] = 0.15,
    focal_edges_weight: Annotated[float, typer.Option(help="Pull of corners (0-1).", rich_help_panel=_FOCAL)] = 0.5,
    focal_debug: Annotated[
        bool, typer.Option("--focal-debug", help="Also save an annotated image showing why the crop was chosen.",
                           rich_help_panel=_FOCAL)
    ] = False,
    face_model: Annotated[
        Optional[Path],
        typer.Option(help="YuNet face detector (.onnx); without it OpenCV's bundled Haar cascades are used.",
                     rich_help_panel=_FOCAL),
    ] = None,
    multicrop: Annotated[
        bool, typer.Option("--multicrop", help="Crop each image to the best-fitting size within the bounds.",
                           rich_help_panel=_MULTICROP)
    ] = False,
    multicrop_min_dim: Annotated[int, typer.Option(help="Dimension lower bound.", rich_help_panel=_MULTICROP)] = 384,
    multicrop_max_dim: Annotated[int, typer.Option(help="Dimension upper bound.", rich_help_panel=_MULTICROP)] = 768,
    multicrop_min_area: Annotated[int, typer.Option(help="Area lower bound.", rich_help_panel=_MULTICROP)] = 4096,
    multicrop_max_area: Annotated[int, typer.Option(help="Area upper bound.", rich_help_panel=_MULTICROP)] = 409600,
    multicrop_objective: Annotated[
        Objective, typer.Option(help="Prefer the largest size or the closest aspect.", rich_help_panel=_MULTICROP)
    ] = Objective.MAXIMIZE_AREA,
    multicrop_threshold: Annotated[
        float, typer.Option(help="Largest aspect error allowed (0-1).", rich_help_panel=_MULTICROP)
    ] = 0.1,
    workers: Annotated[int, typer.Option(help="Worker processes; 0 = every CPU core.", rich_help_panel=_RUN)] = 0,
    device: Annotated[
        Optional[str], typer.Option(help="Device for the captioning models (default: cuda if available).",
                                    rich_help_panel=_RUN)
    ] = None,
) -> None:
    """Turn a folder of photos into a training set of WxH PNGs with captions (A1111's "Preprocess images")."""
    options = PreprocessOptions(
        width=width, height=height, existing_caption=existing_caption, keep_original_size=keep_original_size,
        flip=flip, flip_vertical=flip_vertical, flip_both=flip_both,
        split=split, split_threshold=split_threshold, overlap_ratio=overlap_ratio,
        focal_crop=focal_crop, focal_face_weight=focal_face_weight, focal_entropy_weight=focal_entropy_weight,
        focal_edges_weight=focal_edges_weight, focal_debug=focal_debug, face_model=face_model,
        multicrop=multicrop, multicrop_min_dim=multicrop_min_dim, multicrop_max_dim=multicrop_max_dim,
        multicrop_min_area=multicrop_min_area, multicrop_max_area=multicrop_max_area,
        multicrop_objective=multicrop_objective, multicrop_threshold=multicrop_threshold,
        caption_blip=caption_blip, blip_model=blip_model, blip_num_beams=blip_num_beams,
        blip_min_length=blip_min_length, blip_max_length=blip_max_length,
        caption_tagger=caption_tagger, tagger_model=tagger_model, tagger_threshold=tagger_threshold,
        workers=workers, device=device,
    )
    console = Console(highlight=False)
    bar = Progress(TextColumn("Preprocessing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console)
    task = bar.add_task("preprocess", total=None)

    def show(done: int, total: int) -> None:
        bar.start()  # on the first call, so errors in the folders or models print without an empty bar
        bar.update(task, completed=done, total=total)

    try:
        report = run_preprocess(src, dst, options, progress=show)
    finally:
        if bar.live.is_started:
            bar.stop()
    console.print(f"Wrote {len(report.images)} images and {len(report.captions)} captions to {dst}", markup=False)
    if report.skipped:
        console.print(f"Skipped {len(report.skipped)} {'file' if len(report.skipped) == 1 else 'files'}:", markup=False)
        for skipped in report.skipped:
            console.print(f"  {skipped.path.name}: {skipped.reason}", markup=False)
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False, style="yellow")
