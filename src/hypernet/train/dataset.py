"""Training data the way A1111 reads it: images, captions ("filewords"), prompt templates, tag shuffle and drop-out,
size buckets, alpha loss weights; and hypernet's caches (latents per sampling mode, text encodings).

Every random choice (epoch order, template line, tag shuffle, noise, timestep, latent sample) comes from a generator
seeded by ``(seed, what, step, ...)`` rather than from a running RNG, so the draws of step ``k`` are the same whether
training started at 0 or was resumed at ``k``, and the same on one process or split across several.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hypernet.errors import HypernetError
from hypernet.imageio import open_image

TEMPLATES_DIR = Path(__file__).resolve().with_name("templates")
LATENT_SCALE = 8  # every SD VAE maps 8x8 pixels to one latent
# Files next to images that are not images: never reported as unreadable (A1111 skips every unreadable file silently).
SIDECAR_SUFFIXES = frozenset({".txt", ".caption", ".json", ".yaml", ".yml", ".csv", ".npz", ".npy", ".md", ".optim"})
_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")

Encode = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor | None]]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one named draw, e.g. ``derive_seed(seed, "noise", step, micro, sample)``."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ============================================================================================== templates
def available_templates(templates_dir: str | Path | None = None) -> dict[str, Path]:
    """Template files by bare file name: hypernet's own, then ``templates_dir`` (recursively; later names win)."""
    found: dict[str, Path] = {}
    for root in (TEMPLATES_DIR, Path(templates_dir) if templates_dir else None):
        if root is not None and root.is_dir():
            for path in sorted(root.rglob("*"), key=lambda p: str(p).lower()):
                if path.is_file():
                    found[path.name] = path
    return found


def resolve_template(template: str, templates_dir: str | Path | None = None) -> Path:
    """A template by its bare file name (A1111's key), or by a path to a file."""
    if not template:
        raise HypernetError("template_filename is empty; choose a prompt template such as style_filewords.txt.")
    found = available_templates(templates_dir)
    if template in found:
        return found[template]
    if Path(template).is_file():
        return Path(template)
    where = f"{TEMPLATES_DIR}" + (f" or {templates_dir}" if templates_dir else "")
    raise HypernetError(
        f'prompt template "{template}" was not found in {where}; expected one of: {", ".join(sorted(found))}, or a path to a text file.'
    )


def read_template(path: Path) -> list[str]:
    """The template's lines, stripped; blank lines stay (they are empty prompts, as in A1111)."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise HypernetError(f"{path}: the prompt template cannot be read as UTF-8 text ({e}).") from None
    if not lines:
        raise HypernetError(f"{path}: the prompt template is empty; expected one prompt per line, e.g. \"a painting of [filewords], art by [name]\".")
    return lines


# =============================================================================================== captions
def filewords(image_path: Path, word_regex: str = "", join_string: str = " ") -> str:
    """An image's caption: ``<stem>.txt`` if it exists, else the file stem without leading numbers and dashes
    (``00012-3-a cat.png`` -> ``a cat``), optionally reduced to the matches of ``word_regex``."""
    text_file = image_path.with_suffix(".txt")
    if text_file.is_file():
        try:
            return text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HypernetError(f"{text_file}: the caption cannot be read as UTF-8 text ({e}).") from None
    text = _LEADING_NUMBERS.sub("", image_path.stem)
    if word_regex:
        try:
            text = (join_string or "").join(re.findall(word_regex, text))
        except re.error as e:
            raise HypernetError(f'dataset_filename_word_regex "{word_regex}" is not a valid regular expression ({e}).') from None
    return text


def build_prompt(line: str, name: str, caption: str, shuffle_tags: bool, tag_drop_out: float, rng: random.Random) -> str:
    """A template line with ``[name]`` and ``[filewords]`` filled in; tags (comma-separated parts of the caption)
    are dropped with probability ``tag_drop_out`` and shuffled if asked, as A1111 does."""
    if shuffle_tags or tag_drop_out != 0:
        tags = caption.split(",")
        if tag_drop_out != 0:
            tags = [tag for tag in tags if rng.random() > tag_drop_out]
        if shuffle_tags:
            rng.shuffle(tags)
        caption = ",".join(tags)
    return line.replace("[name]", name).replace("[filewords]", caption)


# ================================================================================================= images
@dataclass
class LoadedImage:
    pixels: torch.Tensor  # (3, H, W) in [-1, 1]
    alpha: Image.Image | None  # the alpha band, at the training size
    original_size: tuple[int, int]  # (width, height) in the file


def read_image(path: Path, size: tuple[int, int] | None) -> LoadedImage:
    """RGB in [-1, 1], resized with BICUBIC to ``size`` (width, height), or (varsize) centre-cropped to multiples
    of 8 so the VAE can encode it. Raises OSError/UnidentifiedImageError/ValueError/SyntaxError for files that are
    no image."""
    image = open_image(path)  # upright (EXIF orientation) and sRGB (ICC profile), as preparation reads it
    original = image.size
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = image.convert("RGB")
    if size is None:
        width, height = (original[0] // LATENT_SCALE) * LATENT_SCALE, (original[1] // LATENT_SCALE) * LATENT_SCALE
        if width == 0 or height == 0:
            raise ValueError(f"{original[0]}x{original[1]} is smaller than 8 pixels")
        box = ((original[0] - width) // 2, (original[1] - height) // 2)
        box = (*box, box[0] + width, box[1] + height)
        rgb, alpha = rgb.crop(box), alpha.crop(box) if alpha is not None else None
    elif rgb.size != size:
        rgb = rgb.resize(size, Image.BICUBIC)
        alpha = alpha.resize(size, Image.BICUBIC) if alpha is not None else None
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return LoadedImage(torch.from_numpy(array).permute(2, 0, 1).contiguous(), alpha, original)


def alpha_weight(alpha: Image.Image | None, latent_size: tuple[int, int]) -> torch.Tensor:
    """A1111's loss weight: the alpha band at latent size (width, height), shifted to minimum 0 and divided by its
    mean (so the loss keeps its scale). No alpha, or a constant one, weighs every latent pixel 1.

    Unlike A1111 the map keeps its orientation for non-square images (A1111 swaps width and height there)."""
    width, height = latent_size
    if alpha is None:
        return torch.ones(height, width)
    weight = torch.from_numpy(np.asarray(alpha.resize(latent_size, Image.BICUBIC), dtype=np.float32) / 255.0)
    weight = weight - weight.min()
    mean = weight.mean()
    return weight / mean if mean > 0 else torch.ones(height, width)


# ================================================================================================ dataset
@dataclass
class Item:
    """One training image with everything the loop needs, cached on the CPU."""

    path: Path
    caption: str  # the filewords
    size: tuple[int, int]  # (width, height) trained at
    original_size: tuple[int, int]  # (width, height) in the file (SDXL size conditioning)
    latent: torch.Tensor  # (C, h, w): the stored latent, or the distribution's mean for "random"
    std: torch.Tensor | None = None  # "random": the distribution's std, sampled on every access
    weight: torch.Tensor | None = None  # (h, w) loss weight (use_weight)
    prompt: str | None = None  # the fixed prompt (captions that cannot change)
    cond: torch.Tensor | None = None  # its text encoding (1, tokens, width)
    pooled: torch.Tensor | None = None  # SDXL pooled text embedding (1, width)


@dataclass
class Batch:
    """One micro-batch of one process, on the training device."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    cond: torch.Tensor
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None
    weights: torch.Tensor | None
    prompts: list[str]


@dataclass
class TrainingDataset:
    """The encoded images plus the rules that turn (step, micro-batch) into a batch; no mutable RNG state."""

    items: list[Item]
    name: str  # what [name] becomes
    lines: list[str]  # the template
    seed: int
    batch_size: int  # per process
    world_size: int
    gradient_step: int
    latent_sampling_method: str
    shuffle_tags: bool
    tag_drop_out: float
    num_train_timesteps: int
    sdxl: bool
    skipped: list[str] = field(default_factory=list)  # "file (reason)" for every unreadable file
    notes: list[str] = field(default_factory=list)  # clamped settings, in sentences
    _plan: tuple[int, list[list[int]]] | None = field(default=None, repr=False)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def dynamic(self) -> bool:
        return self.shuffle_tags or self.tag_drop_out != 0

    @property
    def steps_per_epoch(self) -> int:
        """A1111: ``len(dataset) // batch_size // gradient_step`` (with the global batch of all processes)."""
        return len(self.items) // self.global_batch // self.gradient_step

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        out: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(self.items):
            out.setdefault(item.size, []).append(index)
        return out

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """The epoch's micro-batches (global, ``global_batch`` indices each), A1111's bucket rules: every size
        bucket gives its full batches, the free slots are filled with batches drawn with replacement from a bucket
        chosen in proportion to its leftovers, batches are shuffled, and a partial accumulation group is dropped."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = random.Random(derive_seed(self.seed, "epoch", epoch))
        size = self.global_batch
        wanted = len(self.items) // size
        batches: list[list[int]] = []
        leftovers: list[list[int]] = []
        for indices in self.buckets().values():
            order = indices[:]
            rng.shuffle(order)
            full = len(order) // size
            batches += [order[i * size : (i + 1) * size] for i in range(full)]
            leftovers.append(order[full * size :])
        while len(batches) < wanted:
            weights = [len(rest) for rest in leftovers]
            bucket = rng.choices(leftovers, weights=weights)[0]
            batches.append(rng.choices(bucket, k=size))
        rng.shuffle(batches)
        plan = batches[: len(batches) - len(batches) % self.gradient_step]
        self._plan = (epoch, plan)
        return plan

    def prompt(self, index: int, rng: random.Random) -> str:
        item = self.items[index]
        return build_prompt(rng.choice(self.lines), self.name, item.caption, self.shuffle_tags, self.tag_drop_out, rng)

    def batch(self, step: int, micro: int, rank: int, device: torch.device, encode: Encode | None) -> Batch:
        """Micro-batch ``micro`` of optimizer step ``step`` for process ``rank``: its slice of the global batch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        indices = self.epoch_plan(epoch)[position * self.gradient_step + micro]
        latents, noise, timesteps, prompts, conds, pooled, time_ids, weights = [], [], [], [], [], [], [], []
        for slot in range(rank * self.batch_size, (rank + 1) * self.batch_size):
            item = self.items[indices[slot]]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "sample", step, micro, slot))
            latent = item.latent
            if item.std is not None:  # "random": a fresh sample of the cached distribution
                latent = latent + item.std * torch.randn(latent.shape, generator=gen)
            latents.append(latent)
            noise.append(torch.randn(latent.shape, generator=gen))
            timesteps.append(torch.randint(0, self.num_train_timesteps, (1,), generator=gen))
            if self.dynamic:
                prompts.append(self.prompt(indices[slot], random.Random(derive_seed(self.seed, "prompt", step, micro, slot))))
            else:
                prompts.append(item.prompt or "")
                conds.append(item.cond)
                pooled.append(item.pooled)
            width, height = item.size
            time_ids.append(torch.tensor([item.original_size[1], item.original_size[0], 0, 0, height, width], dtype=torch.float32))
            if item.weight is not None:
                weights.append(item.weight)
        if self.dynamic:
            if encode is None:
                raise RuntimeError("dynamic captions need a text encoder")
            cond, pool = encode(prompts)
        else:
            cond, pool = pad_and_stack(conds), torch.cat(pooled) if self.sdxl else None
        return Batch(
            latents=torch.stack(latents).to(device),
            noise=torch.stack(noise).to(device),
            timesteps=torch.cat(timesteps).to(device),
            cond=cond.to(device),
            pooled=pool.to(device) if pool is not None else None,
            time_ids=torch.stack(time_ids).to(device) if self.sdxl else None,
            weights=torch.stack(weights)[:, None].to(device) if weights else None,
            prompts=prompts,
        )


def pad_and_stack(conds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (1, tokens, width) encodings of different lengths (prompts over 75 tokens) by repeating the last
    vector of the shorter ones, as A1111 does."""
    longest = max(c.shape[1] for c in conds)
    padded = [c if c.shape[1] == longest else torch.cat([c, c[:, -1:].expand(-1, longest - c.shape[1], -1)], 1) for c in conds]
    return torch.cat(padded)


def scan_images(root: Path) -> list[Path]:
    """Candidate images: the files of ``root`` (not recursive, sorted), without captions, sidecars and dot files."""
    return [
        p for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in SIDECAR_SUFFIXES
    ]


@torch.no_grad()
def build_dataset(
    *,
    data_root: Path,
    vae: torch.nn.Module,
    encode: Encode,
    name: str,
    lines: list[str],
    seed: int,
    size: tuple[int, int] | None,
    use_weight: bool,
    latent_sampling_method: str,
    shuffle_tags: bool,
    tag_drop_out: float,
    word_regex: str,
    join_string: str,
    batch_size: int,
    world_size: int,
    gradient_step: int,
    num_train_timesteps: int,
    sdxl: bool,
    device: torch.device,
    on_image: Callable[[int, int], None] | None = None,
) -> TrainingDataset:
    """Read, VAE-encode (in fp32) and caption every image of ``data_root``; unreadable files are listed in
    ``skipped`` and left out. With fixed captions each image gets one template line for the whole run and its
    text encoding is computed here, once."""
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    dtype = next(vae.parameters()).dtype
    if dtype != torch.float32:
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16; fp32 -> fp16 afterwards restores the weights exactly
    candidates = scan_images(data_root)
    items: list[Item] = []
    skipped: list[str] = []
    dynamic = shuffle_tags or tag_drop_out != 0
    try:
        for number, path in enumerate(candidates):
            if on_image:
                on_image(number, len(candidates))
            try:
                loaded = read_image(path, size)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                skipped.append(f"{path.name} ({_reason(e)})")
                continue
            dist = vae.encode(loaded.pixels[None].to(device, torch.float32)).latent_dist
            mean = ((dist.mean - shift) * scale)[0].float().cpu()
            std = (dist.std * scale)[0].float().cpu()
            index = len(items)
            if latent_sampling_method == "once":
                gen = torch.Generator().manual_seed(derive_seed(seed, "latent", index))
                latent, kept_std = mean + std * torch.randn(mean.shape, generator=gen), None
            elif latent_sampling_method == "deterministic":
                latent, kept_std = mean, None
            else:
                latent, kept_std = mean, std
            latent_size = (latent.shape[-1], latent.shape[-2])
            items.append(Item(
                path=path,
                caption=filewords(path, word_regex, join_string),
                size=(loaded.pixels.shape[-1], loaded.pixels.shape[-2]),
                original_size=loaded.original_size,
                latent=latent,
                std=kept_std,
                weight=alpha_weight(loaded.alpha, latent_size) if use_weight else None,
            ))
    finally:
        if dtype != torch.float32:
            vae.to(dtype)
    if not items:
        listed = "; ".join(skipped[:10]) + (f"; and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        raise HypernetError(f"{data_root}: no readable image in the dataset folder (unreadable: {listed or 'none'}).")

    notes: list[str] = []
    per_process = len(items) // world_size
    if per_process == 0:
        raise HypernetError(f"{data_root}: {len(items)} readable images cannot give each of {world_size} processes one image.")
    if batch_size > per_process:  # A1111 clamps the batch size to the dataset size
        notes.append(f"batch_size {batch_size} needs more than the {len(items)} readable images; training with batch_size {per_process}.")
        batch_size = per_process
    groups = len(items) // (batch_size * world_size)
    if gradient_step > groups:  # ... and the accumulation to the batches there are
        notes.append(f"gradient_step {gradient_step} needs more batches than the {len(items)} readable images give; training with gradient_step {groups}.")
        gradient_step = groups
    dataset = TrainingDataset(
        items=items, name=name, lines=lines, seed=seed, batch_size=batch_size, world_size=world_size,
        gradient_step=gradient_step, latent_sampling_method=latent_sampling_method, shuffle_tags=shuffle_tags,
        tag_drop_out=tag_drop_out, num_train_timesteps=num_train_timesteps, sdxl=sdxl, skipped=skipped, notes=notes,
    )
    if not dynamic:
        for index, item in enumerate(items):
            item.prompt = dataset.prompt(index, random.Random(derive_seed(seed, "line", index)))
            cond, pooled = encode([item.prompt])
            item.cond, item.pooled = cond.float().cpu(), pooled.float().cpu() if pooled is not None else None
    return dataset


def _reason(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
