"""The toy model's architecture: SD 1.x's, shrunk so it trains on a CPU in about an hour.

It is an ordinary SD 1.x pipeline (VAE, UNet with cross-attention, CLIP text encoder with hypernet's tokenizer),
saved as an A1111-style single file, so it loads and generates through exactly the code real checkpoints use.
Its path and image size are in :mod:`hypernet.defaults` (the CLI, server and trainer fall back to it without
importing this package).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from hypernet.engine.checkpoints import assemble_pipeline, family_configs

TEXT_WIDTH = 32  # the toy world has 20 words; 32 keeps the (full-vocabulary) token table at 3 MB in fp16
# written into the checkpoint's metadata (see hypernet.engine.model_defaults): the settings its figures were measured
# with (toy.evaluate's sampler, steps and CFG; the demo's style training), so every front end starts from them
RECORDED_DEFAULTS = {
    "txt2img": {"width": 64, "height": 64, "sampler_name": "DPM++ 2M", "steps": 20, "cfg_scale": 5.0},
    "train": {"steps": 300, "learn_rate": "2e-3", "batch_size": 4, "template_filename": "filewords.txt",
              "create_image_every": 100, "save_hypernetwork_every": 100, "training_write_csv_every": 50},
}


def toy_pipeline(seed: int = 0) -> DiffusionPipeline:
    """A freshly initialised (untrained) toy pipeline."""
    configs = family_configs("sd1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL.from_config(
            configs["vae"]
            | {
                # SD's GroupNorm has 32 groups. The decoder's last norm (full resolution) and the encoder's (latent
                # resolution) sit on the main path, not in a residual branch: with 2 channels per group a flat
                # region's colour is reduced to signs and the VAE cannot learn colour at all; 4 per group, as in SD
                "block_out_channels": [128, 64, 64, 128],
                "layers_per_block": 1,
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4,
                "sample_size": 64,
            }
        )
        unet = UNet2DConditionModel.from_config(
            configs["unet"]
            | {
                "sample_size": 8,
                "block_out_channels": [64, 64],
                "layers_per_block": 1,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "cross_attention_dim": TEXT_WIDTH,
            }
        )
        text = CLIPTextModel(
            CLIPTextConfig.from_dict(
                configs["text_encoder"]
                | {"hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH, "num_hidden_layers": 2, "num_attention_heads": 1}
            )
        )
    return assemble_pipeline("sd1", {"unet": unet, "vae": vae, "text_encoder": text}, "epsilon")
