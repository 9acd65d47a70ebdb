"""Train hypernet's embedded toy model from scratch on the procedural toy world, on the CPU.

    .venv/bin/python scripts/train_toy_model.py            # ~1 hour on 2 cores; writes src/hypernet/assets/toy/
    .venv/bin/python scripts/train_toy_model.py --quick    # a few minutes, for trying the script itself

Phase 1 trains the VAE as an autoencoder. Like SD's, it is a general codec rather than part of what the prompt
controls: a third of its images are recoloured by a filter (sepia, or the named colours in swapped roles), so it
can draw the demo's sepia style, which the UNet and the text encoder never see. Its latent scale is then folded into its weights so SD 1.x's fixed
scaling factor (0.18215) is right for it, and its posterior is made as narrow as SD's (the log-variance head
predicts a fixed, tiny variance), so img2img and A1111's "once" latent sampling see the image, not noise. Phase 2
trains the UNet and the text encoder together on cached latents, dropping 10% of captions so classifier-free
guidance works. The result is written as an A1111-style single-file checkpoint (fp16, unused token embeddings
zeroed, the settings it suits in its metadata), so `load_pipeline` loads it like any user's checkpoint.
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
from PIL import Image

from hypernet.fileio import atomic_write_bytes
from hypernet.testing import ldm_state_dict
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.engine.model_defaults import METADATA_KEY
from hypernet.toy.model import RECORDED_DEFAULTS, toy_pipeline
from hypernet.toy.world import BACKGROUNDS, COLOURS, render, sepia, split_scenes


def images_tensor(images: list) -> torch.Tensor:
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(a).permute(0, 3, 1, 2)


LATENT_NOISE = 0.05  # relative to the latents' std, added while training the VAE


def recoloured(scene, rng: random.Random):  # noqa: ANN001, ANN201
    """A VAE training image: the scene as named, or through a colour filter the UNet never sees."""
    choice = rng.randrange(6)
    if choice == 4:
        return sepia(render(scene, rng))
    if choice == 5:  # two named colours in either role
        fg, bg = rng.sample([*COLOURS.values(), *BACKGROUNDS.values()], 2)
        return render(scene, rng, palette=(fg, bg))
    return render(scene, rng)


def train_vae(vae, steps: int, batch: int, lr: float, rng: random.Random, log) -> None:  # noqa: ANN001
    train, _ = split_scenes()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    vae.train()
    losses: list[float] = []
    for step in range(steps):
        x = images_tensor([recoloured(rng.choice(train), rng) for _ in range(batch)])
        mean = vae.encode(x).latent_dist.mean
        # a deterministic autoencoder with a little latent noise (so the decoder tolerates the UNet's small errors):
        # sampling the untrained posterior (std 1) would drown the latents and the VAE would learn far slower
        z = mean + LATENT_NOISE * mean.detach().std() * torch.randn_like(mean)
        recon = vae.decode(z).sample
        # the shape is ~15% of the pixels but all of what the prompt asks for: weight its pixels 5x
        shape = ((x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.1).float()
        weight = 1 + 4 * shape
        loss = (weight * ((recon - x).abs() + (recon - x) ** 2)).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(F.l1_loss(recon, x).item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} L1 (last 100) {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    vae.eval()
    check_vae(vae, rng, log)


def pil_images(batch: torch.Tensor) -> list[Image.Image]:
    """The inverse of images_tensor: [-1, 1] NCHW to RGB images."""
    return [Image.fromarray(((x.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()) for x in batch]


@torch.no_grad()
def check_vae(vae, rng: random.Random, log) -> None:  # noqa: ANN001
    """The ceiling for the whole model: do the detectors read colour and shape back from VAE reconstructions?"""
    from hypernet.toy.world import detect_colour, detect_shape, style_score

    train, held = split_scenes()
    scenes = [rng.choice(train + held) for _ in range(64)]
    images = [render(s, rng) for s in scenes]
    recon = vae.decode(vae.encode(images_tensor(images)).latent_dist.mean).sample
    pics = pil_images(recon)
    colour = sum(detect_colour(p) == s.colour for p, s in zip(pics, scenes)) / len(scenes)
    shape = sum(detect_shape(p) == s.shape for p, s in zip(pics, scenes)) / len(scenes)
    sep = vae.decode(vae.encode(images_tensor([sepia(im) for im in images[:16]])).latent_dist.mean).sample
    sep_pics = pil_images(sep)
    log(f"vae reconstructions: colour {colour:.0%}, shape {shape:.0%}, sepia score {np.mean([style_score(p) for p in sep_pics]):.2f}")
    wrong = [(s, p) for s, p in zip(scenes, pics) if detect_colour(p) != s.colour or detect_shape(p) != s.shape]
    for s, p in wrong[:8]:
        log(f"  misread: {s.caption} -> {detect_colour(p)} {detect_shape(p)}")


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


POSTERIOR_STD = 1e-3  # the posterior's std in the UNet's (unit-variance) latent units; SD's VAE is nearly deterministic


@torch.no_grad()
def narrow_posterior(vae) -> None:  # noqa: ANN001
    """Make the posterior SD-like: the VAE is trained as a deterministic autoencoder, so its log-variance head is
    untrained (std ~18 against a latent std of ~5.4), and any sampler of ``latent_dist`` (img2img, training with
    "once") would decode noise. A constant log-variance (weights zero, bias fixed) gives every latent the same tiny
    std, like SD's VAE, whose predicted log-variances are all very small."""
    c = vae.config.latent_channels
    vae.quant_conv.weight[c:] = 0
    vae.quant_conv.bias[c:] = 2 * math.log(POSTERIOR_STD / vae.config.scaling_factor)


def train_unet(pipe, steps: int, batch: int, lr: float, copies: int, rng: random.Random, log, checkpoint) -> None:  # noqa: ANN001
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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.03)
    pipe.unet.train()
    pipe.text_encoder.train()
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    losses: list[float] = []
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
        losses.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss (last 200) {sum(losses[-200:]) / len(losses[-200:]):.4f}")
        if (step + 1) % 1000 == 0 and step < steps - 1:
            checkpoint()  # a long run leaves something usable if it is stopped
    pipe.unet.eval()
    pipe.text_encoder.eval()


def save(pipe, path: Path) -> None:  # noqa: ANN001
    """fp16 single file; token embeddings of words the toy world never uses are zeroed (they compress away)."""
    training = pipe.unet.training
    pipe.unet.eval()
    pipe.text_encoder.eval()
    train, held = split_scenes()
    used = {t for ids in pipe.tokenizer([s.caption for s in train + held] + [""])["input_ids"] for t in ids}
    with torch.no_grad():
        emb = pipe.text_encoder.embeddings.token_embedding.weight
        keep = torch.zeros(emb.shape[0], dtype=torch.bool)
        keep[list(used)] = True
        emb[~keep] = 0
    state = {k: v.half().contiguous() for k, v in ldm_state_dict(pipe, "sd1").items()}
    atomic_write_bytes(path, safetensors.torch.save(state, metadata={
        "trained_by": "scripts/train_toy_model.py", METADATA_KEY: json.dumps(RECORDED_DEFAULTS)}))
    pipe.unet.train(training)
    pipe.text_encoder.train(training)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--vae-lr", type=float, default=2e-3, help="peak learning rate of the VAE's one-cycle schedule")
    parser.add_argument("--unet-batch", type=int, default=64)
    parser.add_argument("--unet-lr", type=float, default=1e-3, help="peak learning rate of the UNet's one-cycle schedule")
    parser.add_argument("--init-from", type=Path, help="start from a checkpoint this script wrote (use --vae-steps 0)")
    parser.add_argument("--copies", type=int, default=12, help="jittered renders per training scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-out", type=Path, help="also save the trained VAE here (a torch state dict)")
    parser.add_argument("--vae-from", type=Path, help="start phase 1 from a VAE saved with --vae-out")
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--quick", action="store_true", help="tiny step counts, to try the script")
    args = parser.parse_args()
    if args.quick:
        args.vae_steps, args.unet_steps, args.copies = 10, 20, 1
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.time()
    log = lambda msg: print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)  # noqa: E731
    pipe = toy_pipeline(args.seed)
    if args.init_from:  # continue training a model this script wrote (all three parts)
        from hypernet.engine.checkpoints import load_pipeline

        earlier, _ = load_pipeline(args.init_from)
        for name in ("vae", "unet", "text_encoder"):
            getattr(pipe, name).load_state_dict(getattr(earlier, name).state_dict())
    if args.vae_from:  # continue from a VAE saved by an earlier run (--vae-steps 0: use it as it is)
        pipe.vae.load_state_dict(torch.load(args.vae_from, weights_only=True))
        pipe.vae.eval()
        check_vae(pipe.vae, rng, log)
    if args.vae_steps:
        train_vae(pipe.vae, args.vae_steps, args.vae_batch, args.vae_lr, rng, log)
        fold_latent_scale(pipe.vae, pipe.vae.config.scaling_factor, rng)
        if args.vae_out:
            torch.save(pipe.vae.state_dict(), args.vae_out)
    narrow_posterior(pipe.vae)  # also fixes a checkpoint from before it (--init-from FILE --vae-steps 0 --unet-steps 0)
    if args.unet_steps:  # 0: stop after the VAE (with --vae-out)
        train_unet(pipe, args.unet_steps, args.unet_batch, args.unet_lr, args.copies, rng, log, lambda: save(pipe, args.out))
    save(pipe, args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps({"name": "train_toy_model", "seconds": round(time.time() - start)} | {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}))


if __name__ == "__main__":
    main()
