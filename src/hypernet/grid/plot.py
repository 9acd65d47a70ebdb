"""Running an X/Y/Z plot: every cell is one ordinary ``Generator.generate`` call on the loaded model, so each image
is exactly what a single generation with the cell's settings gives, and its infotext says how to get it again.

Cells run in A1111's order (the costliest axis outermost, so a Checkpoint axis loads each model once), under one
progress count for the whole plot; the model stays loaded throughout and the hypernetwork files are read once
(the generator caches them). The pictures follow A1111: one grid per Z value, joined side by side under Z labels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from hypernet.engine.generate import Generator, Hooks, Settings
from hypernet.engine.infotext import format_infotext
from hypernet.errors import HypernetError
from hypernet.grid.axes import Axis, Cell
from hypernet.grid.layout import annotate, image_grid
from hypernet.network import list_hypernetworks
from hypernet.prompt.tags import parse_batch

MAX_MEGAPIXELS = 200  # A1111's img_max_size_mp: the whole plot's pixels, in millions
SCRIPT_TITLE = "X/Y/Z plot"


@dataclass
class Options:
    """The X/Y/Z plot checkboxes, named as A1111's ``script_args`` 9-16 name them."""

    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False  # "Keep -1 for seeds": a random seed per cell instead of one for the plot
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)  # add the X/Y/Z index to the seed
    margin_size: int = 0


@dataclass
class Plot:
    """Three axes (Nothing where unused) and the options: what to generate, before anything runs."""

    x: Axis
    y: Axis
    z: Axis
    options: Options = field(default_factory=Options)

    @property
    def axes(self) -> tuple[Axis, Axis, Axis]:
        return self.x, self.y, self.z

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x.values), len(self.y.values), len(self.z.values)

    def fix_seeds(self, base: Settings) -> Settings:
        """A1111's ``fix_seed``: unless "Keep -1 for seeds", -1 becomes one concrete seed for the whole plot, and
        -1 on a Seed axis a concrete seed for that column/row."""
        if self.options.no_fixed_seeds:
            return replace(base)
        for axis in self.axes:
            if axis.type.seed:
                axis.values = [random.randrange(4294967294) if v in (None, "", -1) else v for v in axis.values]
                axis.fixed = True
        return replace(base, seed=random.randrange(4294967294) if base.seed == -1 else base.seed)

    def cells(self, base: Settings) -> list[Cell]:
        """Every cell in storage order (``ix + iy * nx + iz * nx * ny``), its axes applied X, then Y, then Z."""
        nx, ny, nz = self.shape
        vary_x, vary_y, vary_z = self.options.vary_seeds
        xdim, ydim = (nx if vary_x else 1), (ny if vary_y else 1)
        out = []
        for iz in range(nz):
            for iy in range(ny):
                for ix in range(nx):
                    cell = Cell(replace(base))
                    for axis, i in zip(self.axes, (ix, iy, iz)):
                        axis.type.apply(cell, axis.values[i], axis.values)  # type: ignore[misc]
                    cell.settings.seed += (ix if vary_x else 0) + (iy * xdim if vary_y else 0) + \
                        (iz * xdim * ydim if vary_z else 0)
                    out.append(cell)
        return out

    def run_order(self) -> list[int]:
        """Storage indices in A1111's loop order: the strictly costliest axis outermost; by default Z, Y, then X."""
        nx, ny, nz = self.shape
        cx, cy, cz = (axis.type.cost for axis in self.axes)
        if cx > cy and cx > cz:
            loops = "xyz" if cy > cz else "xzy"
        elif cy > cx and cy > cz:
            loops = "yxz" if cx > cz else "yzx"
        elif cz > cx and cz > cy:
            loops = "zxy" if cx > cy else "zyx"
        else:
            loops = "zyx"
        sizes = {"x": nx, "y": ny, "z": nz}
        order = []
        for i0 in range(sizes[loops[0]]):
            for i1 in range(sizes[loops[1]]):
                for i2 in range(sizes[loops[2]]):
                    at = dict(zip(loops, (i0, i1, i2)))
                    order.append(at["x"] + at["y"] * nx + at["z"] * nx * ny)
        return order

    def infotext_params(self, with_z: bool = True) -> dict[str, str]:
        """The keys A1111 adds to a grid's infotext (a Z value's own grid leaves Z out)."""
        params = {"Script": SCRIPT_TITLE}
        for name, axis in zip("XYZ", self.axes):
            if axis.index == 0 or (name == "Z" and not with_z):
                continue
            params[f"{name} Type"] = axis.type.label
            params[f"{name} Values"] = axis.text
            if axis.fixed:
                params[f"Fixed {name} Values"] = ", ".join(str(v) for v in axis.values)
        return params


@dataclass
class PlotResult:
    """A1111's output order: the grid of grids, then (if asked) each Z's grid, then (if asked) every cell."""

    images: list[Image.Image]
    infotexts: list[str]
    cells: list[Image.Image]  # storage order; a blank image where a cell was not generated (interrupted)
    cell_infotexts: list[str]
    cell_seeds: list[int]
    grid_infotext: str
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # "name:multiplier" of every network that acted


ModelSwitch = Callable[[str | None], Generator]  # checkpoint name (None: the original) -> the generator to use


def check_plot(plot: Plot, cells: Sequence[Cell], generator: Generator) -> None:
    """Everything that can be checked before the first image: sizes, settings, network names, the plot's size."""
    nx, ny, nz = plot.shape
    width = max(c.settings.width for c in cells)
    height = max(c.settings.height for c in cells)
    if round(nx * ny * nz * width * height / 1e6) >= MAX_MEGAPIXELS:
        raise HypernetError(f"the plot would be {nx}x{ny}x{nz} images of {width}x{height}, over the "
                            f"{MAX_MEGAPIXELS} megapixel limit; use fewer values or a smaller size.")
    if plot.x.index == plot.y.index != 0 or plot.x.index == plot.z.index != 0 or plot.y.index == plot.z.index != 0:
        raise HypernetError("two axes have the same type; give each axis a different type.")
    available = generator.available()
    for cell in cells:
        settings = cell.finished()
        settings.check()
        if cell.checkpoint is None:
            parse_batch([settings.prompt], available, sd_hypernetwork=settings.sd_hypernetwork)


def run_plot(plot: Plot, base: Settings, generator: Generator, *, switch_model: ModelSwitch | None = None,
             hooks: Hooks | None = None) -> PlotResult:
    """Generate every cell and lay the pictures out. ``switch_model`` loads a Checkpoint axis' models (and, with
    None, the original again); ``hooks.progress`` counts sampling steps over the whole plot."""
    hooks = hooks or Hooks()
    base = plot.fix_seeds(generator.defaults.complete(base))  # settings left unset: the model's, as generate() does
    cells = plot.cells(base)
    if any(c.checkpoint is not None for c in cells) and switch_model is None:
        raise HypernetError("a Checkpoint name axis needs a way to load models here; it is not available.")
    check_plot(plot, cells, generator)
    finished = [c.finished() for c in cells]
    total = sum(s.steps * s.n_iter for s in finished)
    images: list[Image.Image | None] = [None] * len(cells)
    infotexts = [""] * len(cells)
    seeds = [s.seed for s in finished]
    warnings: list[str] = []
    applied: list[str] = []
    done, interrupted, current = 0, False, None
    try:
        for index in plot.run_order():
            if hooks.interrupted and hooks.interrupted():
                interrupted = True
                break
            cell, settings = cells[index], finished[index]
            if cell.checkpoint != current:
                generator = switch_model(cell.checkpoint) if switch_model else generator
                current = cell.checkpoint
            offset = done
            progress = hooks.progress

            def cell_progress(step: int, _total: int, offset: int = offset) -> None:
                if progress:
                    progress(offset + step, total)

            result = generator.generate(settings, hooks=Hooks(cell_progress, hooks.interrupted, hooks.skipped,
                                                              hooks.latents))
            done += settings.steps * settings.n_iter
            if not result.images:
                continue
            images[index] = result.images[0] if len(result.images) == 1 else \
                image_grid(result.images, rows=max(1, round(math.sqrt(len(result.images)))))
            infotexts[index], seeds[index] = result.infotexts[0], result.seeds[0]
            warnings += result.warnings
            applied += [f"{a.name}:{a.multiplier}" for a in result.applied]
    finally:
        if current is not None and switch_model is not None:
            switch_model(None)
    if hooks.progress:
        hooks.progress(total, total)
    interrupted = interrupted or any(image is None for image in images)
    size = (max(s.width for s in finished), max(s.height for s in finished))
    filled = [image if image is not None else Image.new("RGB", size, "#000000") for image in images]
    first = next((text for text in infotexts if text), "")
    pictures, texts = layout(plot, filled, first)
    if plot.options.include_lone_images:
        pictures += filled
        texts += infotexts
    return PlotResult(pictures, texts, filled, infotexts, seeds, texts[0], interrupted,
                      list(dict.fromkeys(warnings)), list(dict.fromkeys(applied)))


def layout(plot: Plot, cells: Sequence[Image.Image], first_text: str) -> tuple[list[Image.Image], list[str]]:
    """The grid of grids, then each Z value's grid if ``include_sub_grids``; with their infotexts."""
    nx, ny, nz = plot.shape
    o = plot.options
    w = max(c.width for c in cells)
    h = max(c.height for c in cells)
    subgrids = []
    for iz in range(nz):
        grid = image_grid(cells[iz * nx * ny:(iz + 1) * nx * ny], rows=ny)
        if o.draw_legend:
            grid = annotate(grid, w, h, plot.x.labels, plot.y.labels, o.margin_size)
        subgrids.append(grid)
    z_grid = image_grid(subgrids, rows=1)
    if o.draw_legend and nz > 1:
        z_grid = annotate(z_grid, max(g.width for g in subgrids), max(g.height for g in subgrids),
                          plot.z.labels, [""])
    pictures, texts = [z_grid], [add_params(first_text, plot.infotext_params()) if first_text else ""]
    if o.include_sub_grids and nz > 1:
        sub_text = add_params(first_text, plot.infotext_params(with_z=False)) if first_text else ""
        pictures += subgrids
        texts += [sub_text] * nz
    return pictures, texts


def add_params(infotext: str, params: dict[str, str]) -> str:
    """``infotext`` with ``params`` added to its parameters line before ``Version``, where A1111's extra
    parameters go."""
    if not params:
        return infotext
    extra = format_infotext("", "", params)
    head, sep, last = infotext.rpartition("\n")
    at = last.rfind(", Version: ")
    last = f"{last[:at]}, {extra}{last[at:]}" if at >= 0 else f"{last}, {extra}"
    return f"{head}{sep}{last}"


def network_folder(values: Sequence[str], folder: Path | None) -> tuple[Path | None, list[str]]:
    """Hypernetwork axis values as names the generator can look up: a value that is a file becomes its name (the
    file stem, as A1111 names networks), and when files lie outside ``folder`` their common folder is used
    instead. Returns the folder to look names up in, and the names."""
    files = {v: Path(v).resolve() for v in values if v != "None" and Path(v).is_file()}
    outside = {p.parent for p in files.values() if folder is None or not p.is_relative_to(Path(folder).resolve())}
    if len(outside) > 1:
        raise HypernetError("the Hypernetwork axis names files in different folders "
                            f"({', '.join(sorted(map(str, outside)))}); put them in one folder.")
    if outside:
        folder = outside.pop()
    found = list_hypernetworks(folder) if folder is not None else {}
    names = []
    for value in values:
        if value in files:
            if found.get(files[value].stem, Path()).resolve() != files[value]:
                raise HypernetError(f"{value}: another network in {folder} has the same name "
                                    f"{files[value].stem!r}; rename one of them.")
            names.append(files[value].stem)
        else:
            names.append(value)
    return folder, names
