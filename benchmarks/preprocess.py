#!/usr/bin/env python
"""Preprocessing throughput: generated 1024x768 photos to 512x512 training PNGs, all cores vs one worker.

Three ways over the same folder of ``--count`` JPEGs (smooth shapes plus sensor-like noise, so they compress like
photos), each into a fresh output folder:

* ``naive``          A1111's loop, written here as the baseline: one process, open, EXIF-rotate, RGB, crop and
                     resize with LANCZOS, save with Pillow's default PNG settings;
* ``one_worker``     ``hypernet.prepare.preprocess`` with ``workers=1`` (everything in this process);
* ``all_cores``      ``preprocess`` with a worker process per usable core. Its first run in a process also starts
                     the worker server (one import of hypernet); that ``cold`` time is reported apart from the
                     sustained rate of the following runs.

hypernet's one-worker and all-core outputs are checked to be byte-identical. The machine may be shared: the 1-minute
load average before the runs is reported, and ``--repeats`` keeps the best of several runs.

Run (about a minute on 2 cores)::

    .venv/bin/python benchmarks/preprocess.py

The LAST line of stdout is one JSON object: ``{"name": "preprocess", "ratio": <all-core images/s / one-worker
images/s>, "images_per_s": <all cores, sustained>, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hypernet.prepare import PreprocessOptions, preprocess


def make_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> None:
    """``count`` JPEGs that look (to a codec) like photos: gradients, soft blobs, fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-0.1, 0.1, 3) * x[..., None] + rng.uniform(-0.1, 0.1, 3) * y[..., None]
        for _ in range(6):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 250)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
            base = base + blob * rng.uniform(-120, 120, 3)
        pixels = np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo {i:04}.jpg", quality=90)


def naive_a1111(src: Path, dst: Path, width: int, height: int) -> None:
    """A1111 v1.6's default path, one file after another."""
    dst.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(sorted(os.listdir(src))):
        im = ImageOps.exif_transpose(Image.open(src / name)).convert("RGB")
        if width / height > im.width / im.height:
            w, h = width, im.height * width // im.width
        else:
            w, h = im.width * height // im.height, height
        im = im.resize((w, h), Image.Resampling.LANCZOS)
        left, top = w // 2 - width // 2, h // 2 - height // 2
        im.crop((left, top, left + width, top + height)).save(dst / f"{index:05}-0-{Path(name).stem}.png")


def best_time(run: Callable[[Path], object], out: Path, repeats: int) -> float:
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        run(out / str(r))
        times.append(time.perf_counter() - start)
    return min(times)


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", default="1024x768", help="source size, WxH")
    parser.add_argument("--target", default="512x512", help="output size, WxH")
    parser.add_argument("--workers", type=int, default=0, help="0 = every usable core")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args(argv)
    src_w, src_h = (int(v) for v in args.size.split("x"))
    width, height = (int(v) for v in args.target.split("x"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers or cores

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        start = time.perf_counter()
        make_photos(src, args.count, src_w, src_h)
        print(f"generated {args.count} {args.size} JPEGs in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        load = os.getloadavg()[0]

        def ours(n: int) -> Callable[[Path], object]:
            return lambda out: preprocess(src, out, PreprocessOptions(width=width, height=height, workers=n))

        cold = best_time(ours(workers), root / "cold", 1)
        parallel = best_time(ours(workers), root / "all", args.repeats)
        single = best_time(ours(1), root / "one", args.repeats)
        naive = None if args.skip_naive else best_time(
            lambda out: naive_a1111(src, out, width, height), root / "naive", args.repeats
        )
        identical = same_files(root / "one" / "0", root / "all" / "0")

    rate = {k: args.count / v for k, v in {"all": parallel, "cold": cold, "one": single}.items()}
    print(f"all cores ({workers} workers): {rate['all']:.1f} images/s (first run, starting workers: {rate['cold']:.1f})",
          file=sys.stderr)
    print(f"one worker: {rate['one']:.1f} images/s", file=sys.stderr)
    result = {
        "name": "preprocess",
        "ratio": round(rate["all"] / rate["one"], 3),
        "images_per_s": round(rate["all"], 2),
        "images_per_s_first_run": round(rate["cold"], 2),
        "images_per_s_one_worker": round(rate["one"], 2),
        "images_per_s_naive_a1111": None if naive is None else round(args.count / naive, 2),
        "vs_naive": None if naive is None else round(rate["all"] * naive / args.count, 3),
        "outputs_identical": identical,
        "workers": workers,
        "cores": cores,
        "load_average_1m": round(load, 2),
        "count": args.count,
        "source": args.size,
        "target": args.target,
    }
    if naive is not None:
        print(f"naive A1111 loop: {result['images_per_s_naive_a1111']:.1f} images/s", file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
