"""ESRGAN-family upscalers (RRDBNet) for the hires fix, from A1111's ``models/ESRGAN`` folder.

A1111 runs these through spandrel, but spandrel's top-level import needs torchvision, which breaks next to the
pinned torch 2.13 here; so the one architecture A1111's ESRGAN upscaler loads (RRDBNet: ESRGAN, Real-ESRGAN x4plus,
4x-UltraSharp and the like) is written out below. Both weight layouts load: the original ESRGAN one
(``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ...) and BasicSR's (``conv_first``, ``body.N.rdb1.conv1``,
``conv_up1``, ``conv_hr``, ``conv_last``; optionally wrapped in ``params_ema``/``params``). Width, depth and scale
are read from the tensor shapes. Images go through the model in A1111's 192-pixel tiles with 8 pixels of overlap.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from hypernet.errors import HypernetError

SUFFIXES = (".pt", ".pth", ".safetensors")  # A1111's ESRGAN extensions
TILE, TILE_OVERLAP = 192, 8  # A1111's ESRGAN_tile / ESRGAN_tile_overlap defaults


class _DenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.conv4 = (nn.Conv2d(nf + i * gc, gc, 3, 1, 1) for i in range(4))
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _DenseBlock(nf, gc), _DenseBlock(nf, gc), _DenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """BasicSR's RRDBNet: ``unshuffle`` > 1 packs the input first (its x2/x1 models); ``2 ** n_up`` / ``unshuffle``
    is the scale."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, n_up: int = 2,
                 unshuffle: int = 1) -> None:
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(in_ch * unshuffle ** 2, nf, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        for i in range(1, n_up + 1):
            self.add_module(f"conv_up{i}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.n_up = n_up
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_ch, 3, 1, 1)

    @property
    def scale(self) -> float:
        return 2 ** self.n_up / self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.n_up + 1):
            feat = F.leaky_relu(getattr(self, f"conv_up{i}")(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")


def _from_old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN's original Sequential keys -> BasicSR names. The upsampling convs sit at 3, 6, 9..., then HR conv and
    the last conv, so the highest index (4 + 3 * n_up) gives the number of x2 steps."""
    tops = {int(m.group(1)) for k in state if (m := _OLD_TOP.fullmatch(k))}
    blocks = {int(m.group(1)) for k in state if (m := _OLD_RDB.fullmatch(k))}
    last = max(tops, default=0)
    n_up, rest = divmod(last - 4, 3)
    if rest or n_up < 0 or not blocks:
        raise ValueError("unrecognised ESRGAN layout")
    names = {0: "conv_first", 2 + 3 * n_up: "conv_hr", last: "conv_last",
             **{3 + 3 * i: f"conv_up{i + 1}" for i in range(n_up)}}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _OLD_RDB.fullmatch(key):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif m := re.fullmatch(rf"model\.1\.sub\.{max(blocks) + 1}\.(weight|bias)", key):
            out[f"conv_body.{m.group(1)}"] = value
        elif (m := _OLD_TOP.fullmatch(key)) and int(m.group(1)) in names:
            out[f"{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            raise ValueError(f"unexpected key {key}")
    return out


def build_rrdbnet(state: dict[str, torch.Tensor]) -> RRDBNet:
    """An RRDBNet with the weights of ``state`` (either layout); raises ValueError when it is not one."""
    if "params_ema" in state or "params" in state:
        state = state.get("params_ema", state.get("params"))  # type: ignore[assignment]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict")
    if "model.0.weight" in state:
        state = _from_old_layout(state)
    first, last = state.get("conv_first.weight"), state.get("conv_last.weight")
    if first is None or last is None or "body.0.rdb1.conv1.weight" not in state:
        raise ValueError("no RRDBNet keys")
    nb = len({k.split(".")[1] for k in state if k.startswith("body.")})
    n_up = sum(1 for k in state if re.fullmatch(r"conv_up\d+\.weight", k))
    out_ch = last.shape[0]
    unshuffle = math.isqrt(first.shape[1] // out_ch)
    model = RRDBNet(first.shape[1] // unshuffle ** 2, out_ch, first.shape[0], nb,
                    state["body.0.rdb1.conv1.weight"].shape[0], n_up, unshuffle)
    model.load_state_dict(state)  # strict: any missing, extra or misshapen tensor is a ValueError below
    return model.eval().requires_grad_(False)


def load_esrgan(path: str | os.PathLike[str]) -> RRDBNet:
    """The RRDBNet in a ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        return build_rrdbnet(state)
    except (ValueError, RuntimeError, OSError, KeyError, AttributeError, TypeError) as e:
        raise HypernetError(f"{path}: not an ESRGAN (RRDBNet) upscaler model ({str(e).splitlines()[0]}).") from None
    except Exception as e:  # torch.load's unpickler refuses non-tensor objects with its own error types
        raise HypernetError(f"{path}: not an ESRGAN (RRDBNet) upscaler model ({type(e).__name__}).") from None


def list_esrgan(folder: str | os.PathLike[str] | None) -> dict[str, Path]:
    """Upscaler name (the file stem, as A1111 names them) -> file, for the model files directly in ``folder``."""
    root = Path(folder) if folder is not None else None
    if root is None or not root.is_dir():
        return {}
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    return {p.stem: p for p in files}


def _run(model: RRDBNet, image: Image.Image) -> Image.Image:
    """One patch, BGR in [0, 1] as A1111's ``upscale_pil_patch`` feeds it."""
    param = next(model.parameters())
    arr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)) / 255
    with torch.no_grad():
        out = model(torch.from_numpy(arr).unsqueeze(0).to(param.device, param.dtype))[0]
    out = (255.0 * np.moveaxis(out.float().cpu().clamp_(0, 1).numpy(), 0, 2)).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(out[:, :, ::-1]), "RGB")


def _tiles(length: int, tile: int, overlap: int) -> list[int]:
    """A1111's ``split_grid`` offsets along one side (the last tile ends at the edge)."""
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [length - tile if int(i * step) + tile >= length else int(i * step) for i in range(count)]


def upscale_tiled(model: RRDBNet, image: Image.Image, tile: int = TILE, overlap: int = TILE_OVERLAP) -> Image.Image:
    """A1111's ``upscale_with_model``: model each tile, then blend the overlaps with linear masks (``combine_grid``)."""
    if tile <= 0:
        return _run(model, image)
    w, h = image.size
    s = round(model.scale)
    ov = overlap * s
    mask_w = Image.fromarray((np.tile(np.arange(ov, dtype=np.float32), (tile * s, 1)) * 255 / ov).astype(np.uint8))
    mask_h = Image.fromarray((np.tile(np.arange(ov, dtype=np.float32)[:, None], (1, w * s)) * 255 / ov)
                             .astype(np.uint8))
    combined = Image.new("RGB", (w * s, h * s))
    for y in _tiles(h, tile, overlap):
        row = Image.new("RGB", (w * s, tile * s))
        for x in _tiles(w, tile, overlap):
            out = _run(model, image.crop((x, y, x + tile, y + tile)))
            if x == 0:
                row.paste(out, (0, 0))
                continue
            row.paste(out.crop((0, 0, ov, tile * s)), (x * s, 0), mask=mask_w)
            row.paste(out.crop((ov, 0, tile * s, tile * s)), (x * s + ov, 0))
        if y == 0:
            combined.paste(row, (0, 0))
            continue
        combined.paste(row.crop((0, 0, w * s, ov)), (0, y * s), mask=mask_h)
        combined.paste(row.crop((0, ov, w * s, tile * s)), (0, y * s + ov))
    return combined


def upscale(model: RRDBNet, image: Image.Image, scale: float) -> Image.Image:
    """A1111's ``Upscaler.upscale``: run the model (up to three times) until the image reaches ``scale``, then
    LANCZOS to each side's ``(side * scale) // 8 * 8``."""
    dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
    for i in range(3):
        if image.width >= dest[0] and image.height >= dest[1] and (i > 0 or scale != 1):
            break
        shape = image.size
        image = upscale_tiled(model, image)
        if image.size == shape:
            break
    if image.size != dest:
        image = image.resize(dest, Image.Resampling.LANCZOS)
    return image
