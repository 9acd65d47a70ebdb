"""Auto focal point crop: choose the crop around faces, busy corners and the most detailed stretch of the image.

Same algorithm as A1111's (``spec/preprocess.md`` §2): three groups of points of interest, each group's centroid
weighted by its setting, the crop centred on the weighted average and pushed back inside the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from hypernet.errors import HypernetError
from hypernet.prepare.images import on_white

# A1111's fallback order when no YuNet model is available: (cascade, smallest detection as a share of the short side).
_HAAR_CASCADES = (
    ("haarcascade_eye.xml", 0.01),
    ("haarcascade_frontalface_default.xml", 0.05),
    ("haarcascade_profileface.xml", 0.05),
    ("haarcascade_frontalface_alt.xml", 0.05),
    ("haarcascade_frontalface_alt2.xml", 0.05),
    ("haarcascade_frontalface_alt_tree.xml", 0.05),
    ("haarcascade_eye_tree_eyeglasses.xml", 0.05),
    ("haarcascade_upperbody.xml", 0.05),
)


@dataclass(frozen=True)
class FocalSettings:
    """Crop size and how much each kind of point of interest pulls the crop (A1111's defaults)."""

    width: int
    height: int
    face_weight: float = 0.9
    entropy_weight: float = 0.15
    edges_weight: float = 0.5
    face_model: Path | None = None


class FocalCrop(NamedTuple):
    crop: Image.Image
    debug: Image.Image | None
    box: tuple[int, int, int, int]
    """Where the crop lies in the scaled image."""
    scale: float
    """How much the source was scaled before cropping (> 1 means it was upscaled)."""


@dataclass
class _Group:
    label: str
    colour: str
    points: np.ndarray  # (n, 2) x, y
    weight: float


def focal_crop(im: Image.Image, settings: FocalSettings, debug: bool = False) -> FocalCrop:
    """Scale ``im`` to cover the crop size, then cut ``width x height`` around its focal point.

    A1111 fits one axis (the height of a landscape image, the width of a portrait one), which leaves black bars
    when the target is more elongated than the image; scaling to cover gives the same size whenever A1111's covers.
    """
    w, h = settings.width, settings.height
    scale = max(w / im.width, h / im.height)
    size = (max(w, int(im.width * scale)), max(h, int(im.height * scale)))
    scaled = im.resize(size, Image.Resampling.BICUBIC)
    rgb = np.array(on_white(scaled))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    groups = []
    if settings.edges_weight > 0:
        groups.append(_Group("Edges", "#00f", _corner_points(grey), settings.edges_weight))
    if settings.entropy_weight > 0:
        groups.append(_Group("Entropy", "#ff0", _entropy_points(grey, w, h), settings.entropy_weight))
    if settings.face_weight > 0:
        groups.append(_Group("Face", "#f00", _face_points(rgb, settings.face_model), settings.face_weight))
    found = [g for g in groups if len(g.points)]
    total = sum(g.weight for g in found)
    for g in found:
        g.weight /= total

    if found:
        average = sum(g.points.mean(axis=0) * g.weight for g in found)
        focus = (round(float(average[0])), round(float(average[1])))
    else:
        focus = (size[0] // 2, size[1] // 2)
    left = min(max(focus[0] - w // 2, 0), size[0] - w)
    top = min(max(focus[1] - h // 2, 0), size[1] - h)
    box = (left, top, left + w, top + h)
    crop = scaled.crop(box)
    return FocalCrop(crop, _debug_image(rgb, found, focus, box) if debug else None, box, scale)


def check_face_model(path: Path) -> None:
    """Fail early, in one sentence, if ``path`` is not a model OpenCV's YuNet detector can load."""
    try:
        cv2.FaceDetectorYN.create(str(path), "", (320, 320))
    except cv2.error:
        raise HypernetError(f"face_model {path} could not be loaded by OpenCV's YuNet face detector (ONNX)") from None


def _corner_points(grey: np.ndarray) -> np.ndarray:
    grey = grey.copy()
    grey[int(grey.shape[0] * 0.9) :] = 153  # paint the bottom flat so watermarks and signatures don't attract
    corners = cv2.goodFeaturesToTrack(
        grey, maxCorners=100, qualityLevel=0.04, minDistance=min(grey.shape) * 0.06, useHarrisDetector=False
    )
    return np.empty((0, 2)) if corners is None else corners.reshape(-1, 2).astype(np.float64)


def _entropy_points(grey: np.ndarray, crop_w: int, crop_h: int) -> np.ndarray:
    """Centre of the crop-sized window with the highest greyscale entropy, slid in 4-pixel steps along the long axis."""
    height, width = grey.shape
    if height == width:
        return np.empty((0, 2))
    along_x = width - crop_w >= height - crop_h
    # One row of pixels per position along the sliding axis, so window histograms are differences of cumulative sums.
    lines, window = (grey[:crop_h].T, crop_w) if along_x else (grey[:, :crop_w], crop_h)
    n = lines.shape[0]
    per_line = np.bincount((np.arange(n)[:, None] * 256 + lines).ravel(), minlength=n * 256).reshape(n, 256)
    cumulative = np.concatenate([np.zeros((1, 256), np.int64), np.cumsum(per_line, axis=0)])
    starts = np.arange(0, n - window + 1, 4)
    hist = cumulative[starts + window] - cumulative[starts]
    p = hist / hist.sum(axis=1, keepdims=True)
    entropy = -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=1)
    centre = int(starts[int(np.argmax(entropy))] + window / 2)
    point = (centre, int(crop_h / 2)) if along_x else (int(crop_w / 2), centre)
    return np.array([point], dtype=np.float64)


def _face_points(rgb: np.ndarray, model: Path | None) -> np.ndarray:
    if model is not None:
        return _yunet_points(rgb, model)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    short_side = min(grey.shape)
    for name, share in _HAAR_CASCADES:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)  # type: ignore[attr-defined]  # not in the stubs
        smallest = int(short_side * share)
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=7, minSize=(smallest, smallest))
        if len(found):
            return np.array([(x + w // 2, y + h // 2) for x, y, w, h in found], dtype=np.float64)
    return np.empty((0, 2))


def _yunet_points(rgb: np.ndarray, model: Path) -> np.ndarray:
    height, width = rgb.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(model), "", (width, height), 0.9, 0.3, 5000)
    _, faces = detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if faces is None:
        return np.empty((0, 2))
    # Horizontal centre, a third down from the top of the box: about where the eyes are.
    return np.array([(int(x + w * 0.5), int(y + h * 0.33)) for x, y, w, h in faces[:, :4]], dtype=np.float64)


def _debug_image(
    rgb: np.ndarray, groups: list[_Group], focus: tuple[int, int], box: tuple[int, int, int, int]
) -> Image.Image:
    """The scaled image annotated with every point, each group's centroid and weight, the focal point and the crop."""
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    radius = min(im.size) * 0.07
    for g in groups:
        for x, y in g.points:
            draw.rectangle((x - 2, y - 2, x + 2, y + 2), outline=g.colour)
        cx, cy = g.points.mean(axis=0)
        r = max(radius * g.weight, 3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=g.colour, width=2)
        draw.text((cx - r, cy - r - 14), f"{g.label}: {g.weight:.2f}", fill=g.colour)
    fx, fy = focus
    draw.ellipse((fx - radius, fy - radius, fx + radius, fy + radius), outline="#0f0", width=2)
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline="#0f0", width=2)
    return im
