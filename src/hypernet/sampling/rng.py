"""A1111's initial noise and later random draws, per image, for the RNG sources "GPU", "CPU" and "NV".

Every image owns a stream seeded with its own seed, so an image's noise does not depend on the batch it is in. The
first draw is the initial latent noise (with variation seed and seed resize applied); later draws feed ancestral,
eta and restart noise. ENSD re-seeds the streams after the first draw, as A1111 does.

"NV" is CUDA's ``torch.randn`` recomputed on any device (Philox-4x32-10 and Box-Muller, as A1111's ``rng_philox``),
so images made on NVIDIA GPUs with A1111's default source can be reproduced on a CPU or a Mac. "GPU" uses CUDA's
generator when sampling on CUDA; on any other device it is the NV stream, which is what CUDA would have given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hypernet.errors import HypernetError

SOURCES = ("GPU", "CPU", "NV")

_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
# float32 constants as CUDA's curand uses them; the arithmetic is then carried out in float64, as numpy promotes it.
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def philox_randn(seed: int, offset: int, count: int) -> np.ndarray:
    """``count`` standard normals of CUDA's ``torch.randn`` for a generator seeded ``seed`` after ``offset`` calls."""
    n = np.arange(count, dtype=np.uint32)
    c = [np.full(count, offset, np.uint32), np.zeros(count, np.uint32), n, np.zeros(count, np.uint32)]
    key = [np.full(count, seed & 0xFFFFFFFF, np.uint32), np.full(count, (seed >> 32) & 0xFFFFFFFF, np.uint32)]
    for round_ in range(10):
        v1 = c[0].astype(np.uint64) * _PHILOX_M[0]
        v2 = c[2].astype(np.uint64) * _PHILOX_M[1]
        c = [(v2 >> np.uint64(32)).astype(np.uint32) ^ c[1] ^ key[0], v2.astype(np.uint32),
             (v1 >> np.uint64(32)).astype(np.uint32) ^ c[3] ^ key[1], v1.astype(np.uint32)]
        if round_ < 9:
            key = [key[0] + _PHILOX_W[0], key[1] + _PHILOX_W[1]]
    u = c[0] * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = c[1] * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class Stream:
    """One image's generator: successive ``randn`` calls continue the same stream."""

    def __init__(self, source: str, seed: int, device: torch.device) -> None:
        self.device = device
        self.seed = int(seed)
        self.offset = 0  # NV: one Philox counter block per call, whatever the size
        self.kind = _kind(source, device)
        if self.kind != "nv":
            gen_device = "cuda" if self.kind == "cuda" else "cpu"
            self.generator = torch.Generator(gen_device).manual_seed(self.seed)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        if self.kind == "nv":
            values = philox_randn(self.seed, self.offset, int(np.prod(shape)))
            self.offset += 1
            return torch.from_numpy(values).reshape(tuple(shape)).to(self.device)
        gen_device = self.generator.device
        return torch.randn(tuple(shape), generator=self.generator, device=gen_device).to(self.device)


def _kind(source: str, device: torch.device) -> str:
    if source == "NV":
        return "nv"
    if source == "CPU":
        return "cpu"
    if source == "GPU":
        return "cuda" if device.type == "cuda" else "nv"
    raise HypernetError(f'RNG source "{source}" is unknown; expected one of: {", ".join(SOURCES)}.')


def randn_local(source: str, seed: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The first draw of a fresh stream (A1111's ``randn``/``randn_local``: variation, resize, Brownian trees)."""
    return Stream(source, seed, device).randn(shape)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation blend: spherical interpolation along dim 1 of [C, H, W], per (channel, column)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)  # A1111's fallback, weights reversed as it has them
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    """A1111's ``ImageRNG``: :meth:`next` gives the initial noise first, then each stream's next draw."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], *, source: str = "GPU",
                 device: torch.device | str = "cpu", subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None, ensd: int = 0) -> None:
        self.shape = tuple(shape)  # per image: [C, H/8, W/8]
        self.seeds = [int(s) for s in seeds]
        self.source = source
        self.device = torch.device(device)
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.resize = seed_resize_from if seed_resize_from and min(seed_resize_from) > 0 else None  # (w, h)
        self.ensd = int(ensd or 0)
        self.streams = [Stream(source, s, self.device) for s in self.seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        c, h, w = self.shape
        noise_shape = self.shape if self.resize is None else (c, self.resize[1] // 8, self.resize[0] // 8)
        xs = []
        for i, (seed, stream) in enumerate(zip(self.seeds, self.streams)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = randn_local(self.source, subseed, noise_shape, self.device)
            if noise_shape != self.shape:
                noise = randn_local(self.source, seed, noise_shape, self.device)
            else:
                noise = stream.randn(self.shape)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = _paste_centred(stream.randn(self.shape), noise)
            xs.append(noise)
        if self.ensd:
            self.streams = [Stream(self.source, s + self.ensd, self.device) for s in self.seeds]
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([stream.randn(self.shape) for stream in self.streams])


def _paste_centred(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Seed resize: the small (or large) noise centred in the full-size draw, cropped where it overhangs."""
    dx = (x.shape[2] - noise.shape[2]) // 2
    dy = (x.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    x[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return x
