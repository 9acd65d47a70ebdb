"""Where each UNet attention layer lives in the files other tools read: LDM (compvis) paths, kohya and diffusers names.

A diffusers UNet path such as ``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` is
``input_blocks.4.1.transformer_blocks.0.attn2`` in the original checkpoint layout: LDM counts each level's resnets
plus its downsampler (``layers_per_block + 1`` slots a level) and puts the transformer at index 1 of its slot.
"""

from __future__ import annotations

import re

from hypernet.errors import HypernetError

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")


def ldm_path(diffusers_path: str, layers_per_block: int) -> str:
    """The original-checkpoint path (without ``model.diffusion_model.``) of a diffusers UNet attention module."""
    per_level = layers_per_block + 1
    if m := _DOWN.match(diffusers_path):
        level, index, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + level * per_level + index}.1.{rest}"
    if m := _MID.match(diffusers_path):
        return f"middle_block.1.{m[1]}"
    if m := _UP.match(diffusers_path):
        level, index, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{level * per_level + index}.1.{rest}"
    raise HypernetError(f"UNet module {diffusers_path!r} is not inside a down, mid or up attention block.")


def kohya_name(diffusers_path: str, family: str, layers_per_block: int) -> str:
    """The ``lora_unet_*`` layer name kohya's sd-scripts would write for this module.

    SD1/SD2 files use diffusers block names (``lora_unet_down_blocks_0_attentions_0_...``), SDXL files the original
    ones (``lora_unet_input_blocks_4_1_...``), as kohya does. A1111's Lora extension turns diffusers block names
    into original ones assuming two layers per block, so for UNets with another count the original names are
    written instead: A1111 (by its ``lora_unet`` -> ``diffusion_model`` fallback), ComfyUI and diffusers all read
    those for every family.
    """
    if family == "sdxl" or layers_per_block != 2:
        path = ldm_path(diffusers_path, layers_per_block)
    else:
        path = diffusers_path
    return "lora_unet_" + path.replace(".", "_")
