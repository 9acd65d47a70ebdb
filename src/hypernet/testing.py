"""Tiny random-weight SD 1.x / 2.x / XL pipelines, built offline, and writers for the files users have on disk.

Tests and the demo need real diffusers pipelines of every family without downloading weights. They are built from
the shipped family configs (``hypernet/assets/configs``) with tiny dimensions that follow the rules the checkpoint
loader applies when it infers a model from its weights (SD1 UNets have 8 heads; SD2/SDXL UNets and all text
encoders have 64-wide heads, at least one). So a tiny model saved here as an A1111-style single file loads back
through exactly the code path a real checkpoint takes.

Text widths (48 for SD1, 80 for SD2, 48 + 80 for SDXL) differ from the UNet widths (32, 64), as 768/1024 differ
from 320/640/1280 in the real models, so a hypernetwork module of one width acts only where it would in A1111.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from hypernet.engine.checkpoints import assemble_pipeline, family_configs
from hypernet.engine.upscalers import RRDBNet
from hypernet.fileio import atomic_write_bytes, atomic_write_with

Variant = Literal["sd1", "sd2", "sd2-v", "sdxl"]

UNET_CHANNELS = [32, 64]
VAE_CHANNELS = [32, 32, 64, 64]  # four levels: latents are 1/8 of the image, as in every real SD VAE
TEXT_WIDTHS: dict[str, tuple[int, ...]] = {"sd1": (48,), "sd2": (80,), "sd2-v": (80,), "sdxl": (48, 80)}
SDXL_TIME_EMBED_DIM = 8


def tiny_pipeline(variant: Variant = "sd1", seed: int = 0) -> DiffusionPipeline:
    """A tiny pipeline of ``variant`` with weights drawn from ``seed``; the global RNG state is left untouched."""
    configs = family_configs(variant)
    widths = TEXT_WIDTHS[variant]
    configs["unet"] = _tiny_unet_config(variant, configs["unet"], widths)
    configs["vae"] = configs["vae"] | {
        "block_out_channels": VAE_CHANNELS,
        "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D"] * len(VAE_CHANNELS),
        "up_block_types": ["UpDecoderBlock2D"] * len(VAE_CHANNELS),
    }
    for name, width in zip(("text_encoder", "text_encoder_2"), widths):
        configs[name] = _tiny_text_config(configs[name], width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _build_pipeline(variant, configs)
    if variant == "sd2-v":
        # A trained v-prediction UNet answers A1111's probe (t=999, latent and context all 0.5) with a strongly
        # negative mean; random weights don't, so the tiny one gets an output bias that behaves the same way.
        with torch.no_grad():
            pipe.unet.conv_out.bias.fill_(-2.0)
    return pipe


def random_pipeline(variant: Variant, seed: int = 0) -> DiffusionPipeline:
    """The real-size architecture of ``variant`` with random weights drawn from ``seed`` (for benchmarks)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_pipeline(variant, family_configs(variant))


def skeleton_pipeline(variant: Variant) -> DiffusionPipeline:
    """The real-size architecture of ``variant`` with its weights on the meta device (no memory, no values).

    For checking key layouts and config inference against the real models without their weights.
    """
    with init_empty_weights():
        return _build_pipeline(variant, family_configs(variant))


def _build_pipeline(variant: Variant, configs: dict[str, dict]) -> DiffusionPipeline:
    models = {
        "unet": UNet2DConditionModel.from_config(configs["unet"]),
        "vae": AutoencoderKL.from_config(configs["vae"]),
    }
    for name, model_cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        if name in configs:
            models[name] = model_cls(CLIPTextConfig.from_dict(configs[name]))
    family = "sd2" if variant == "sd2-v" else variant
    models = {name: model.eval() for name, model in models.items()}  # as loaded models are
    return assemble_pipeline(family, models, configs["scheduler"]["prediction_type"])


def _tiny_unet_config(variant: str, base: dict, text_widths: tuple[int, ...]) -> dict:
    heads_64_wide = [max(1, width // 64) for width in UNET_CHANNELS]  # SD2/SDXL's rule (SD1 keeps its 8 heads)
    config = base | {
        "block_out_channels": UNET_CHANNELS,
        "layers_per_block": 2,
        "cross_attention_dim": sum(text_widths),
    }
    if variant == "sdxl":
        # SDXL's pattern: no attention at the first level, deeper transformers further down (here 1, then 2)
        return config | {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2],
            "attention_head_dim": heads_64_wide,
            "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
            "projection_class_embeddings_input_dim": text_widths[-1] + 6 * SDXL_TIME_EMBED_DIM,
        }
    # SD1/SD2's pattern: attention at every level but the last
    config |= {
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    }
    if variant != "sd1":
        config["attention_head_dim"] = heads_64_wide
    return config


def _tiny_text_config(base: dict, width: int) -> dict:
    config = {
        **base,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": max(1, width // 64),
    }
    if "CLIPTextModelWithProjection" in base.get("architectures", []):
        config["projection_dim"] = width
    return config


def save_single_file(pipe: DiffusionPipeline, path: str | os.PathLike[str], variant: Variant) -> Path:
    """Write ``pipe`` as one ``.safetensors`` or ``.ckpt`` file in the original LDM layout A1111 loads."""
    path = Path(path)
    state = ldm_state_dict(pipe, variant)
    if path.suffix == ".safetensors":
        atomic_write_bytes(path, safetensors.torch.save(state))
    elif path.suffix in (".ckpt", ".pt"):
        atomic_write_with(path, lambda fh: torch.save({"state_dict": state, "global_step": 0}, fh))
    else:
        raise ValueError(f"{path}: expected a .safetensors or .ckpt file name")
    return path


def save_diffusers(pipe: DiffusionPipeline, directory: str | os.PathLike[str]) -> Path:
    """Write ``pipe`` as a diffusers folder (model_index.json plus one sub-folder per component)."""
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def ldm_state_dict(pipe: DiffusionPipeline, variant: Variant) -> dict[str, torch.Tensor]:
    """All of ``pipe``'s weights under the original checkpoint keys of its family (works on meta tensors too)."""
    state = _prefixed("model.diffusion_model.", unet_to_ldm(pipe.unet))
    state |= _prefixed("first_stage_model.", vae_to_ldm(pipe.vae))
    if variant == "sd1":
        state |= _prefixed("cond_stage_model.transformer.", clip_to_ldm(pipe.text_encoder))
    elif variant in ("sd2", "sd2-v"):
        state |= _prefixed("cond_stage_model.model.", open_clip_to_ldm(pipe.text_encoder, unused_last_layer=True))
    else:
        state |= _prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(pipe.text_encoder))
        state |= _prefixed("conditioner.embedders.1.model.", open_clip_to_ldm(pipe.text_encoder_2))
    return {key: tensor.detach().contiguous() for key, tensor in state.items()}


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state.items()}


def _renamed(
    state: dict[str, torch.Tensor], prefixes: list[tuple[str, str]], inner: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Map each key by the first matching (diffusers prefix, LDM prefix), renaming the next name part by ``inner``."""
    out = {}
    for key, tensor in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                head, dot, tail = key[len(old) :].partition(".")
                out[new + inner.get(head, head) + dot + tail] = tensor
                break
        else:
            raise KeyError(f"no LDM name for {key}")
    return out


UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """A diffusers UNet's weights under the original ``openaimodel.UNetModel`` names (without the prefix)."""
    config = unet.config
    state = dict(unet.state_dict())
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.addition_embed_type == "text_time":
        fixed |= DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    out = {fixed[key]: state.pop(key) for key in list(state) if key in fixed}

    per_level = config.layers_per_block + 1  # LDM counts a level's resnets plus its down/upsampler
    resnets, others = [], []
    for level, up_type in enumerate(config.up_block_types):
        for j in range(config.layers_per_block):
            resnets.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{1 + level * per_level + j}.0."))
            others.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{1 + level * per_level + j}.1."))
        others.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(level + 1) * per_level}.0.op."))
        for j in range(per_level):
            resnets.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{level * per_level + j}.0."))
            others.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{level * per_level + j}.1."))
        # the upsampler follows the level's last resnet, and its attention if it has one
        upsampler = f"output_blocks.{level * per_level + per_level - 1}.{2 if up_type.startswith('CrossAttn') else 1}."
        others.append((f"up_blocks.{level}.upsamplers.0.", upsampler))
    resnets += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.resnets.1.", "middle_block.2.")]
    others.append(("mid_block.attentions.0.", "middle_block.1."))

    resnet_state = {k: v for k, v in state.items() if ".resnets." in k}
    out |= _renamed(resnet_state, resnets, UNET_RESNET_NAMES)
    out |= _renamed({k: v for k, v in state.items() if k not in resnet_state}, others, {})
    return out


VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """A diffusers VAE's weights under the original ``AutoencoderKL`` names (attention as 1x1 convolutions)."""
    state = dict(vae.state_dict())
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {fixed[key]: state.pop(key) for key in list(state) if key in fixed}

    levels = len(vae.config.block_out_channels)
    prefixes = []
    for level in range(levels):
        up = levels - 1 - level  # diffusers numbers decoder levels from the bottom, LDM from the top
        prefixes += [
            (f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."),
            (f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."),
            (f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{up}.block."),
            (f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{up}.upsample."),
        ]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.") for i in range(2)]

    attention = {k: state.pop(k) for k in list(state) if ".mid_block.attentions.0." in k}
    for key, tensor in attention.items():
        part, _, rest = key.partition(".mid_block.attentions.0.")
        name, _, tail = rest.replace("to_out.0", "to_out").partition(".")
        if tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[f"{part}.mid.attn_1.{VAE_ATTENTION_NAMES[name]}.{tail}"] = tensor
    return out | _renamed(state, prefixes, {"conv_shortcut": "nin_shortcut"})


def _hf_clip_state(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    # transformers' flat CLIPTextModel drops the "text_model." prefix that checkpoints (and the projection model) use
    return {
        key if key.startswith("text_model.") or key == "text_projection.weight" else "text_model." + key: tensor
        for key, tensor in text_encoder.state_dict().items()
    }


def clip_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights as SD1/SDXL checkpoints hold them (``text_model.*`` keys)."""
    state = _hf_clip_state(text_encoder)
    positions = torch.arange(text_encoder.config.max_position_embeddings, device=text_encoder.device)
    state["text_model.embeddings.position_ids"] = positions.unsqueeze(0)  # real files carry this buffer
    return state


OPEN_CLIP_LAYER_NAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(text_encoder: CLIPTextModel, unused_last_layer: bool = False) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights in OpenCLIP's layout (fused q/k/v), as SD2 and SDXL hold them.

    SD2 files hold OpenCLIP's whole text tower but condition on its penultimate layer, which is where diffusers'
    SD2 text encoder ends; ``unused_last_layer`` appends the final block (a copy of the last used one) as real
    files have it.
    """
    state = _hf_clip_state(text_encoder)
    device = text_encoder.device
    out = {}
    for key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"].items():
        if key in state:
            tensor = state.pop(key)
            out[ldm_key] = tensor.T if ldm_key == "text_projection" else tensor
    # SD2's encoder has no projection in diffusers, but its files keep OpenCLIP's; both keep the logit scale
    out.setdefault("text_projection", torch.eye(text_encoder.config.hidden_size, device=device))
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07), device=device)

    layers = text_encoder.config.num_hidden_layers
    for i in range(layers):
        prefix, new = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{prefix}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{new}attn.in_proj_{kind}"] = torch.cat(qkv)
        for key in [k for k in state if k.startswith(prefix)]:
            name, _, kind = key[len(prefix) :].rpartition(".")
            out[f"{new}{OPEN_CLIP_LAYER_NAMES[name]}.{kind}"] = state.pop(key)
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)[0]}")
    if unused_last_layer:
        last, extra = f"transformer.resblocks.{layers - 1}.", f"transformer.resblocks.{layers}."
        out |= {k.replace(last, extra): v.clone() for k, v in out.items() if k.startswith(last)}
    return out


def tiny_esrgan(n_up: int = 2, unshuffle: int = 1, seed: int = 0) -> RRDBNet:
    """A tiny random RRDBNet (8 features, 2 blocks) for upscaler tests, scaled so that its output varies around
    mid-grey instead of being clamped flat."""
    torch.manual_seed(seed)
    model = RRDBNet(nf=8, nb=2, gc=4, n_up=n_up, unshuffle=unshuffle)
    for p in model.parameters():
        p.data.mul_(2)
    model.conv_last.bias.data.add_(0.5)
    return model.eval().requires_grad_(False)


def esrgan_old_layout(model: RRDBNet) -> dict[str, torch.Tensor]:
    """``model``'s weights under the original ESRGAN keys (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ...)."""
    n_up, nb = model.n_up, len(model.body)
    top = {"conv_first": 0, "conv_body": None, "conv_hr": 2 + 3 * n_up, "conv_last": 4 + 3 * n_up,
           **{f"conv_up{i + 1}": 3 + 3 * i for i in range(n_up)}}
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{parts[4]}"] = value
        elif parts[0] == "conv_body":
            out[f"model.1.sub.{nb}.{parts[1]}"] = value
        else:
            out[f"model.{top[parts[0]]}.{parts[1]}"] = value
    return out


def save_tiny_esrgan(path: str | os.PathLike[str], layout: Literal["old", "new"] = "new", **kwargs: int) -> Path:
    """Save :func:`tiny_esrgan` as ``.pth`` (BasicSR's ``params_ema`` wrapper for the new layout) or
    ``.safetensors``, in the old or the new key layout."""
    path = Path(path)
    model = tiny_esrgan(**kwargs)
    state = esrgan_old_layout(model) if layout == "old" else model.state_dict()
    if path.suffix == ".safetensors":
        atomic_write_bytes(path, safetensors.torch.save({k: v.contiguous() for k, v in state.items()}))
    else:
        atomic_write_with(path, lambda f: torch.save({"params_ema": state} if layout == "new" else state, f))
    return path


# =============================================================================================== LoRA files
def kohya_lora(
    pipe: DiffusionPipeline,
    variant: Variant,
    *,
    seed: int = 0,
    rank: int = 2,
    alpha: float | None = 1.0,
    unet_names: Literal["diffusers", "ldm"] = "diffusers",
    scale: float = 0.3,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A random kohya-format LoRA for ``pipe``, as sd-scripts writes it: every attention, feed-forward, projection
    and resnet layer of the UNet (3x3 convolutions as LoCon, ``down`` with the kernel) and every encoder-layer
    Linear of the text encoders (``lora_te_``, or ``lora_te1_``/``lora_te2_`` for SDXL).

    ``unet_names="ldm"`` writes UNet keys with LDM module names (``lora_unet_input_blocks_4_1_proj_in``), as many
    SDXL files have them. Returns the tensors and, per layer name, the diffusers module it is written for
    (``unet.…``, ``text_encoder.…``, ``text_encoder_2.…``).
    """
    ldm = _unet_ldm_module_names(pipe.unet) if unet_names == "ldm" else {}
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    modules: dict[str, str] = {}

    def add(layer: str, module: torch.nn.Module, path: str) -> None:
        weight = module.weight
        out_ch, in_ch = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        down = torch.randn(rank, in_ch, *kernel, generator=generator) * scale
        up = torch.randn(out_ch, rank, *([1, 1] if kernel else []), generator=generator) * scale
        state[f"{layer}.lora_down.weight"] = down
        state[f"{layer}.lora_up.weight"] = up
        if alpha is not None:
            state[f"{layer}.alpha"] = torch.tensor(float(alpha))
        modules[layer] = path

    for name, module in pipe.unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or name in ("conv_in", "conv_out"):
            continue
        if not any(part in name for part in (".attentions.", ".resnets.", "samplers.")):
            continue
        layer = "lora_unet_" + (ldm[name] if unet_names == "ldm" else name).replace(".", "_")
        add(layer, module, "unet." + name)
    encoders = [("text_encoder", pipe.text_encoder)]
    if variant == "sdxl":
        encoders.append(("text_encoder_2", pipe.text_encoder_2))
    for index, (component, encoder) in enumerate(encoders):
        prefix = {("sdxl", 0): "lora_te1_", ("sdxl", 1): "lora_te2_"}.get((variant, index), "lora_te_")
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and "encoder.layers." in name:
                full = name if name.startswith("text_model.") else "text_model." + name  # transformers 5 drops it
                add(prefix + full.replace(".", "_"), module, f"{component}.{name}")
    return state, modules


def _unet_ldm_module_names(unet: UNet2DConditionModel) -> dict[str, str]:
    """diffusers module name -> LDM module name, from :func:`unet_to_ldm` (matched by tensor storage)."""
    by_pointer = {tensor.data_ptr(): key for key, tensor in unet.state_dict().items()}
    names = {}
    for ldm_key, tensor in unet_to_ldm(unet).items():
        key = by_pointer.get(tensor.data_ptr())
        if key is not None and key.endswith(".weight") and ldm_key.endswith(".weight"):
            names[key[: -len(".weight")]] = ldm_key[: -len(".weight")]
    return names


def save_tensors(state: dict[str, torch.Tensor], path: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a flat tensor table as ``.safetensors`` (with ``metadata``) or as a ``.pt``/``.bin``/``.ckpt`` pickle."""
    path = Path(path)
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        atomic_write_bytes(path, safetensors.torch.save(state, metadata=metadata))
    else:
        atomic_write_with(path, lambda fh: torch.save(state, fh))
    return path
