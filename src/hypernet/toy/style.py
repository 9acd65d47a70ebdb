"""The toy model's style story: a dozen sepia images, a hypernetwork trained on them, and the measured change.

The demo, the tests and ``benchmarks``-style checks all use these functions, so "the tag adds the style" is one
number (:func:`hypernet.toy.world.style_score`) computed the same way everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from hypernet.engine.attention import attention_widths
from hypernet.engine.checkpoints import ModelInfo
from hypernet.engine.generate import Generator, Settings
from hypernet.network import Hypernetwork
from hypernet.train import TrainConfig, TrainResult, train_hypernetwork
from hypernet.train.loop import ProgressCallback
from hypernet.toy.world import Scene, render, sepia, split_scenes, style_score


def style_scenes(count: int = 12) -> list[Scene]:
    """``count`` training-split scenes that cover every shape, colour and background."""
    train = split_scenes()[0]
    random.Random(7).shuffle(train)
    chosen: list[Scene] = []
    for scene in train:  # greedily prefer scenes that add an unseen shape, colour or background
        seen = {(attr, getattr(s, attr)) for s in chosen for attr in ("shape", "colour", "background")}
        new = {(attr, getattr(scene, attr)) for attr in ("shape", "colour", "background")} - seen
        if new or len(chosen) >= 8:
            chosen.append(scene)
        if len(chosen) == count:
            break
    return chosen


def write_style_dataset(folder: Path, count: int = 12, seed: int = 0) -> Path:
    """``count`` sepia-toned scenes as PNGs with caption .txt files: a dataset as a user would prepare one."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i, scene in enumerate(style_scenes(count)):
        sepia(render(scene, rng)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return folder


def train_style(
    pipe,  # noqa: ANN001 - a loaded toy pipeline
    info: ModelInfo,
    data_dir: Path,
    hypernetwork_dir: Path,
    log_dir: Path,
    *,
    name: str = "style",
    steps: int = 300,
    learn_rate: str = "2e-3",
    seed: int = 0,
    latent_sampling_method: str = "deterministic",
    save_every: int = 0,
    stop_when_overcooked: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Create ``name`` for the toy model's text and attention widths and train it on ``data_dir`` for ``steps``
    (snapshots every ``save_every`` steps, each measured for training health)."""
    widths = sorted({*info.text_widths, *attention_widths(pipe.unet)})
    net = Hypernetwork.create(name, widths, layer_structure=[1, 2, 1], activation_func="swish",
                              weight_init="XavierNormal", seed=seed)
    net.save(hypernetwork_dir / f"{name}.pt")
    config = TrainConfig(
        hypernetwork_name=name,
        learn_rate=learn_rate,
        batch_size=4,
        data_root=str(data_dir),
        log_directory=str(log_dir),
        training_width=64,
        training_height=64,
        steps=steps,
        latent_sampling_method=latent_sampling_method,
        create_image_every=0,
        save_hypernetwork_every=save_every,
        stop_when_overcooked=stop_when_overcooked,
        template_filename="filewords.txt",  # "[filewords]": the toy text encoder knows only captions
        hypernetwork_dir=str(hypernetwork_dir),
        training_write_csv_every=50,
        seed=seed,
        device="cpu",
    )
    return train_hypernetwork(config, pipe=pipe, info=info, progress=progress)


@dataclass
class StyleMeasure:
    images: list[Image.Image]
    scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)


def measure_style(generator: Generator, scenes: list[Scene], tag: str = "", steps: int = 20, seed: int = 100) -> StyleMeasure:
    """Generate each scene's caption (plus ``tag``) with fixed seeds and score how sepia every image is."""
    images = []
    for i, scene in enumerate(scenes):
        prompt = f"{scene.caption} {tag}".strip()
        result = generator.generate(Settings(prompt, steps=steps, cfg_scale=5.0, width=64, height=64, seed=seed + i))
        images.extend(result.images)
    return StyleMeasure(images, [style_score(image) for image in images])


def grid(rows: list[list[Image.Image]], scale: int = 2) -> Image.Image:
    """Rows of equal-size images as one picture (each image scaled up, nearest neighbour, so 64 px stay legible)."""
    w, h = rows[0][0].size
    out = Image.new("RGB", (w * scale * max(len(r) for r in rows), h * scale * len(rows)), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            out.paste(image.resize((w * scale, h * scale), Image.NEAREST), (x * w * scale, y * h * scale))
    return out
