"""Train hypernet's embedded toy model from scratch on the procedural toy world, on the CPU.

    .venv/bin/python scripts/train_toy_model.py            # ~1 hour on 2 cores; writes src/hypernet/assets/toy/
    .venv/bin/python scripts/train_toy_model.py --quick    # a few minutes, for trying the script itself

Phase 1 trains the VAE as an autoencoder; its latent scale is then folded into its weights so SD 1.x's fixed
scaling factor (0.18215) is right for it. Phase 2 trains the UNet and the text encoder together on cached latents,
dropping 10% of captions so classifier-free guidance works. The result is written as an A1111-style single-file
checkpoint (fp16, unused token embeddings zeroed), so `load_pipeline` loads it like any user's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from hypernet.fileio import atomic_write_bytes
from hypernet.testing import ldm_state_dict
from hypernet.toy.model import CHECKPOINT, toy_pipeline
from hypernet.toy.world import render, split_scenes


def images_tensor(images: list) -> torch.Tensor:
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def train_vae(vae, steps: int, batch: int, rng: random.Random, log) -> None:  # noqa: ANN001
    train, _ = split_scenes()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(steps):
        x = images_tensor([render(rng.choice(train), rng) for _ in range(batch)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def fold_latent_scale(vae, scaling_factor: float, rng: random.Random) -> None:  # noqa: ANN001
    """Rescale the latent space (exactly, in the weights) so that latents * scaling_factor have unit std."""
    train, _ = split_scenes()
    x = images_tensor([render(rng.choice(train), rng) for _ in range(256)])
    std = vae.encode(x).latent_dist.mean.std().item()
    k = 1.0 / (scaling_factor * std)
    c = vae.config.latent_channels
    vae.quant_conv.weight[:c] *= k
    vae.quant_conv.bias[:c] *= k
    vae.quant_conv.bias[c:] += 2 * math.log(k)  # log-variance follows the mean's scale
    vae.post_quant_conv.weight[:, :c] /= k


def train_unet(pipe, steps: int, batch: int, copies: int, rng: random.Random, log) -> None:  # noqa: ANN001
    train, _ = split_scenes()
    items = [(s, render(s, rng)) for s in train for _ in range(copies)]
    with torch.no_grad():
        latents = torch.cat([
            pipe.vae.encode(images_tensor([im for _, im in items[i : i + 64]])).latent_dist.mean
            for i in range(0, len(items), 64)
        ]) * pipe.vae.config.scaling_factor
    captions = [s.caption for s, _ in items]
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    empty = pipe.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    log(f"cached {len(items)} latents {tuple(latents.shape[1:])}, std {latents.std().item():.3f}")

    scheduler = pipe.scheduler
    alphas = scheduler.alphas_cumprod
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=4e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-4, total_steps=steps, pct_start=0.03)
    pipe.unet.train()
    pipe.text_encoder.train()
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for step in range(steps):
        idx = torch.randint(0, len(items), (batch,), generator=gen)
        x0 = latents[idx]
        tok = ids[idx].clone()
        drop = torch.rand(batch, generator=gen) < 0.1
        tok[drop] = empty
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = pipe.text_encoder(tok).last_hidden_state
        loss = F.mse_loss(pipe.unet(noisy, t, context).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f}")
    pipe.unet.eval()
    pipe.text_encoder.eval()


def save(pipe, path: Path) -> None:  # noqa: ANN001
    """fp16 single file; token embeddings of words the toy world never uses are zeroed (they compress away)."""
    train, held = split_scenes()
    used = {t for ids in pipe.tokenizer([s.caption for s in train + held] + [""])["input_ids"] for t in ids}
    with torch.no_grad():
        emb = pipe.text_encoder.embeddings.token_embedding.weight
        keep = torch.zeros(emb.shape[0], dtype=torch.bool)
        keep[list(used)] = True
        emb[~keep] = 0
    state = {k: v.half().contiguous() for k, v in ldm_state_dict(pipe, "sd1").items()}
    atomic_write_bytes(path, safetensors.torch.save(state, metadata={"trained_by": "scripts/train_toy_model.py"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--unet-steps", type=int, default=9000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--copies", type=int, default=12, help="jittered renders per training scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--quick", action="store_true", help="tiny step counts, to try the script")
    args = parser.parse_args()
    if args.quick:
        args.vae_steps, args.unet_steps, args.copies = 30, 60, 2
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.time()
    log = lambda msg: print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)  # noqa: E731
    pipe = toy_pipeline(args.seed)
    train_vae(pipe.vae, args.vae_steps, args.batch, rng, log)
    fold_latent_scale(pipe.vae, pipe.vae.config.scaling_factor, rng)
    train_unet(pipe, args.unet_steps, args.batch * 2, args.copies, rng, log)
    save(pipe, args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps({"name": "train_toy_model", "seconds": round(time.time() - start), **vars(args) | {"out": str(args.out), "quick": args.quick}}))


if __name__ == "__main__":
    main()
