"""``hypernet preprocess SRC DST``: the CLI face of :func:`hypernet.prepare.preprocess`, with a progress bar; its
options are derived from :class:`~hypernet.settings.preprocess.PreprocessSettings`."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hypernet.prepare.options import PreprocessOptions
from hypernet.settings import cli as settings_cli


def _preprocess(settings: PreprocessOptions, src: Path, dst: Path) -> None:
    """Turn a folder of photos into a training set of WxH PNGs with captions (A1111's "Preprocess images")."""
    from hypernet.prepare.pipeline import preprocess as run_preprocess

    options = settings
    console = settings_cli.console()
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


preprocess = settings_cli.command(
    PreprocessOptions, _preprocess,
    extra=[settings_cli.argument("src", Path, help="Folder of source images (files directly in it; not searched "
                                 "recursively)."),
           settings_cli.argument("dst", Path, help="Folder for the training set; created if missing. Must differ "
                                 "from SRC.")],
)
