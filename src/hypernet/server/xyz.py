"""``script_name: "x/y/z plot"`` on ``/sdapi/v1/txt2img``: A1111's 18 ``script_args``, run on the loaded model.

The request's own fields are the base settings; every cell is one generation on the job worker, so ``/progress``
covers the whole plot, ``/interrupt`` stops it (the cells made so far stay, the rest are black) and ``/skip`` ends
the current cell. The response's ``images[0]`` is the grid, as in A1111, followed by the Z grids and cells when
``include_sub_grids``/``include_lone_images`` ask for them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from hypernet.engine.generate import Hooks, Settings
from hypernet.engine.infotext import save_image
from hypernet.fileio import next_number
from hypernet.errors import HypernetError
from hypernet.grid.axes import parse_axis
from hypernet.grid.plot import Options, Plot, PlotResult, check_plot, run_plot
from hypernet.server.jobs import Job
from hypernet.server.security import ApiError
from hypernet.server.state import ServerState

SCRIPT_NAME = "x/y/z plot"
ARG_COUNT = 18
DEFAULT_ARGS: list[Any] = [1, "", None, 0, "", None, 0, "", None, True, False, False, False, False, False, False, 0,
                           False]


def is_plot(script_name: str | None) -> bool:
    return bool(script_name) and str(script_name).strip().lower() == SCRIPT_NAME


def plan_plot(state: ServerState, script_args: list[Any] | None, base: Settings) -> Plot:
    """Parse and check A1111's ``script_args`` (x type/values/dropdown, y..., z..., draw_legend,
    include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x/y/z, margin_size, csv_mode)."""
    args = list(script_args or [])
    if len(args) > ARG_COUNT:
        raise ApiError(422, f"script_args has {len(args)} values; the X/Y/Z plot takes {ARG_COUNT}.")
    args += DEFAULT_ARGS[len(args):]
    csv_mode = bool(args[17])
    try:
        axes = [parse_axis(args[i], str(args[i + 1] or ""), args[i + 2], csv_mode=csv_mode or args[i + 2] is None,
                           which=which) for i, which in ((0, "X"), (3, "Y"), (6, "Z"))]
        margin = int(args[16] or 0)
    except (TypeError, ValueError):
        raise ApiError(422, "script_args: margin_size (index 16) must be an integer.") from None
    except HypernetError as e:
        raise ApiError(422, f"script_args: {e}") from None
    if not 0 <= margin <= 500:
        raise ApiError(422, f"script_args: margin_size is {margin}; expected 0-500.")
    for axis in axes:
        if axis.type.label == "Checkpoint name":
            axis.values = [state.find_checkpoint(str(v)).title for v in axis.values]
    options = Options(draw_legend=bool(args[9]), include_lone_images=bool(args[10]), include_sub_grids=bool(args[11]),
                      no_fixed_seeds=bool(args[12]), vary_seeds=(bool(args[13]), bool(args[14]), bool(args[15])),
                      margin_size=margin)
    plot = Plot(*axes, options=options)
    limits = state.config.limits
    cells = plot.cells(base)
    if len(cells) > limits.max_n_iter * limits.max_batch_size:
        raise ApiError(422, f"the plot has {len(cells)} cells; this server allows at most "
                            f"{limits.max_n_iter * limits.max_batch_size}.")
    for cell in cells:
        s = cell.settings
        if s.steps > limits.max_steps or s.width * s.height > limits.max_pixels:
            raise ApiError(422, f"a cell asks for {s.steps} steps at {s.width}x{s.height}; this server allows at "
                                f"most {limits.max_steps} steps and {limits.max_pixels} pixels.")
    try:
        check_plot(plot, cells, state.model.generator)
    except HypernetError as e:
        raise ApiError(422, f"X/Y/Z plot: {e}") from None
    return plot


def run_plot_job(state: ServerState, plot: Plot, base: Settings, job: Job) -> PlotResult:
    """Run the plot on the worker thread, with A1111's progress counters (one "job" per cell)."""
    nx, ny, nz = plot.shape
    original = state.model.checkpoint
    job.job_count, job.sampling_steps = nx * ny * nz, base.steps

    def progress(done: int, total: int) -> None:
        share = done / max(total, 1) * job.job_count
        job.job_no = min(int(share), job.job_count - 1)
        job.sampling_step = round((share - job.job_no) * job.sampling_steps)

    def skipped() -> bool:  # consumed: /skip ends the current cell only
        if job.skipped:
            job.skipped = False
            return True
        return False

    def switch(checkpoint: str | None) -> Any:
        state.switch_model(original if checkpoint is None else state.find_checkpoint(checkpoint))
        return state.model.generator

    result = run_plot(plot, base, state.model.generator, switch_model=switch,
                      hooks=Hooks(progress=progress, interrupted=lambda: job.interrupted, skipped=skipped))
    job.job_no = job.job_count
    return result


def save_plot_images(state: ServerState, result: PlotResult, fmt: str) -> None:
    """A1111's folders: the cells in ``txt2img-images``, the grids in ``txt2img-grids``, by date."""
    day = datetime.now().strftime("%Y-%m-%d")
    outputs = Path(state.config.outputs_dir)
    grids = [(image, text) for image, text in zip(result.images, result.infotexts)
             if not any(image is cell for cell in result.cells)]
    for kind, items in (("txt2img-images", list(zip(result.cells, result.cell_infotexts))), ("txt2img-grids", grids)):
        folder = outputs / kind / day
        folder.mkdir(parents=True, exist_ok=True)
        start = next_number(folder)  # never over an earlier image, even after deletions
        for i, (image, text) in enumerate(items):
            name = f"{start + i:05d}-{'xyz_grid' if kind == 'txt2img-grids' else 'cell'}.{fmt}"
            save_image(image, folder / name, text or None)
