"""Export hypernetworks as LoRA files, or bake them into checkpoints: the functions the CLI, HTTP API and UI call."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import safetensors.torch
import torch

from hypernet.engine.checkpoints import UNET_PREFIX, detect_family, read_state_dict
from hypernet.engine.generate import Generator
from hypernet.errors import HypernetError
from hypernet.export.compare import ImageCheck, check_images
from hypernet.export.deltas import Entries, LayerDelta, exact_deltas, nonlinear_reason
from hypernet.export.fit import FitOptions, fitted_deltas
from hypernet.export.keys import ldm_path
from hypernet.export.lora import FORMATS, ExportedLayer, Format, LoraPlan, plan_lora, write_lora
from hypernet.fileio import atomic_write_bytes, sha256_file
from hypernet.network import Hypernetwork, list_hypernetworks, load_hypernetwork

Progress = Callable[[str, int, int], None]  # (stage, done, total)

LOADER_NOTES = {
    "kohya": (
        "kohya names: A1111's Lora extension (v1.10) and ComfyUI read every key, the value bias as a full module "
        "(zero diff + diff_b) on to_out.0; diffusers' load_lora_weights refuses kohya files with diff/diff_b keys, "
        "so for diffusers use --format diffusers (or --no-bias, which drops the value bias)."
    ),
    "kohya-nobias": (
        "kohya names without the value bias: A1111, ComfyUI and diffusers all load it; the to_out.0 bias "
        "(the value branch's constant) is lost, see value_bias_norm."
    ),
    "diffusers": (
        "diffusers/PEFT names with the value bias as lora_B.bias (LoraConfig in the file's lora_adapter_metadata): "
        "diffusers' load_lora_weights reads it exactly (needs peft>=0.14); A1111 ignores PEFT-named files and "
        "ComfyUI does not read lora_B.bias, so use the kohya format for them."
    ),
}


def parse_network_spec(spec: str, default_multiplier: float = 1.0) -> tuple[str, float]:
    """``NAME`` or ``NAME:M`` as on the command line and in ``<hypernet:NAME:M>``."""
    name, sep, mult = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not sep:
        return spec, default_multiplier
    try:
        return name, float(mult)
    except ValueError:
        raise HypernetError(f"network {spec!r}: the multiplier after ':' must be a number, e.g. {name}:0.8") from None


def resolve_networks(specs: Sequence[str], hypernetwork_dir: str | os.PathLike[str],
                     default_multiplier: float = 1.0, *, allow_paths: bool = True) -> list[tuple[Hypernetwork, float]]:
    """Load each ``NAME[:M]`` from ``hypernetwork_dir`` (A1111's names) or, with ``allow_paths``, a file path."""
    if not specs:
        raise HypernetError("name at least one hypernetwork to export, e.g. style or style:0.8")
    available = list_hypernetworks(hypernetwork_dir) if Path(hypernetwork_dir).is_dir() else {}
    out = []
    for spec in specs:
        name, multiplier = parse_network_spec(spec, default_multiplier)
        path = available.get(name) or (Path(name) if allow_paths and Path(name).is_file() else None)
        if path is None:
            known = ", ".join(sorted(available)[:10]) or "none"
            alternative = " and is not a file path" if allow_paths else ""
            raise HypernetError(f"hypernetwork {name!r} is not in {hypernetwork_dir} (found: {known}){alternative}.")
        out.append((load_hypernetwork(path), multiplier))
    return out


def native_size(generator: Generator) -> int:
    """The image size the model was made for (UNet sample size times the VAE's downscale): 512, 768, 1024, 64."""
    pipe = generator.pipe
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


def _sources(networks: Entries) -> list[dict[str, object]]:
    return [{"name": net.name, "file": net.filename, "multiplier": m,
             "sha256": sha256_file(net.filename) if net.filename and Path(net.filename).is_file() else None}
            for net, m in networks]


def _deltas(generator: Generator, networks: Entries, approximate: bool, fit: FitOptions | None, size: int,
            progress: Progress | None) -> tuple[list[LayerDelta], str]:
    reasons = {net.name: r for net, _ in networks if (r := nonlinear_reason(net)) is not None}
    if not reasons:
        return exact_deltas(generator.pipe.unet, networks), "exact"
    if not approximate:
        name, reason = next(iter(reasons.items()))
        raise HypernetError(f"hypernetwork {name!r} cannot be folded exactly: {reason}; pass --approximate to use "
                            "its best linear fit on sampled contexts (the report says how far the images are).")
    options = fit or FitOptions(width=size, height=size)
    deltas = fitted_deltas(generator, networks, options,
                           (lambda d, t: progress("fitting", d, t)) if progress else None)
    if not deltas:
        raise HypernetError("the hypernetworks match no attention layer of this model (wrong model family?).")
    return deltas, "fit"


@dataclass
class ExportReport:
    """What was written and how exact it is."""

    path: Path
    kind: str  # "lora" or "checkpoint"
    method: str  # "exact", "svd", "fit", "fit+svd"
    format: str | None
    rank: int | None  # None: every delta at its full (numerical) rank
    model: str
    networks: list[dict[str, object]]
    layers: list[dict[str, object]]
    overall_error: float
    value_bias_norm: float  # ‖Δb‖ over all to_out.0 biases (what a loader without diff_b loses)
    dropped_key_bias: float  # largest ‖W_k·d_k‖ left out: cancels exactly in the softmax
    notes: list[str] = field(default_factory=list)
    images: ImageCheck | None = None

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "images"}
        out["path"] = str(self.path)
        out["images"] = self.images.to_dict() if self.images else None
        return out


def export_lora(
    generator: Generator,
    networks: Entries,
    out: str | os.PathLike[str],
    *,
    rank: int | None = None,
    format: Format = "kohya",
    include_bias: bool = True,
    dtype: torch.dtype | None = None,
    approximate: bool = True,
    fit: FitOptions | None = None,
    check_prompts: Sequence[str] = (),
    check_steps: int = 20,
    size: int | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the networks (applied in order, with their multipliers) as one LoRA for ``generator``'s model.

    The deltas use that model's ``to_k``/``to_v``/``to_out`` weights: exact for this checkpoint, and for other
    checkpoints of the family it carries this one's ``W·A``. ``rank=None`` writes every delta exactly (linear
    networks); a rank writes the best rank-r approximation. Non-linear networks are fitted (``approximate``).
    ``dtype`` defaults to fp32 for exact exports and fp16 otherwise. ``check_prompts`` measures the image difference;
    fitting and checking generate at ``size`` (default: the model's native size).
    """
    if format not in FORMATS:
        raise HypernetError(f"LoRA format {format!r} must be one of: {', '.join(FORMATS)}.")
    size = size or native_size(generator)
    deltas, method = _deltas(generator, networks, approximate, fit, size, progress)
    unet = generator.pipe.unet
    if rank is not None:
        method = "svd" if method == "exact" else "fit+svd"
    plan = plan_lora(deltas, family=generator.info.family, layers_per_block=int(unet.config.layers_per_block),
                     rank=rank, method=method)
    sources = _sources(networks)
    plan.metadata = {
        "hypernet_source": json.dumps(sources),
        "hypernet_method": method if rank is None else f"{method} rank {rank}",
        "hypernet_multiplier": ",".join(f"{m:g}" for _, m in networks),
        "hypernet_model": generator.info.name,
        "hypernet_model_hash": generator.info.short_hash or "",
        "ss_output_name": Path(out).stem,
    }
    if dtype is None:
        dtype = torch.float32 if method == "exact" else torch.float16
    path = write_lora(plan, out, format, dtype, include_bias=include_bias)
    note = LOADER_NOTES["kohya-nobias" if format == "kohya" and not include_bias else format]
    report = _report(path, "lora", plan, generator, sources, format, rank, [note])
    if check_prompts:
        layers = plan.layers
        if format == "kohya" and not include_bias:
            layers = [_without_bias(layer) for layer in layers]
        report.images = check_images(generator, networks, layers, check_prompts, steps=check_steps,
                                     width=size, height=size)
    return report


def _without_bias(layer: ExportedLayer) -> ExportedLayer:
    """The layer as a loader without the value bias applies it."""
    return replace(layer, delta=replace(layer.delta, out_bias=torch.zeros_like(layer.delta.out_bias)))


def _report(path: Path, kind: str, plan: LoraPlan, generator: Generator, sources: list[dict[str, object]],
            format: str | None, rank: int | None, notes: list[str]) -> ExportReport:
    value_bias = sum(float(layer.delta.out_bias.square().sum()) for layer in plan.layers) ** 0.5
    if plan.method.startswith("fit"):
        notes.append("approximation: each layer's fit_error is the share of the network's effect on its contexts "
                     "that no linear map reproduces; error is the rank truncation of the fitted delta.")
    return ExportReport(
        path=path, kind=kind, method=plan.method, format=format, rank=rank, model=generator.info.name,
        networks=sources, layers=plan.rows(), overall_error=plan.overall_error(), value_bias_norm=value_bias,
        dropped_key_bias=max((layer.delta.dropped_key_bias for layer in plan.layers), default=0.0), notes=notes,
    )


def bake(
    generator: Generator,
    checkpoint: str | os.PathLike[str],
    networks: Entries,
    out: str | os.PathLike[str],
    *,
    approximate: bool = False,
    fit: FitOptions | None = None,
    check_prompts: Sequence[str] = (),
    check_steps: int = 20,
    size: int | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Write ``checkpoint`` with the networks folded into its attention weights, as one single-file checkpoint in the
    original layout (A1111/ComfyUI load it with no hypernetwork support). ``generator`` holds the same checkpoint
    loaded (its weights give the deltas). Non-linear networks are refused unless ``approximate``; fitting and the
    image check generate at ``size`` (default: the model's native size)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".safetensors":
        raise HypernetError(f"{out}: a baked checkpoint is written as .safetensors; name the output *.safetensors.")
    if not checkpoint.is_file():
        raise HypernetError(f"{checkpoint}: bake needs a single-file checkpoint (.safetensors or .ckpt).")
    loaded = generator.info.path
    if loaded and Path(loaded).is_file() and Path(loaded).resolve() != checkpoint.resolve():
        raise HypernetError(f"bake {checkpoint} with that checkpoint loaded (the deltas use its weights); "
                            f"the loaded model is {loaded}.")
    state = read_state_dict(checkpoint)
    detect_family(state, checkpoint)
    size = size or native_size(generator)
    deltas, method = _deltas(generator, networks, approximate, fit, size, progress)
    layers_per_block = int(generator.pipe.unet.config.layers_per_block)
    changes = []
    for delta in deltas:
        base = UNET_PREFIX + ldm_path(delta.module, layers_per_block)
        for suffix, change in ((".to_k.weight", delta.key), (".to_v.weight", delta.value),
                               (".to_out.0.bias", delta.out_bias)):
            key = base + suffix
            if key not in state or tuple(state[key].shape) != tuple(change.shape):
                raise HypernetError(f"{checkpoint} does not match the loaded model: {key} is missing or has another "
                                    f"shape (expected {tuple(change.shape)}).")
            changes.append((key, change))
    seen: set[int] = set()
    for key, tensor in list(state.items()):  # safetensors refuses tensors sharing memory
        if tensor.untyped_storage().data_ptr() in seen:
            state[key] = tensor.clone()
        seen.add(state[key].untyped_storage().data_ptr())
    for key, change in changes:
        state[key] = (state[key].double() + change).to(state[key].dtype).contiguous()
    sources = _sources(networks)
    metadata = {"hypernet_baked": json.dumps(sources), "hypernet_method": method,
                "hypernet_base_checkpoint": checkpoint.name}
    atomic_write_bytes(out, safetensors.torch.save(state, metadata=metadata))
    plan = plan_lora(deltas, family=generator.info.family, layers_per_block=layers_per_block, rank=None,
                     method=method)
    report = _report(out, "checkpoint", plan, generator, sources, None, None,
                     ["single-file checkpoint in the original layout: load it anywhere, with no tag."])
    if check_prompts:
        report.images = check_images(generator, networks, plan.layers, check_prompts, steps=check_steps,
                                     width=size, height=size)
    return report
