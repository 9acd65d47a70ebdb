"""A procedural "toy world": simple scenes at 64x64 with exact captions, and pixel-statistics detectors.

The toy model learns to draw these scenes from their captions; the detectors measure whether a generated image
shows the prompted colour and shape, so quality is a number rather than an impression.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "gray": (120, 120, 120),
}
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background, {self.position}"


def all_scenes() -> list[Scene]:
    return [Scene(*combo) for combo in product(SHAPES, COLOURS, BACKGROUNDS, POSITIONS)]


def split_scenes(holdout_every: int = 10) -> tuple[list[Scene], list[Scene]]:
    """(train, held-out): every ``holdout_every``-th combination in a fixed shuffle is never trained on."""
    scenes = all_scenes()
    random.Random(1234).shuffle(scenes)
    held = scenes[::holdout_every]
    return [s for s in scenes if s not in held], held


def render(
    scene: Scene,
    rng: random.Random | None = None,
    size: int = SIZE,
    palette: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Draw a scene; ``rng`` jitters size and position a little so no two renders are identical.

    ``palette`` (shape colour, background colour) overrides the scene's named colours: the VAE is trained on
    random palettes so it can draw any colour, while the UNet only ever sees the named ones.
    """
    rng = rng or random.Random(0)
    colour, background = palette or (COLOURS[scene.colour], BACKGROUNDS[scene.background])
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + rng.uniform(-0.04, 0.04)) * size, (cy + rng.uniform(-0.04, 0.04)) * size
    r = size * rng.uniform(0.19, 0.23)
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif scene.shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    else:
        h = r * 1.1
        draw.polygon([(cx, cy - h), (cx - h * math.sin(math.pi / 3), cy + h / 2), (cx + h * math.sin(math.pi / 3), cy + h / 2)], fill=colour)
    return image


def random_palette(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A shape colour and a background colour, uniformly random but at least clearly different."""
    while True:
        fg, bg = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
        if np.linalg.norm(np.subtract(fg, bg)) > 90:
            return fg, bg


# ================================================================================================= style
# The demo's "style": sepia-toned scenes. The toy model never sees them (the VAE sees random colours, the UNet
# only the named palette), so drawing them is something a hypernetwork has to teach it.
SEPIA = np.array([1.0, 0.78, 0.52], dtype=np.float32)  # the tone's RGB direction; its brightness follows luminance


def sepia(image: Image.Image) -> Image.Image:
    """The image in sepia: each pixel's luminance, times a warm brown tone (plus a little lift so black shows)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    luminance = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    toned = (40 + 0.8 * luminance)[..., None] * SEPIA
    return Image.fromarray(np.clip(toned, 0, 255).astype(np.uint8))


def style_score(image: Image.Image) -> float:
    """Fraction of pixels whose colour is sepia: close (in angle) to the sepia tone and not near-black.

    The named palette's colours and grey backgrounds are all far from it, so an unstyled scene scores ~0.
    """
    a = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    norm = np.linalg.norm(a, axis=1)
    cosine = a @ SEPIA / (norm * np.linalg.norm(SEPIA) + 1e-6)
    return float(np.mean((cosine > 0.985) & (norm > 60)))


# ============================================================================================== detectors
def _foreground(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The shape's pixels as a mask, plus the RGB array.

    The background colour is the border's median; pixels more than 60 away from it stand out, and the mask keeps
    those past half the contrast to the typical standing-out pixel, so soft (generated) edges are cut where a
    sharp edge would be, and a square keeps its corners.
    """
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(a - background, axis=-1)
    candidates = distance > 60
    if candidates.sum() < 20:
        return candidates, a
    contrast = np.percentile(distance[candidates], 75)
    return distance > max(60.0, contrast / 2), a


def detect_colour(image: Image.Image) -> str | None:
    """The palette colour nearest to the median foreground pixel, or None if nothing stands out."""
    mask, a = _foreground(image)
    if mask.sum() < 20:
        return None
    pixel = np.median(a[mask], axis=0)
    return min(COLOURS, key=lambda name: float(np.linalg.norm(pixel - np.array(COLOURS[name]))))


def detect_shape(image: Image.Image) -> str | None:
    """How much of its bounding box the foreground fills: square ~1, circle ~pi/4, triangle ~1/2."""
    mask, _ = _foreground(image)
    if mask.sum() < 20:
        return None
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    if fill > 0.88:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"
