"""Training health: which snapshot to keep, and has training gone past it ("over-cooked")?

A1111 leaves this to the eye: look through the previews and keep "the image generated right before distortion
occurs". hypernet measures it at every snapshot, with signals that do not depend on luck:

- a **validation loss**: the diffusion loss on a few images held out of training (``validation_split``), with
  (image, noise, timestep) triples fixed for the whole run and evaluated without gradients, so two snapshots'
  numbers differ only because the network differs. It is reported, not used to choose: a style network's
  validation loss is nearly flat while the style grows and fails;
- **probe images**: a few images generated from training captions at fixed seeds, at the start (the network as
  training found it) and at every snapshot. Against the start they give the *style effect* (how much more of the
  probes' pixels have the training images' colours, brightness aside), *content fidelity* (how much of the start's
  luminance structure, the shapes, is still there) and the distortion statistics (saturation, high-frequency
  energy, clipped colours).

The recommendation is the guide's "image right before distortion": the last snapshot before the first one whose
probes trip an over-cooking signal (content lost or distorted); training is flagged as over-cooked when such a
snapshot follows it. The style effect is reported beside it: how much of the look the recommended snapshot has.
(Choosing the strongest style effect among the earlier snapshots was measured too: on the toy model at 10x the
demo's rate, a few probes' style effect did not tell which snapshot styled unseen prompts best, and it picked one
whose shapes were already going.)
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hypernet.errors import HypernetError
from hypernet.fileio import atomic_write_bytes
from hypernet.network import load_hypernetwork
from hypernet.network.writing import write_optimizer_sidecar
from hypernet.train.dataset import Batch, Item, TrainingDataset, derive_seed

AUTO_MIN_IMAGES = 20  # the automatic split holds images out only from datasets at least this large
AUTO_SHARE = 10  # ... one image in ten, at least 2 and at most 8
TRIPLES_PER_IMAGE = 8  # (noise, timestep) pairs per held-out image; timesteps stratified over the schedule

# Over-cooking signals (measured on the toy model; README "Training health").
HIGH_FREQUENCY_RATIO = 2.0  # probes' high-frequency energy against the start's
CLIPPING_RISE = 0.15  # share of clipped colour values, above the start's
SATURATION_RISE = 0.35
MIN_FIDELITY = 0.3  # correlation of the probes' luminance with the start's: below it, the shapes are going


# ============================================================================================== validation
def validation_count(requested: int, images: int) -> int:
    """How many images to hold out: ``requested`` (0: none), or for -1 a few when the dataset is large enough."""
    if requested >= 0:
        return requested
    if images < AUTO_MIN_IMAGES:
        return 0
    return max(2, min(8, images // AUTO_SHARE))


def split_validation(data: TrainingDataset, requested: int, seed: int) -> tuple[TrainingDataset, list[Item]]:
    """Hold ``validation_count`` images out of ``data`` (a fixed choice for the run's seed); returns the training
    dataset of the rest and the held-out items. Batch size and accumulation shrink if the rest needs it."""
    count = validation_count(requested, len(data.items))
    if count == 0:
        return data, []
    if count >= len(data.items):
        raise HypernetError(f"validation_split is {count}, but the dataset has {len(data.items)} readable images; "
                            "hold out fewer so that some are left to train on.")
    chosen = set(random.Random(derive_seed(seed, "validation")).sample(range(len(data.items)), count))
    train = [item for i, item in enumerate(data.items) if i not in chosen]
    held = [item for i, item in enumerate(data.items) if i in chosen]
    batch_size = max(1, min(data.batch_size, len(train) // data.world_size))
    gradient_step = max(1, min(data.gradient_step, len(train) // (batch_size * data.world_size)))
    notes = list(data.notes)
    if (batch_size, gradient_step) != (data.batch_size, data.gradient_step):
        notes.append(f"with {count} images held out for validation, training uses batch_size {batch_size} and "
                     f"gradient_step {gradient_step}.")
    return replace(data, items=train, batch_size=batch_size, gradient_step=gradient_step, notes=notes,
                   _plan=None), held


def validation_batches(held: Sequence[Item], seed: int, num_train_timesteps: int, sdxl: bool,
                       encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]) -> list[Batch]:
    """One batch per held-out image: its latent ``TRIPLES_PER_IMAGE`` times, each with its own fixed noise and a
    timestep from its own stratum of the schedule, so the loss covers every noise level with little variance."""
    batches = []
    n = TRIPLES_PER_IMAGE
    for index, item in enumerate(held):
        gen = torch.Generator().manual_seed(derive_seed(seed, "validation-noise", index))
        latents = item.latent[None].expand(n, *item.latent.shape).clone()
        noise = torch.randn(latents.shape, generator=gen)
        offsets = torch.rand(n, generator=gen)
        timesteps = ((torch.arange(n) + offsets) * num_train_timesteps / n).long().clamp(0, num_train_timesteps - 1)
        if item.cond is not None:
            cond, pooled = item.cond, item.pooled
        else:  # captions that change every step: the held-out image's caption, fixed
            cond, pooled = encode([item.caption])
        width, height = item.size
        time_ids = torch.tensor([[item.original_size[1], item.original_size[0], 0, 0, height, width]] * n,
                                dtype=torch.float32)
        batches.append(Batch(
            latents=latents, noise=noise, timesteps=timesteps, cond=cond.float().expand(n, *cond.shape[1:]),
            pooled=pooled.float().expand(n, *pooled.shape[1:]) if pooled is not None and sdxl else None,
            time_ids=time_ids if sdxl else None,
            weights=item.weight[None, None].expand(n, 1, *item.weight.shape) if item.weight is not None else None,
            prompts=[item.prompt or item.caption] * n,
        ))
    return batches


@torch.no_grad()
def validation_loss(batches: Sequence[Batch], loss: Callable[[Batch], torch.Tensor], device: torch.device) -> float:
    """The mean loss over the fixed triples (the caller puts the network in eval mode: no dropout)."""
    total = 0.0
    for batch in batches:
        moved = Batch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()})
        total += float(loss(moved))
    return total / len(batches)


# ====================================================================================================== images
@dataclass(frozen=True)
class ImageStats:
    """What changes when a network over-cooks an image."""

    saturation: float  # mean HSV saturation, 0-1
    high_frequency: float  # mean absolute Laplacian of the luminance, per 255
    clipping: float  # share of colour values at 0-2 or 253-255

    @classmethod
    def mean(cls, images: Sequence[Image.Image]) -> ImageStats:
        each = [cls.of(image) for image in images]
        return cls(*(float(np.mean([getattr(e, f) for e in each])) for f in ("saturation", "high_frequency", "clipping")))

    @classmethod
    def of(cls, image: Image.Image) -> ImageStats:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32)
        lum = _luminance(image)
        lap = 4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:]
        clipped = float(np.mean((rgb <= 2) | (rgb >= 253)))
        return cls(float(hsv[..., 1].mean() / 255), float(np.abs(lap).mean() / 255), clipped)


def _luminance(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def chromaticity_histogram(images: Sequence[Image.Image], bins: int = 24) -> np.ndarray:
    """The images' colours as a normalised histogram of chromaticity, (r, g) / (r + g + b): their palette and tone
    with brightness set aside (near-black pixels, whose chromaticity is noise, are left out)."""
    rgb = np.concatenate([np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3) for image in images])
    total = rgb.sum(axis=1)
    lit = total > 60
    r, g = rgb[lit, 0] / total[lit], rgb[lit, 1] / total[lit]
    histogram, _, _ = np.histogram2d(r, g, bins=bins, range=[[0, 1], [0, 1]])
    return histogram / max(histogram.sum(), 1)


def palette(images: Sequence[Image.Image]) -> np.ndarray:
    """The chromaticities the training images use (histogram bins with 0.2% of their pixels or more), widened by one
    bin each way so that a generated colour close to one of them counts."""
    used = np.pad(chromaticity_histogram(images) > 0.002, 1)
    widened = np.zeros_like(used)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            widened |= np.roll(np.roll(used, dy, axis=0), dx, axis=1)
    return widened[1:-1, 1:-1]


def palette_share(images: Sequence[Image.Image], support: np.ndarray) -> float:
    """The share of the images' (lit) pixels whose colour is in the training images' palette, 0-1."""
    return float(chromaticity_histogram(images)[support].sum())


def fidelity(images: Sequence[Image.Image], start: Sequence[Image.Image]) -> float:
    """Content fidelity: the mean correlation (its size: a recolouring may turn a dark shape light) of each probe's
    luminance with the same probe at the start. A style keeps it near 1; an over-cooked network's noise and smears
    take it towards 0."""
    values = []
    for now, then in zip(images, start):
        a, b = _luminance(now).ravel(), _luminance(then).ravel()
        if a.std() < 1e-3 or b.std() < 1e-3:  # a flat image: structure is kept only if both are flat
            values.append(1.0 if a.std() < 1e-3 and b.std() < 1e-3 else 0.0)
        else:
            values.append(abs(float(np.corrcoef(a, b)[0, 1])))
    return float(np.mean(values)) if values else 1.0


def distortion(stats: ImageStats, start: ImageStats, content: float) -> list[str]:
    """Which signals say the probes have drifted into distortion from the start (``content``: their fidelity)."""
    found = []
    if stats.high_frequency > HIGH_FREQUENCY_RATIO * max(start.high_frequency, 0.005):
        found.append(f"high-frequency energy {stats.high_frequency / max(start.high_frequency, 1e-9):.1f}x the start")
    if stats.clipping - start.clipping > CLIPPING_RISE:
        found.append(f"clipped colours {stats.clipping:.0%} (start {start.clipping:.0%})")
    if stats.saturation - start.saturation > SATURATION_RISE:
        found.append(f"saturation {stats.saturation:.2f} (start {start.saturation:.2f})")
    if content < MIN_FIDELITY:
        found.append(f"content fidelity {content:.2f} (the start's shapes are fading)")
    return found


# ===================================================================================================== verdict
@dataclass
class SnapshotHealth:
    """The figures of one snapshot (the first row: the network as training found it)."""

    step: int
    path: str | None
    train_loss: float | None  # mean loss of the steps since the previous measurement
    validation_loss: float | None
    stats: ImageStats | None
    style: float | None = None  # style effect: the share of the way to the training images' palette, 0-1
    fidelity: float | None = None  # content fidelity against the start, 1: the same shapes
    distorted: list[str] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        s = self.stats
        return {
            "step": self.step, "snapshot": self.path or "", "train_loss": _fmt(self.train_loss),
            "validation_loss": _fmt(self.validation_loss), "style": _fmt(self.style), "fidelity": _fmt(self.fidelity),
            "saturation": _fmt(s and s.saturation), "high_frequency": _fmt(s and s.high_frequency),
            "clipping": _fmt(s and s.clipping), "distorted": "; ".join(self.distorted),
        }


@dataclass
class Verdict:
    """The recommendation, and whether training has gone past it."""

    best: SnapshotHealth | None
    overcooked: bool
    reasons: list[str]

    @property
    def best_step(self) -> int | None:
        return self.best.step if self.best else None

    def sentence(self) -> str:
        if self.best is None and self.overcooked:
            return "no snapshot to recommend: " + "; ".join(self.reasons) + " (over-cooked from the first snapshot)."
        if self.best is None:
            return "no snapshot to recommend yet."
        where = f" ({self.best.path})" if self.best.path else ""
        said = f"recommended snapshot: step {self.best.step}{where}"
        if self.best.style is not None:
            said += f", style effect {self.best.style:.2f}"
        if self.overcooked:
            said += "; training has gone past it (over-cooked: " + "; ".join(self.reasons) + ")"
        return said + "."


def judge(history: Sequence[SnapshotHealth]) -> Verdict:
    """The recommendation and the over-cooking verdict from every measured snapshot so far (the start first)."""
    saved = [h for h in history[1:] if h.path]
    if not saved:
        return Verdict(None, False, [])
    tripped = next((i for i, h in enumerate(saved) if h.distorted), len(saved))
    good = saved[:tripped]
    if not good:
        return Verdict(None, True, [f"step {saved[0].step}'s probe images show " + ", ".join(saved[0].distorted)])
    best = good[-1]  # the last one before distortion: its style has had the most training that did no harm
    after = [h for h in saved if h.step > best.step and h.distorted]
    reasons = [f"step {after[0].step}'s probe images show " + ", ".join(after[0].distorted)] if after else []
    return Verdict(best, bool(reasons), reasons)


def write_health_csv(path: Path, history: Sequence[SnapshotHealth], verdict: Verdict) -> Path:
    """``health.csv``: one row per measurement, the recommended snapshot marked. A run that continues a network in
    a folder with an earlier run's ``health.csv`` keeps that run's rows up to its start (the snapshots it trained
    from) and appends its own; the earlier recommendation stays marked only while this run has none."""
    rows = [h.row() | {"recommended": "yes" if h.step == verdict.best_step and h.path else ""} for h in history]
    fields = list(rows[0]) if rows else list(SnapshotHealth(0, None, None, None, None).row()) + ["recommended"]
    start = history[0].step if history else None
    earlier = [{k: row.get(k) or "" for k in fields} for row in _earlier_rows(path, start)]
    if verdict.best is not None:
        for row in earlier:
            row["recommended"] = ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(earlier + rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def _earlier_rows(path: Path, start: int | None) -> list[dict[str, str]]:
    """The rows of an earlier run's ``health.csv`` that this run, starting at step ``start``, does not measure
    again: those before its start, and the snapshot it starts from (not an unrelated run's start row at the same
    step, nor an interrupted attempt's rows after it, which this run writes anew). Unreadable rows are left out."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            found = list(csv.DictReader(fh))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # not a health.csv this code can read: this run's rows replace it
    kept = []
    for row in found:
        try:
            step = int(row.get("step") or "")
        except ValueError:
            continue
        if start is None or step < start or (step == start and row.get("snapshot")):
            kept.append(row)
    return kept


def _fmt(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


# ===================================================================================================== monitor
class HealthMonitor:
    """The run's health measurements: built before training, fed at the start and at every snapshot."""

    def __init__(self, validation: Sequence[Batch], reference: Sequence[Image.Image]) -> None:
        self.validation = list(validation)
        self.palette = palette(reference) if reference else None
        self.history: list[SnapshotHealth] = []
        self.start_images: list[Image.Image] = []
        self.start_share: float | None = None

    def measure(self, step: int, path: str | None, train_loss: float | None, images: Sequence[Image.Image],
                loss: Callable[[Batch], torch.Tensor], device: torch.device) -> Verdict:
        """Add the network's figures now (``images``: its probes) to the history; the new verdict."""
        value = validation_loss(self.validation, loss, device) if self.validation else None
        stats = ImageStats.mean(images) if images else None
        share = palette_share(images, self.palette) if images and self.palette is not None else None
        if not self.history:
            self.start_images, self.start_share = list(images), share
        style = content = None
        if share is not None and self.start_share is not None:  # how far of the way to the training palette
            style = (share - self.start_share) / max(1 - self.start_share, 1e-6)
        if images and self.start_images:
            content = fidelity(images, self.start_images)
        start = self.history[0].stats if self.history else None
        distorted = distortion(stats, start, content if content is not None else 1.0) if stats and start else []
        self.history.append(SnapshotHealth(step, path, train_loss, value, stats, style, content, distorted))
        return judge(self.history)

    def verdict(self) -> Verdict:
        return judge(self.history)


def restore_snapshot(snapshot: Path, final: Path) -> Path:
    """Make ``snapshot`` the final network (weights and step; its optimizer sidecar too, so resuming continues from
    the snapshot exactly)."""
    net = load_hypernetwork(snapshot)
    path = net.save(final)
    if final.suffix.lower() == ".pt" and net.optimizer_state_dict is not None:
        write_optimizer_sidecar(path, net.optimizer_name or "AdamW", net.optimizer_state_dict)
    return path
