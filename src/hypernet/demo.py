"""The README's demo: a tiny SD 1.x model saved and loaded like a user's checkpoint, a new hypernetwork created,
inspected and applied to the model's text context, with what changed printed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the demo's output is the story, not library chatter
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch
from rich.console import Console
from rich.table import Table

from hypernet.cli import describe_file
from hypernet.engine.attention import attention_widths, install_hypernetworks
from hypernet.engine.checkpoints import load_pipeline
from hypernet.network import Hypernetwork, load_hypernetwork
from hypernet.testing import save_single_file, tiny_pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where the demo writes its files")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    out: Path = args.out

    with console.status("building a tiny SD 1.x model and saving it as a single-file checkpoint"):
        checkpoint = save_single_file(tiny_pipeline("sd1", seed=0), out / "models/Stable-diffusion/tiny-sd1.safetensors", "sd1")
        pipe, info = load_pipeline(checkpoint)
    unet_widths = sorted({m.to_k.in_features for m in pipe.unet.modules() if getattr(m, "is_cross_attention", None) is False})
    console.print(f"[bold]1. Model[/bold] {checkpoint} -> {info.family}, text width {info.text_widths}, UNet attention widths {unet_widths}")

    widths = [*info.text_widths, *unet_widths]
    net = Hypernetwork.create("demo", widths, activation_func="swish", add_layer_norm=False, weight_init="XavierNormal", seed=1)
    path = net.save(out / "models/hypernetworks/demo.pt")
    console.print(f"[bold]2. Created[/bold] {path} (A1111 .pt format)")
    table = Table(show_header=False)
    for key, value in describe_file(path).items():
        table.add_row(key, str(value))
    console.print(table)

    net = load_hypernetwork(path)
    ids = pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = pipe.text_encoder(ids).last_hidden_state
    console.print(f"[bold]3. Applied[/bold] to the text context of 'a photo of a cat' {tuple(context.shape)}:")
    change = Table("multiplier", "key context changed by", "value context changed by")
    with torch.no_grad():
        for m in (0.0, 0.5, 1.0, 1.5):
            k, v = net.apply(context, m)
            rel = lambda t: f"{((t - context).norm() / context.norm()).item():.1%}"  # noqa: E731
            change.add_row(f"{m}", rel(k), rel(v))
    console.print(change)

    stack = install_hypernetworks(pipe.unet)
    stack.set([(net, 1.0)])
    hits = {w: n for w, n in attention_widths(pipe.unet).items() if net.modules_for(w) is not None}
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_net = pipe.unet(latents, 500, encoder_hidden_states=context).sample
        stack.set([])
        plain = pipe.unet(latents, 500, encoder_hidden_states=context).sample
    console.print(
        "[bold]4. In the UNet[/bold] the network acts on "
        + ", ".join(f"{n} attention layers of width {w}" for w, n in sorted(hits.items()))
        + f"; one denoising step's output changed by {((with_net - plain).norm() / plain.norm()).item():.1%}."
    )


if __name__ == "__main__":
    main()
