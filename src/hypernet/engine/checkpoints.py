"""Stable Diffusion models -> diffusers pipelines, offline: single checkpoint files, diffusers folders, Hub ids.

A single ``.safetensors``/``.ckpt`` file in the original LDM layout (what A1111 users have) is read, its family
(SD1, SD2, SDXL) is told from its keys, and each component's config is the shipped family config
(``hypernet/assets/configs/<variant>``) with every dimension read from the weights' shapes. The weights then go
through diffusers' own LDM -> diffusers converters. Nothing touches the Hub or the HF cache, and the tiny models of
:mod:`hypernet.testing` take the very same path as real checkpoints.

What the weights cannot tell comes from the family: attention heads (SD1 UNets have 8; SD2/SDXL UNets and the CLIP
text encoders have 64-wide heads, at least one) and the prediction type, which is resolved in this order:

1. the ``prediction_type=`` argument;
2. a ``v_pred`` key in the state dict (the marker v-prediction checkpoints made for ComfyUI carry);
3. an A1111-style ``<name>.yaml`` beside the file: ``parameterization: "v"`` means v-prediction, else epsilon;
4. SD2 only, A1111's probe: at t=999 with latent and context all 0.5, a v-prediction UNet's output minus its input
   averages below -1, an epsilon UNet's stays near 0 (SD2-768 files rarely come with a yaml);
5. epsilon.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import diffusers
import numpy as np
import safetensors.torch
import torch
import yaml
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from huggingface_hub import is_offline_mode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from hypernet.engine.tokenizer import PAD_ENDOFTEXT, PAD_EXCLAMATION, load_clip_tokenizer
from hypernet.defaults import MODEL_PRECISIONS
from hypernet.errors import HypernetError
from hypernet.fileio import short_hash

Family = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "assets" / "configs"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# Each family's text encoders: (component, key prefix in the checkpoint, key layout). "clip" is transformers' CLIP
# naming (OpenAI CLIP-L, padded with <|endoftext|>); "open_clip" is OpenCLIP's fused-qkv naming (padded with "!").
TEXT_ENCODERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sd1": (("text_encoder", "cond_stage_model.transformer.", "clip"),),
    "sd2": (("text_encoder", "cond_stage_model.model.", "open_clip"),),
    "sdxl": (
        ("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
        ("text_encoder_2", "conditioner.embedders.1.model.", "open_clip"),
    ),
}
TOKENIZER_PAD = {"clip": PAD_ENDOFTEXT, "open_clip": PAD_EXCLAMATION}
# (token embedding, position embedding, layer list, first MLP weight) in each text-encoder layout
TEXT_KEYS = {
    "clip": (
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        "encoder.layers.",
        "mlp.fc1.weight",
    ),
    "open_clip": ("token_embedding.weight", "positional_embedding", "transformer.resblocks.", "mlp.c_fc.weight"),
}
LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


DTYPES = dict(zip(MODEL_PRECISIONS, (torch.float32, torch.float16, torch.bfloat16), strict=True))


def precision_dtype(precision: str, what: str = "precision") -> torch.dtype:
    """The torch dtype for a precision name (fp32, fp16, bf16), or a sentence naming ``what`` was wrong."""
    if precision not in DTYPES:
        raise HypernetError(f"{what} {precision!r} must be one of {', '.join(DTYPES)}.")
    return DTYPES[precision]


@dataclass(frozen=True)
class ModelInfo:
    """What hypernet (and A1111's infotext) needs to know about a loaded model."""

    family: Family
    prediction_type: PredictionType
    text_widths: tuple[int, ...]  # hidden size of each text encoder: (768,), (1024,) or (768, 1280)
    name: str  # A1111's model name: the file stem (the folder name or Hub id otherwise)
    path: str
    short_hash: str | None  # sha256[:10] of a single file; None for folders and Hub ids


def load_pipeline(
    source: str | os.PathLike[str],
    *,
    vae: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    prediction_type: PredictionType | None = None,
) -> tuple[DiffusionPipeline, ModelInfo]:
    """Load an SD 1.x/2.x/XL model from a checkpoint file, a diffusers folder or (when online) a Hub model id.

    ``vae`` replaces the model's VAE with one from a separate file; ``prediction_type`` overrides detection.
    """
    if prediction_type is not None and prediction_type not in get_args(PredictionType):
        raise HypernetError(f"prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}.")
    path = Path(source)
    if path.is_file():
        pipe, info = _load_single_file(path, dtype, prediction_type)
    elif path.is_dir():
        pipe, info = _load_pretrained(str(path), path.name, dtype, prediction_type, local=True)
    elif _is_hub_id(str(source)):
        if _hub_offline():
            raise HypernetError(
                f"{source}: no such file or folder, and the Hub is offline (HF_HUB_OFFLINE), so it cannot be "
                "fetched as a model id."
            )
        pipe, info = _load_pretrained(str(source), str(source), dtype, prediction_type, local=False)
    else:
        raise HypernetError(f"{source}: no such checkpoint file or diffusers folder.")
    if vae is not None:
        pipe.register_modules(vae=load_vae(vae, family=info.family, dtype=dtype))
    return pipe, info


def load_vae(path: str | os.PathLike[str], *, family: Family, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """A VAE from a ``.safetensors``/``.pt``/``.ckpt`` file in the original or the diffusers layout.

    ``family`` supplies what the weights don't say, such as the latent scaling factor.
    """
    path = Path(path)
    state = read_state_dict(path)
    state = _sub(state, VAE_PREFIX) or state
    if not any(key.startswith(("encoder.down.", "encoder.down_blocks.")) for key in state):
        raise HypernetError(
            f"{path} is not a VAE: expected encoder.down.* (original) or encoder.down_blocks.* (diffusers) weights."
        )
    try:
        config = _vae_config(state, family_configs(family)["vae"])
    except KeyError as err:
        raise HypernetError(f"{path} is not a VAE we know: it lacks the weight {err.args[0]}.") from err
    return _build_vae(state, config, path, dtype)


class _LightningCheckpointCallback:
    """Stands in for pytorch_lightning's ModelCheckpoint, which training runs pickle beside the weights."""


def _pickle_allowlist() -> list:
    """The non-tensor objects old training checkpoints carry and A1111's restricted unpickler accepts too:
    lightning's checkpoint callback (replaced by an inert stand-in) and numpy scalars."""
    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 renamed numpy.core
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [
        (_LightningCheckpointCallback, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtypes,
    ]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or pickled (``.ckpt``/``.pt``) file, unwrapped from ``"state_dict"`` nesting.

    Pickles are read with ``weights_only=True``; beyond tensors, only what training checkpoints commonly carry
    (lightning's callback, numpy scalars) is accepted, and a file needing anything else is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"{path}: no such file.")
    is_safetensors = path.suffix.lower() == ".safetensors"
    try:
        if is_safetensors:
            state = safetensors.torch.load_file(path)
        else:
            with torch.serialization.safe_globals(_pickle_allowlist()):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader error (truncation, bad header, unsafe pickle) means the same to a user
        kind = "safetensors" if is_safetensors else "PyTorch weights-only pickle"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        message = f"{path} could not be read as a {kind} file; it may be truncated or corrupt ({reason})."
        raise HypernetError(message) from err
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HypernetError(f"{path} holds a {type(state).__name__}, not a dictionary of weights.")
    return {key: value for key, value in state.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}


def detect_family(state: dict[str, torch.Tensor], source: str | os.PathLike[str]) -> Family:
    """SD1, SD2 or SDXL, told by which text encoders an LDM-layout state dict holds."""
    if not any(key.startswith(UNET_PREFIX) for key in state):
        raise HypernetError(
            f"{source} is not a Stable Diffusion checkpoint: it has no model.diffusion_model.* UNet weights "
            "(is it a LoRA, hypernetwork or VAE file?)."
        )
    has = lambda prefix: any(key.startswith(prefix) for key in state)  # noqa: E731
    if UNET_PREFIX + "input_blocks.0.0.weight" in state:
        for family in ("sdxl", "sd2", "sd1"):
            # a class-embedding UNet outside SDXL is an unCLIP or upscaler model, whose conditioning differs
            class_embedding = family != "sdxl" and UNET_PREFIX + "label_emb.0.0.weight" in state
            if not class_embedding and all(has(prefix) for _, prefix, _ in TEXT_ENCODERS[family]):
                return family
    raise HypernetError(
        f"{source} has an unrecognised architecture: expected an SD 1.x, 2.x or XL base UNet with the text encoder "
        "keys of its family (cond_stage_model.transformer, cond_stage_model.model or conditioner.embedders)."
    )


def family_configs(variant: str) -> dict[str, dict]:
    """The shipped configs of ``variant`` (sd1, sd2, sd2-v, sdxl): ``model_index`` plus one per component folder."""
    directory = CONFIGS_DIR / variant
    if not directory.is_dir():
        raise ValueError(f"unknown model variant {variant!r}")
    configs = {"model_index": json.loads((directory / "model_index.json").read_text())}
    for config_file in sorted(directory.glob("*/*.json")):
        configs[config_file.parent.name] = json.loads(config_file.read_text())
    return configs


def variant_of(family: Family, prediction_type: PredictionType) -> str:
    """The shipped config folder for a family and prediction type (SD2 has one per prediction type)."""
    return "sd2-v" if family == "sd2" and prediction_type == "v_prediction" else family


def infer_configs(
    state: dict[str, torch.Tensor], family: Family, prediction_type: PredictionType = "epsilon"
) -> dict[str, dict]:
    """Each component's diffusers config for an LDM state dict: the family's, with dimensions read from the weights.

    Reads shapes only, so it works on meta tensors; raises KeyError if an expected weight is absent.
    """
    base = family_configs(variant_of(family, prediction_type))
    configs = {
        "unet": _unet_config(_sub(state, UNET_PREFIX), base["unet"]),
        "vae": _vae_config(_sub(state, VAE_PREFIX), base["vae"]),
    }
    for name, prefix, layout in TEXT_ENCODERS[family]:
        # SD2 files hold OpenCLIP's whole text tower but SD2 conditions on its penultimate layer
        configs[name] = _text_config(_sub(state, prefix), layout, base[name], unused_last_layer=family == "sd2")
    if family == "sdxl":
        # SDXL's added embedding takes the pooled text (projection_dim) plus six time ids of addition_time_embed_dim
        added = configs["unet"]["projection_class_embeddings_input_dim"] - configs["text_encoder_2"]["projection_dim"]
        configs["unet"]["addition_time_embed_dim"] = added // 6
    return configs


def assemble_pipeline(
    family: Family, models: dict[str, torch.nn.Module], prediction_type: PredictionType
) -> DiffusionPipeline:
    """The family's pipeline around ``models`` (unet, vae, text encoders), with hypernet's tokenizers and scheduler.

    A 9-channel UNet (an inpainting model) gets the family's inpainting pipeline.
    """
    configs = family_configs(variant_of(family, prediction_type))
    index, scheduler_config = configs["model_index"], configs["scheduler"]
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    tokenizers = {
        name.replace("text_encoder", "tokenizer"): load_clip_tokenizer(TOKENIZER_PAD[layout])
        for name, _, layout in TEXT_ENCODERS[family]
    }
    class_name = index["_class_name"]
    if models["unet"].config.in_channels == 9:
        class_name = class_name.replace("Pipeline", "InpaintPipeline")
    kwargs = {name: None for name, value in index.items() if isinstance(value, list)}  # unused components
    kwargs |= {name: value for name, value in index.items() if not name.startswith("_") and not isinstance(value, list)}
    kwargs |= models | tokenizers
    kwargs["scheduler"] = scheduler_cls.from_config(scheduler_config, prediction_type=prediction_type)
    return getattr(diffusers, class_name)(**kwargs)


def _load_single_file(
    path: Path, dtype: torch.dtype, prediction_type: PredictionType | None
) -> tuple[DiffusionPipeline, ModelInfo]:
    state = read_state_dict(path)
    family = detect_family(state, path)
    if prediction_type is None:
        prediction_type = _detect_prediction_type(state, path, family)
    configs = _infer_configs_or_fail(state, family, prediction_type, path)
    models = {
        "unet": _build_unet(state, configs["unet"], path, dtype),
        "vae": _build_vae(_sub(state, VAE_PREFIX), configs["vae"], path, dtype),
    }
    for name, prefix, layout in TEXT_ENCODERS[family]:
        models[name] = _build_text_encoder(state, prefix, layout, configs[name], path, dtype)
    pipe = assemble_pipeline(family, models, prediction_type)
    info = ModelInfo(family, prediction_type, _text_widths(pipe), path.stem, str(path), short_hash(path))
    return pipe, info


def _infer_configs_or_fail(
    state: dict[str, torch.Tensor], family: Family, prediction_type: PredictionType, source: Path
) -> dict[str, dict]:
    try:
        configs = infer_configs(state, family, prediction_type)
    except KeyError as err:
        raise HypernetError(f"{source} has an unrecognised {family} architecture: it lacks {err.args[0]}.") from err
    widths = [configs[name]["hidden_size"] for name, _, _ in TEXT_ENCODERS[family]]
    if sum(widths) != configs["unet"]["cross_attention_dim"]:
        raise HypernetError(
            f"{source} has an unrecognised architecture: text width {sum(widths)} does not match the UNet's "
            f"cross-attention width {configs['unet']['cross_attention_dim']}."
        )
    return configs


def _detect_prediction_type(state: dict[str, torch.Tensor], path: Path, family: Family) -> PredictionType:
    if "v_pred" in state:
        return "v_prediction"
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        return _yaml_prediction_type(sidecar)
    if family == "sd2":
        configs = _infer_configs_or_fail(state, family, "epsilon", path)
        if _answers_like_v_prediction(_build_unet(state, configs["unet"], path, torch.float32)):
            return "v_prediction"
    return "epsilon"


def _yaml_prediction_type(path: Path) -> PredictionType:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise HypernetError(f"{path} is not a readable YAML model config ({type(err).__name__}).") from err
    model = config.get("model") if isinstance(config, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise HypernetError(f"{path} is not an LDM model config: expected a model: params: section.")
    return "v_prediction" if params.get("parameterization") == "v" else "epsilon"


@torch.no_grad()
def _answers_like_v_prediction(unet: UNet2DConditionModel) -> bool:
    latent = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=unet.dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=unet.dtype)
    out = unet(latent, 999, encoder_hidden_states=context).sample
    return (out - latent[:, : out.shape[1]]).mean().item() < -1


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _count(keys: Iterable[str], prefix: str) -> int:
    """How many numbered children (``prefix0.``, ``prefix1.``...) the keys hold."""
    return len({key[len(prefix) :].split(".", 1)[0] for key in keys if key.startswith(prefix)})


def _unet_config(state: dict[str, torch.Tensor], base: dict) -> dict:
    levels = 1 + sum(1 for key in state if key.startswith("input_blocks.") and key.endswith(".op.weight"))
    # conv_in, then per level its resnets and (but for the last level) a downsampler: levels * (layers_per_block + 1)
    per_level = _count(state, "input_blocks.") // levels
    channels, depths, down_types, up_types = [], [], [], []
    for level in range(levels):
        first = 1 + level * per_level
        channels.append(state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        depth = _count(state, f"input_blocks.{first}.1.transformer_blocks.")
        depths.append(depth or 1)
        down_types.append("CrossAttnDownBlock2D" if depth else "DownBlock2D")
        # output blocks count from the bottom level up, as diffusers' up_blocks do
        up_attention = _count(state, f"output_blocks.{level * per_level}.1.transformer_blocks.")
        up_types.append("CrossAttnUpBlock2D" if up_attention else "UpBlock2D")
    to_k, proj_in = _first_ending(state, "attn2.to_k.weight"), _first_ending(state, ".proj_in.weight")
    if isinstance(base["attention_head_dim"], int):  # SD1: a fixed head count
        heads = base["attention_head_dim"]
    else:  # SD2/SDXL: fixed head width (64)
        head_width = base["block_out_channels"][0] // base["attention_head_dim"][0]
        heads = [max(1, width // head_width) for width in channels]
    config = base | {
        "in_channels": state["input_blocks.0.0.weight"].shape[1],
        "out_channels": state["out.2.weight"].shape[0],
        "block_out_channels": channels,
        "layers_per_block": per_level - 1,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "cross_attention_dim": state[to_k].shape[1],
        "use_linear_projection": state[proj_in].ndim == 2,
        "attention_head_dim": heads,
    }
    if base.get("addition_embed_type") == "text_time":
        config["projection_class_embeddings_input_dim"] = state["label_emb.0.0.weight"].shape[1]
    return config


def _first_ending(state: dict[str, torch.Tensor], suffix: str) -> str:
    for key in sorted(state):
        if key.endswith(suffix):
            return key
    raise KeyError(f"any *{suffix}")


def _vae_config(state: dict[str, torch.Tensor], base: dict) -> dict:
    diffusers_layout = any(key.startswith("encoder.down_blocks.") for key in state)
    down, blocks = ("encoder.down_blocks.", "resnets") if diffusers_layout else ("encoder.down.", "block")
    levels = _count(state, down)
    return base | {
        "in_channels": state["encoder.conv_in.weight"].shape[1],
        "out_channels": state["decoder.conv_out.weight"].shape[0],
        "latent_channels": state["post_quant_conv.weight"].shape[0],
        "block_out_channels": [state[f"{down}{i}.{blocks}.0.conv2.weight"].shape[0] for i in range(levels)],
        "layers_per_block": _count(state, f"{down}0.{blocks}."),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def _text_config(state: dict[str, torch.Tensor], layout: str, base: dict, unused_last_layer: bool) -> dict:
    if layout == "clip":
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
    tokens, positions, layers, fc1 = TEXT_KEYS[layout]
    width = state[tokens].shape[1]
    head_width = base["hidden_size"] // base["num_attention_heads"]
    config = base | {
        "vocab_size": state[tokens].shape[0],
        "hidden_size": width,
        "max_position_embeddings": state[positions].shape[0],
        "num_hidden_layers": _count(state, layers) - unused_last_layer,
        "intermediate_size": state[f"{layers}0.{fc1}"].shape[0],
        "num_attention_heads": max(1, width // head_width),
    }
    if _with_projection(config):
        config["projection_dim"] = state["text_projection"].shape[1]  # OpenCLIP multiplies x @ text_projection
    return config


def _with_projection(config: dict) -> bool:
    return "CLIPTextModelWithProjection" in config.get("architectures", [])


def _fill(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path, what: str, dtype: torch.dtype
) -> torch.nn.Module:
    """Load ``weights`` as ``dtype`` into a meta-initialised ``model``; a missing or extra weight means an unknown
    architecture. (Casting the weights, not the model, avoids diffusers' spurious float32-modules warning.)"""
    expected = set(model.state_dict())
    missing, unexpected = expected - weights.keys(), weights.keys() - expected
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        raise HypernetError(
            f"{source} has an unrecognised {what}: {len(missing)} weights missing and {len(unexpected)} unexpected "
            f"(e.g. {example})."
        )
    weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:300]
        raise HypernetError(f"{source} has an unrecognised {what}: {reason}") from err
    return model.eval()


def _build_unet(state: dict[str, torch.Tensor], config: dict, source: Path, dtype: torch.dtype) -> UNet2DConditionModel:
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    try:
        weights = convert_ldm_unet_checkpoint(state, config)
    except KeyError as err:
        raise HypernetError(f"{source} has an unrecognised UNet: it lacks {err.args[0]}.") from err
    return _fill(unet, weights, source, "UNet", dtype)


def _build_vae(state: dict[str, torch.Tensor], config: dict, source: Path, dtype: torch.dtype) -> AutoencoderKL:
    """``state`` holds the VAE weights without prefix, in the original or the diffusers layout."""
    if any(key.startswith("encoder.down_blocks.") for key in state):
        pattern = re.compile(r"(mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.")
        weights = {pattern.sub(lambda m: m[1] + LEGACY_VAE_ATTENTION[m[2]] + ".", k): v for k, v in state.items()}
    else:
        weights = convert_ldm_vae_checkpoint(state, config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    return _fill(vae, weights, source, "VAE", dtype)


def _build_text_encoder(
    state: dict[str, torch.Tensor], prefix: str, layout: str, config: dict, source: Path, dtype: torch.dtype
) -> CLIPTextModel:
    model_cls = CLIPTextModelWithProjection if _with_projection(config) else CLIPTextModel
    with init_empty_weights():
        model = model_cls(CLIPTextConfig.from_dict(config))
    if layout == "clip":
        weights = convert_ldm_clip_checkpoint(_prefixed_only(state, prefix), remove_prefix=prefix)
    else:
        unused = f"{prefix}transformer.resblocks.{config['num_hidden_layers']}."  # SD2's unused last block
        kept = {k: v for k, v in _prefixed_only(state, prefix).items() if not k.startswith(unused)}
        weights = convert_open_clip_checkpoint(model, kept, prefix=prefix)
    # transformers' CLIPTextModel is flat; CLIPTextModelWithProjection nests the encoder under text_model
    weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    weights.pop("embeddings.position_ids", None)  # a buffer older files carry
    if hasattr(model, "text_model"):
        weights = {key if key == "text_projection.weight" else "text_model." + key: v for key, v in weights.items()}
    return _fill(model, weights, source, "text encoder", dtype)


def _prefixed_only(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if key.startswith(prefix)}


def _load_pretrained(
    source: str, name: str, dtype: torch.dtype, prediction_type: PredictionType | None, *, local: bool
) -> tuple[DiffusionPipeline, ModelInfo]:
    try:
        index = DiffusionPipeline.load_config(source, local_files_only=local)
    except Exception as err:  # hub and file errors alike mean "not a pipeline we can read"
        raise HypernetError(f"{source} is not a diffusers pipeline: it has no readable model_index.json.") from err
    # never load (or download) the NSFW checker, its image processor or an IP-Adapter image encoder
    skipped = {key: None for key in ("safety_checker", "feature_extractor", "image_encoder") if key in index}
    if "requires_safety_checker" in index:
        skipped["requires_safety_checker"] = False
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local, **skipped)
    except Exception as err:
        reason = " ".join(str(err).split())[:300]
        raise HypernetError(f"{source} could not be loaded as a diffusers pipeline ({reason}).") from err
    family = _pipeline_family(pipe, source)
    if prediction_type is None:
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    else:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return pipe, ModelInfo(family, prediction_type, _text_widths(pipe), name, source, None)


def _pipeline_family(pipe: DiffusionPipeline, source: str) -> Family:
    unet, text_encoder = getattr(pipe, "unet", None), getattr(pipe, "text_encoder", None)
    if not isinstance(unet, UNet2DConditionModel) or not isinstance(text_encoder, CLIPTextModel):
        raise HypernetError(f"{source} has an unrecognised architecture: expected an SD 1.x, 2.x or XL pipeline.")
    if isinstance(getattr(pipe, "text_encoder_2", None), CLIPTextModelWithProjection):
        return "sdxl"
    return "sd2" if text_encoder.config.hidden_act == "gelu" else "sd1"  # OpenCLIP ViT-H vs OpenAI CLIP-L


def _text_widths(pipe: DiffusionPipeline) -> tuple[int, ...]:
    encoders = [getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")]
    return tuple(encoder.config.hidden_size for encoder in encoders if encoder is not None)


def _is_hub_id(text: str) -> bool:
    looks_like_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", text) is not None
    return looks_like_id and not text.lower().endswith(CHECKPOINT_SUFFIXES)


def _hub_offline() -> bool:
    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
