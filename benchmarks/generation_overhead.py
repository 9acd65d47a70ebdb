#!/usr/bin/env python
"""What a hypernetwork costs per generation: plain UNet vs the A1111 way vs hypernet's network stack.

An SD1.5-architecture UNet (real widths, random seeded weights, fp32, CPU, batch 2 as with CFG) is timed at
latents 32x32 (256 px) and 64x64 (512 px) in these variants:

* ``plain``          diffusers' default ``AttnProcessor2_0``, no hook anywhere;
* ``a1111_linear``   a default 768/320/640/1280 1-2-1 *linear* network applied the A1111 way: the network on the
                     context of EVERY ``to_k``/``to_v`` call (self and cross), nothing cached, nothing folded
                     (:class:`A1111WayHooks`, written here as the baseline);
* ``a1111_swish``    the same with a *swish* network (A1111's "swish" is Hardswish);
* ``hypernet_swish_bf16``  hypernet's path with ``--hypernetwork-precision bf16`` (the user's opt-in: the
                     networks run in bfloat16, ~1e-3 relative error; never the default);
* ``hypernet_linear`` / ``hypernet_swish``  hypernet's own path (``install_hypernetworks`` + ``stack.applied``):
                     hooks on ``to_k``/``to_v``; a linear network is composed into one affine map per width, which
                     each self-attention layer either folds into its weights or applies to its tokens, whichever
                     costs less for the tokens it has seen with that network (rent or buy); the text context is
                     transformed once per prompt; *cold*: caches cleared before every generation;
* ``hypernet_linear_warm``  the same, as the SECOND generation with the network (one untimed generation first):
                     the composed maps are reused, and layers fold once their tokens have paid for it;
* ``hypernet_linear_folded``  a later request once every layer has folded (what a server answers after a few
                     requests with the same network): no per-token work left.

One timed "generation" is entering the scope (networks chosen) followed by ``--steps`` UNet forwards with the same
latents and the SAME context tensor object, so hypernet's one-time work (fold, text transform) is inside the
timing. Variants are interleaved round-robin inside every repeat (the start rotates),
after a warm-up round; medians are reported. hypernet's output is checked against the A1111-way output (same
inputs) so speed is never bought with wrong numbers. MACs come from ``torch.utils.flop_counter.FlopCounterMode``
(flops / 2) on one forward per variant, run on a meta-device copy of the model (same graph, no arithmetic).

Run (full: about 13 minutes on 2 idle cores)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generation_overhead.py

On a shared machine (others' jobs on the cores) two OpenMP threads spend most of their time waiting for each
other and the ratios drown in noise; one thread timed on this process's CPU clock is robust (about 20 minutes
with one 512 px repeat)::

    .venv/bin/python benchmarks/generation_overhead.py --threads 1 --clock cpu --repeats 3 1

Quick smoke run::

    .venv/bin/python benchmarks/generation_overhead.py --sizes 32 --steps 1 --repeats 1 --warmup-steps 0

The LAST line of stdout is one JSON object: ``{"name": "generation_overhead", "ratio": <hypernet swish /
A1111-way swish at the largest size>, ...}``. Goals (set by a prototype on a 2-core CPU): A1111 way +14-17% over
plain; hypernet linear <= 1.03x plain cold (4 steps) and <= 1.01x warm (second generation); hypernet swish <= 0.94x (256 px) and
<= 0.96x (512 px) the A1111 way.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import contextlib
from collections.abc import Callable, Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

import hypernet  # noqa: E402
from hypernet import Hypernetwork, apply_stack  # noqa: E402
from hypernet.engine.attention import install_hypernetworks  # noqa: E402

# runwayml/stable-diffusion-v1-5 unet/config.json (the keys that shape the model; the rest are diffusers defaults).
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
NETWORK_WIDTHS = (768, 320, 640, 1280)
BATCH = 2  # CFG: unconditional + conditional in one batch
TEXT_TOKENS = 77
VARIANTS = ("plain", "a1111_linear", "a1111_swish", "hypernet_linear", "hypernet_linear_warm",
            "hypernet_linear_folded", "hypernet_swish", "hypernet_swish_bf16")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- the baseline
class A1111WayHooks:
    """The A1111 way, as its attention hook does it: ``k = to_k(hn_k(context))``, ``v = to_v(hn_v(context))`` on
    EVERY attention call (self-attention: context = the hidden states; cross-attention: the text embedding),
    recomputed each time: no caching, no folding. The attention itself is the model's own SDPA processor."""

    def __init__(self) -> None:
        self.entries: list[tuple[Hypernetwork, float]] = []
        self.handles: list = []

    def install(self, unet: torch.nn.Module) -> None:
        for module in unet.modules():
            if isinstance(module, Attention):
                for which, linear in enumerate((module.to_k, module.to_v)):
                    self.handles.append(linear.register_forward_pre_hook(
                        lambda _, args, which=which: (apply_stack(self.entries, args[0])[which],)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


# --------------------------------------------------------------------------------------------- the variants
class Variant:
    """How one variant is installed on a UNet (outside the timing), the untimed generations that bring the stack to
    the state it measures (``prime``: how many, with which scope), and the scope of one timed generation."""

    def __init__(self, name: str, install: Callable[[torch.nn.Module], None],
                 scope: Callable[[int], contextlib.AbstractContextManager],
                 prime: tuple[int, Callable[[int], contextlib.AbstractContextManager]] | None = None) -> None:
        self.name, self.install, self.scope, self.prime = name, install, scope, prime


def make_variants(unet: torch.nn.Module, networks: dict[str, Hypernetwork], multiplier: float) -> dict[str, Variant]:
    """hypernet's stack stays on the UNet throughout (with nothing applied it adds no hook: ``plain`` is plain), so
    the warm variant finds the folds its previous generation made."""
    stack = install_hypernetworks(unet)
    a1111 = A1111WayHooks()
    unet.set_attn_processor(AttnProcessor2_0())

    def plain_install(_: torch.nn.Module) -> None:
        a1111.remove()

    def a_install(u: torch.nn.Module) -> None:
        a1111.remove()
        a1111.install(u)

    @contextlib.contextmanager
    def a_scope(entries: list, steps: int) -> Iterator[None]:
        a1111.entries = list(entries)
        yield

    @contextlib.contextmanager
    def h_scope(entries: list, steps: int | None, *, cold: bool = True, dtype: torch.dtype | None = None) -> Iterator[None]:
        if cold:  # forget the maps and folds a previous generation with the same networks would reuse
            stack.clear_caches()
        with stack.applied(entries, dtype=dtype, expected_calls=steps):
            yield

    variants = {"plain": Variant("plain", plain_install, lambda steps: contextlib.nullcontext())}
    for kind, hn in networks.items():
        e = [(hn, multiplier)]
        variants[f"a1111_{kind}"] = Variant(f"a1111_{kind}", a_install, lambda steps, e=e: a_scope(e, steps))
        variants[f"hypernet_{kind}"] = Variant(f"hypernet_{kind}", plain_install, lambda steps, e=e: h_scope(e, steps))
    linear = [(networks["linear"], multiplier)]
    # warm: the SECOND generation with the network (one untimed first generation after clearing the caches)
    variants["hypernet_linear_warm"] = Variant(
        "hypernet_linear_warm", plain_install, lambda steps: h_scope(linear, steps, cold=False),
        prime=(1, lambda steps: h_scope(linear, steps)))
    # folded: a later request once every layer has earned its fold (primed by one long scope, which folds them all)
    variants["hypernet_linear_folded"] = Variant(
        "hypernet_linear_folded", plain_install, lambda steps: h_scope(linear, steps, cold=False),
        prime=(1, lambda steps: h_scope(linear, None)))
    swish = [(networks["swish"], multiplier)]
    variants["hypernet_swish_bf16"] = Variant(  # --hypernetwork-precision bf16: the user's opt-in, not the default
        "hypernet_swish_bf16", plain_install, lambda steps: h_scope(swish, steps, dtype=torch.bfloat16))
    return {name: variants[name] for name in VARIANTS}


def build_unet(seed: int, device: str | None = None) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    if device is None:
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    else:
        with torch.device(device):
            unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    return unet.eval().requires_grad_(False)


def build_networks(seed: int) -> dict[str, Hypernetwork]:
    """Default "Create hypernetwork" networks: widths 768/320/640/1280, layers 1-2-1, Normal init."""
    return {
        "linear": Hypernetwork.create("bench-linear", NETWORK_WIDTHS, activation_func="linear", seed=seed),
        "swish": Hypernetwork.create("bench-swish", NETWORK_WIDTHS, activation_func="swish", seed=seed + 1),
    }


def generation(
    unet: UNet2DConditionModel, variant: Variant, latents: torch.Tensor, context: torch.Tensor, steps: int
) -> tuple[float, float, torch.Tensor]:
    """One timed generation: the variant's scope (networks applied) around ``steps`` forwards on one context tensor,
    after the variant's untimed priming generations."""
    timesteps = torch.linspace(999, 1, max(steps, 1)).round().long()
    if variant.prime is not None:
        count, scope = variant.prime
        for _ in range(count):
            with scope(steps):
                for i in range(steps):
                    unet(latents, timesteps[i], encoder_hidden_states=context, return_dict=False)
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = latents
    with variant.scope(steps):
        for i in range(steps):
            out = unet(latents, timesteps[i], encoder_hidden_states=context, return_dict=False)[0]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return wall, cpu, out


# --------------------------------------------------------------------------------------------- MACs
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode does not know CPU's fused SDPA op; count it like the GPU ones (it is the same two matmuls).
_EXTRA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_macs(
    seed: int, networks: dict[str, Hypernetwork], multiplier: float, size: int
) -> dict[str, dict[str, int]]:
    """MACs of the first forward of a generation (one-time work included) and of a later one, per variant.

    Counted on a meta-device copy (shapes only, instant); the processors are the same objects as timed.
    """
    with torch.device("meta"):
        unet = build_unet(seed, "meta")
        meta_nets = {k: copy.deepcopy(hn).to("meta") for k, hn in networks.items()}
        variants = make_variants(unet, meta_nets, multiplier)
        latents = torch.empty(BATCH, 4, size, size)
        context = torch.empty(BATCH, TEXT_TOKENS, SD15_UNET_CONFIG["cross_attention_dim"])
        t = torch.tensor(500)
        out: dict[str, dict[str, int]] = {}
        with torch.no_grad():
            for name, variant in variants.items():
                variant.install(unet)
                counts = []
                with variant.scope(4):
                    for _ in range(2):
                        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as fc:
                            unet(latents, t, encoder_hidden_states=context, return_dict=False)
                        counts.append(fc.get_total_flops() // 2)
                out[name] = {"first_step": counts[0], "per_step": counts[1]}
    return out


def broadcast(values: Sequence[int], n: int, what: str) -> list[int]:
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise SystemExit(f"--{what}: give one value or one per size ({n})")
    return list(values)


def ratio(a: float, b: float) -> float:
    return round(a / b, 4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="latent sizes (px / 8); default 32 64")
    parser.add_argument("--steps", type=int, nargs="+", default=[4], help="UNet forwards per generation (one value or one per size)")
    parser.add_argument("--repeats", type=int, nargs="+", default=[3], help="timed rounds per size (one value or one per size)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps of the untimed warm-up round (0: none)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock of the headline numbers: wall (perf_counter) or this process's CPU time (robust to other load "
        "on a shared machine when --threads 1; with more threads OpenMP spin-waits inflate it). Both are reported.",
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="measure only these (e.g. plain a1111_linear hypernet_linear hypernet_linear_warm)")
    parser.add_argument("--multiplier", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |hypernet - A1111 way| / max |A1111 way|")
    parser.add_argument("--macs", action="store_true", help="count MACs on a meta-device copy (hypernet's folds are "
                        "not made on meta weights, so its count is the apply-by-tokens path)")
    args = parser.parse_args(argv)

    sizes = args.sizes
    steps = broadcast(args.steps, len(sizes), "steps")
    repeats = broadcast(args.repeats, len(sizes), "repeats")
    if min(steps) < 1 or min(repeats) < 1 or min(sizes) < 8 or any(s % 8 for s in sizes):
        raise SystemExit("--steps and --repeats must be >= 1; --sizes multiples of 8 (the UNet halves them 3 times)")
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    log(
        f"generation_overhead: torch {torch.__version__}, threads {torch.get_num_threads()}, sizes {sizes}, "
        f"steps {steps}, repeats {repeats}, warm-up steps {args.warmup_steps}, batch {BATCH}, clock {args.clock}"
    )

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        if torch.get_num_threads() > 1:
            why = (
                f"with {torch.get_num_threads()} threads every parallel region waits for a descheduled thread, which "
                "swamps the differences measured here (consider --threads 1 --clock cpu, or a quiet machine)"
            )
        else:
            why = "wall times will be noisy; --clock cpu is not (one thread, no spin-waits)"
        log(f"WARNING: load average {load_before[0]:.2f} before start: other processes compete for the cores; {why}")
    t0 = time.perf_counter()
    unet = build_unet(args.seed)
    networks = build_networks(args.seed + 100)
    variants = {n: v for n, v in make_variants(unet, networks, args.multiplier).items() if n in args.variants}
    gen = torch.Generator().manual_seed(args.seed + 1)
    context = torch.randn(BATCH, TEXT_TOKENS, SD15_UNET_CONFIG["cross_attention_dim"], generator=gen)
    log(f"built SD1.5 UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M params) in {time.perf_counter() - t0:.1f}s")

    result: dict[str, object] = {"name": "generation_overhead"}
    ratios: dict[str, float] = {}
    paired: dict[str, float] = {}
    other_ratios: dict[str, float] = {}
    other_medians: dict[str, dict[str, float]] = {}
    medians: dict[str, dict[str, float]] = {}
    per_step: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    macs: dict[str, dict[str, dict[str, int]]] = {}
    diffs: dict[str, dict[str, float]] = {}
    checks_ok = True

    pairs = {  # ratio name -> (numerator, denominator)
        "a1111_vs_plain": ("a1111_swish", "plain"),
        "a1111_linear_vs_plain": ("a1111_linear", "plain"),
        "a1111_swish_vs_plain": ("a1111_swish", "plain"),
        "hypernet_linear_vs_plain": ("hypernet_linear", "plain"),
        "hypernet_linear_warm_vs_plain": ("hypernet_linear_warm", "plain"),
        "hypernet_linear_folded_vs_plain": ("hypernet_linear_folded", "plain"),
        "hypernet_linear_vs_a1111": ("hypernet_linear", "a1111_linear"),
        "hypernet_swish_vs_a1111": ("hypernet_swish", "a1111_swish"),
        "hypernet_swish_vs_plain": ("hypernet_swish", "plain"),
        "hypernet_swish_bf16_vs_a1111": ("hypernet_swish_bf16", "a1111_swish"),
    }

    with torch.no_grad():
        for size, n_steps, n_rep in zip(sizes, steps, repeats):
            px = size * 8
            key = f"{px}px"
            latents = torch.randn(BATCH, 4, size, size, generator=gen)
            names = list(variants)
            walls: dict[str, list[float]] = {n: [] for n in names}
            cpus: dict[str, list[float]] = {n: [] for n in names}
            outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}

            rounds = [("warm-up", args.warmup_steps)] if args.warmup_steps > 0 else []
            rounds += [(f"repeat {r + 1}/{n_rep}", n_steps) for r in range(n_rep)]
            for r, (label, s) in enumerate(rounds):
                shift = r % len(names)
                order = names[shift:] + names[:shift]  # round robin: every variant takes every position
                for name in order:
                    variants[name].install(unet)
                    wall, cpu, out = generation(unet, variants[name], latents, context, s)
                    outputs[name].append(out)
                    if label != "warm-up":
                        walls[name].append(wall)
                        cpus[name].append(cpu)
                    log(f"  {key} {label:>13} {name:<16} {s} step(s) {wall:8.2f}s wall {cpu:8.2f}s cpu")

            # Correctness: same inputs, so hypernet must reproduce the A1111 way (and the network must matter).
            d: dict[str, float] = {}
            for kind in [k for k in networks if f"a1111_{k}" in outputs and f"hypernet_{k}" in outputs]:
                ref = torch.stack(outputs[f"a1111_{kind}"])
                got = torch.stack(outputs[f"hypernet_{kind}"])
                scale = ref.abs().max().item()
                d[f"hypernet_{kind}_vs_a1111_max_abs"] = (got - ref).abs().max().item()
                d[f"hypernet_{kind}_vs_a1111_rel"] = d[f"hypernet_{kind}_vs_a1111_max_abs"] / scale
                d[f"a1111_{kind}_vs_plain_rel"] = (ref - torch.stack(outputs["plain"])).abs().max().item() / scale
                ok = d[f"hypernet_{kind}_vs_a1111_rel"] < args.tolerance and torch.isfinite(got).all().item()
                ok = ok and d[f"a1111_{kind}_vs_plain_rel"] > 10 * d[f"hypernet_{kind}_vs_a1111_rel"]
                checks_ok &= bool(ok)
                log(
                    f"  {key} check {kind}: max|hypernet - A1111 way| = {d[f'hypernet_{kind}_vs_a1111_max_abs']:.3g} "
                    f"(rel {d[f'hypernet_{kind}_vs_a1111_rel']:.3g}); the network moves the output by "
                    f"rel {d[f'a1111_{kind}_vs_plain_rel']:.3g} -> {'OK' if ok else 'FAIL'}"
                )
            for later in ("hypernet_linear_warm", "hypernet_linear_folded"):
                if {"a1111_linear", later} <= set(outputs):
                    ref = torch.stack(outputs["a1111_linear"])
                    d[f"{later}_vs_a1111_rel"] = (torch.stack(outputs[later]) - ref).abs().max().item() / ref.abs().max().item()
                    checks_ok &= d[f"{later}_vs_a1111_rel"] < args.tolerance
            if {"a1111_swish", "hypernet_swish_bf16"} <= set(outputs):
                ref = torch.stack(outputs["a1111_swish"])
                d["hypernet_swish_bf16_vs_a1111_rel"] = (torch.stack(outputs["hypernet_swish_bf16"]) - ref).abs().max().item() / ref.abs().max().item()
                checks_ok &= d["hypernet_swish_bf16_vs_a1111_rel"] < 0.1 * d["a1111_swish_vs_plain_rel"] + 1e-3
            diffs[key] = {k: float(f"{v:.4g}") for k, v in d.items()}

            times, other = (walls, cpus) if args.clock == "wall" else (cpus, walls)
            med = {n: statistics.median(times[n]) for n in names}
            medo = {n: statistics.median(other[n]) for n in names}
            medians[key] = {n: round(v, 4) for n, v in med.items()}
            other_medians[key] = {n: round(v, 4) for n, v in medo.items()}
            per_step[key] = {n: round(v / n_steps, 4) for n, v in med.items()}
            spread[key] = {n: round((max(times[n]) - min(times[n])) / med[n], 4) for n in names}
            for rname, (num, den) in pairs.items():
                if num not in med or den not in med:
                    continue
                ratios[f"{rname}_{key}"] = ratio(med[num], med[den])
                paired[f"{rname}_{key}"] = round(statistics.median(a / b for a, b in zip(times[num], times[den])), 4)
                other_ratios[f"{rname}_{key}"] = ratio(medo[num], medo[den])
            log(f"  {key} medians ({args.clock} s/generation): " + ", ".join(f"{n} {v:.2f}" for n, v in med.items()))
            log(f"  {key} ratios: " + ", ".join(f"{r} {ratios[f'{r}_{key}']}" for r in pairs if f"{r}_{key}" in ratios))

            if args.macs:
                macs[key] = count_macs(args.seed, networks, args.multiplier, size)
                log(
                    f"  {key} GMACs per step (first step): "
                    + ", ".join(f"{n} {m['per_step'] / 1e9:.1f} ({m['first_step'] / 1e9:.1f})" for n, m in macs[key].items())
                )
                for n in names:
                    macs[key][n]["per_generation"] = macs[key][n]["first_step"] + (n_steps - 1) * macs[key][n]["per_step"]

    load_after = os.getloadavg()

    head = f"{sizes[-1] * 8}px"
    goals = {}
    for key in medians:
        limit = {"256px": 0.94, "512px": 0.96}.get(key, 0.96)
        for goal, rname, bound in (
            ("hypernet_linear_vs_plain_{key}<=1.03 (cold)", "hypernet_linear_vs_plain", 1.03),
            ("hypernet_linear_warm_vs_plain_{key}<=1.01", "hypernet_linear_warm_vs_plain", 1.01),
            ("hypernet_swish_vs_a1111_{key}<={limit}", "hypernet_swish_vs_a1111", limit),
            ("hypernet_swish_bf16_vs_a1111_{key}<={limit} (opt-in bf16)", "hypernet_swish_bf16_vs_a1111", limit),
        ):
            if f"{rname}_{key}" in ratios:
                goals[goal.format(key=key, limit=limit)] = ratios[f"{rname}_{key}"] <= bound
    result.update(
        {
            "ratio": ratios.get(f"hypernet_swish_vs_a1111_{head}", ratios.get(f"hypernet_linear_warm_vs_plain_{head}")),
            "ratio_at": head,
            **ratios,
            "goals_met": goals,
            "outputs_match": checks_ok,
            "paired_ratios": paired,
            "clock": args.clock,
            f"{'cpu' if args.clock == 'wall' else 'wall'}_clock_ratios": other_ratios,
            "median_s_per_generation": medians,
            f"{'cpu' if args.clock == 'wall' else 'wall'}_clock_median_s_per_generation": other_medians,
            "median_s_per_step": per_step,
            "spread_over_median": spread,
            "macs": macs,
            "max_diff": diffs,
            "steps": dict(zip((f"{s * 8}px" for s in sizes), steps)),
            "repeats": dict(zip((f"{s * 8}px" for s in sizes), repeats)),
            "warmup_steps": args.warmup_steps,
            "batch": BATCH,
            "multiplier": args.multiplier,
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "hypernet": hypernet.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            "total_s": round(time.perf_counter() - t0, 1),
        }
    )
    print(json.dumps(result), flush=True)
    if not checks_ok:
        print("hypernet's output differs from the A1111 way (see max_diff)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
