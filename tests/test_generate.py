"""Generation with hypernetworks on tiny SD 1.x / 2.x / XL checkpoints loaded from single files, as users have them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hypernet import Hypernetwork, HypernetError
from hypernet.cli import main as cli_main
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext, read_infotext
from hypernet.testing import save_single_file, tiny_pipeline

FAST = dict(steps=3, width=64, height=64, seed=7, sampler_name="Euler")


@pytest.fixture(scope="module", params=["sd1", pytest.param("sd2", marks=pytest.mark.slow), pytest.param("sdxl", marks=pytest.mark.slow)])
def setup(request, tmp_path_factory) -> tuple[str, Generator, Path]:
    family = request.param
    root = tmp_path_factory.mktemp(family)
    checkpoint = save_single_file(tiny_pipeline(family), root / f"tiny-{family}.safetensors", family)
    pipe, info = load_pipeline(checkpoint)
    hn_dir = root / "hypernetworks"
    text = sum(info.text_widths)
    Hypernetwork.create("style", [text, 32, 64], activation_func="swish", weight_init="XavierNormal", seed=1).save(hn_dir / "style.pt")
    Hypernetwork.create("flat", [text, 32, 64], weight_init="XavierNormal", seed=2).save(hn_dir / "sub" / "flat.pt")
    Hypernetwork.create("sd1only", [768, 320], seed=3).save(hn_dir / "sd1only.pt")
    return family, Generator(pipe, info, hn_dir), root


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in result.images])


@pytest.mark.slow
def test_network_changes_image_and_multiplier_zero_is_exactly_plain(setup) -> None:
    family, gen, _ = setup
    plain = gen.generate(Settings("a castle", **FAST))
    styled = gen.generate(Settings("a castle <hypernet:style:0.9>", **FAST))
    zero = gen.generate(Settings("a castle <hypernet:style:0>", **FAST))
    assert np.array_equal(pixels(zero), pixels(plain))
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 0.5
    applied = styled.applied[0]
    assert applied.name == "style" and applied.multiplier == 0.9 and applied.layers_by_width
    again = gen.generate(Settings("a castle", **FAST))
    assert np.array_equal(pixels(again), pixels(plain)), "networks must not leak into the next generation"


def test_fold_survives_across_generations_with_the_same_networks(setup) -> None:
    """A server answering the same linear network twice folds it once: the second generation samples with the very
    parameters the first one made, and the model has its own weights back in between."""
    from hypernet.engine.generate import Hooks

    family, gen, _ = setup
    if family != "sd1":
        pytest.skip("family-independent")
    to_k = next(m for name, m in gen.pipe.unet.named_modules() if name.endswith("attn1.to_k"))
    own = to_k.weight
    seen: list = []
    hooks = Hooks(latents=lambda _: seen.append(to_k.weight))
    first = gen.generate(Settings("a castle <hypernet:flat:0.7>", **FAST), hooks=hooks)
    assert to_k.weight is own
    second = gen.generate(Settings("a castle <hypernet:flat:0.7>", **FAST), hooks=hooks)
    assert seen[0] is not own and all(w is seen[0] for w in seen), "one fold, made once, used by every step"
    assert np.array_equal(pixels(first), pixels(second))
    gen.generate(Settings("a castle <hypernet:flat:0.6>", **FAST), hooks=hooks)  # another multiplier: a new fold
    assert seen[-1] is not seen[0] and to_k.weight is own


def test_loaded_networks_are_a_bounded_cache(setup) -> None:
    family, gen, root = setup
    if family != "sd1":
        pytest.skip("family-independent")
    small = Generator(gen.pipe, gen.info, root / "hypernetworks", max_loaded_networks=1)
    style, flat = root / "hypernetworks" / "style.pt", root / "hypernetworks" / "sub" / "flat.pt"
    first = small.network(style)
    assert small.network(style) is first, "an unchanged file is loaded once"
    small.network(flat)
    assert small.network(style) is not first, "the least recently used network was let go"


def test_same_seed_same_image_and_batches(setup) -> None:
    _, gen, _ = setup
    a = gen.generate(Settings("a tree <hypernet:flat:0.5>", batch_size=2, **FAST))
    b = gen.generate(Settings("a tree <hypernet:flat:0.5>", batch_size=2, **FAST))
    assert a.seeds == [7, 8] and np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a)[0], pixels(a)[1])


def test_stacked_networks_and_infotext(setup) -> None:
    family, gen, _ = setup
    r = gen.generate(Settings("a <hypernet:style:0.7> b <hypernet:flat>", negative_prompt="blurry", **FAST))
    assert [(a.name, a.multiplier) for a in r.applied] == [("style", 0.7), ("flat", 1.0)]
    info = parse_infotext(r.infotexts[0])
    assert info["Prompt"] == "a <hypernet:style:0.7> b <hypernet:flat>"
    assert info["Negative prompt"] == "blurry"
    assert info["Seed"] == "7" and info["Size-1"] == "64" and info["Sampler"] == "Euler"
    assert info["Model"] == f"tiny-{family}" and len(info["Model hash"]) == 10


def test_sd_hypernetwork_setting_adds_the_network(setup) -> None:
    _, gen, _ = setup
    r = gen.generate(Settings("a dog", sd_hypernetwork="style", extra_networks_default_multiplier=0.6, **FAST))
    assert [(a.name, a.multiplier) for a in r.applied] == [("style", 0.6)]
    assert parse_infotext(r.infotexts[0])["Prompt"] == "a dog<hypernet:style:0.6>"


def test_unknown_name_and_unsupported_tags(setup) -> None:
    _, gen, _ = setup
    with pytest.raises(HypernetError, match="Unknown hypernetwork 'Style'.*'style'"):
        gen.generate(Settings("a <hypernet:Style:1>", **FAST))
    with pytest.raises(HypernetError, match="Unknown LoRA 'thing'"):  # LoRA tags are applied now, names checked
        gen.generate(Settings("a <lora:thing:1>", **FAST))
    r = gen.generate(Settings("a <style:thing:1>", **FAST))
    assert any("<style:thing:1>" in w for w in r.warnings)


def test_network_for_another_family_warns(setup) -> None:
    family, gen, _ = setup
    r = gen.generate(Settings("a <hypernet:sd1only>", **FAST))
    assert any("no module for this model's text width" in w for w in r.warnings)


def test_prompt_syntax_reaches_the_model(setup) -> None:
    _, gen, _ = setup
    base = pixels(gen.generate(Settings("a red cube", **FAST)))
    edited = pixels(gen.generate(Settings("a [red:blue:0.1] cube", **FAST)))
    emphasised = pixels(gen.generate(Settings("a (red:1.6) cube", **FAST)))
    assert not np.array_equal(base, edited) and not np.array_equal(base, emphasised)


@pytest.mark.parametrize(("field", "value"), [("width", 4), ("height", 0), ("steps", 0)])
def test_bad_settings(setup, field, value) -> None:
    _, gen, _ = setup
    with pytest.raises(HypernetError, match=field):
        gen.generate(Settings("x", **{**FAST, field: value}))


def test_sizes_not_a_multiple_of_8_are_floored_with_a_warning(setup) -> None:
    _, gen, _ = setup
    r = gen.generate(Settings("x", **{**FAST, "width": 60}))  # A1111 accepts it and works at 56
    assert r.images[0].width == 56 and any("width 60 is not a multiple of 8; using 56" in w for w in r.warnings)


def test_img2img(setup) -> None:
    _, gen, _ = setup
    red, blue = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))
    weak_red = gen.generate(Settings("a <hypernet:style>", init_image=red, denoising_strength=0.3, **FAST))
    weak_blue = gen.generate(Settings("a <hypernet:style>", init_image=blue, denoising_strength=0.3, **FAST))
    plain_red = gen.generate(Settings("a", init_image=red, denoising_strength=0.3, **FAST))
    assert not np.array_equal(pixels(weak_red), pixels(weak_blue)), "the init image must matter"
    assert not np.array_equal(pixels(weak_red), pixels(plain_red)), "the network must act in img2img"
    assert "Denoising strength: 0.3" in weak_red.infotexts[0]


def test_cli_generate_and_png_info(setup, capsys) -> None:
    family, gen, root = setup
    if family != "sd1":
        pytest.skip("one family is enough for the CLI")
    out = root / "outputs"
    cli_main(["generate", "a castle <hypernet:style:0.8>", "--model", str(root / "tiny-sd1.safetensors"),
              "--hypernetwork-dir", str(root / "hypernetworks"), "--steps", "2", "--size", "64x64", "--seed", "3",
              "--sampler", "Euler a", "--out", str(out)])
    files = sorted(out.glob("*.png"))
    assert len(files) == 1
    text, _ = read_infotext(Image.open(files[0]))
    assert text.startswith("a castle <hypernet:style:0.8>") and "Sampler: Euler a" in text
    assert "applied style x0.8" in capsys.readouterr().out
    cli_main(["png-info", str(files[0])])
    assert '"Seed": "3"' in capsys.readouterr().out


def test_generation_hooks_interrupt_and_preview(setup) -> None:
    family, gen, _ = setup
    if family != "sd1":
        pytest.skip("hooks are family-independent")
    from hypernet.engine.generate import Hooks

    seen, steps = [], []
    hooks = Hooks(progress=lambda done, total: steps.append((done, total)), latents=lambda l: seen.append(l.shape),
                  interrupted=lambda: len(steps) >= 2)
    r = gen.generate(Settings("a <hypernet:style>", n_iter=3, **FAST), hooks=hooks)
    assert len(r.images) == 1, "the interrupted batch keeps its image; later batches never start"
    assert steps[:2] == [(1, 9), (2, 9)] and len(seen) == len(steps)


def test_extra_networks_apply_like_tags(setup) -> None:
    family, gen, root = setup
    if family != "sd1":
        pytest.skip("family-independent")
    import hypernet

    net = hypernet.load_hypernetwork(root / "hypernetworks" / "style.pt")
    by_tag = gen.generate(Settings("a <hypernet:style:0.8>", **FAST))
    direct = gen.generate(Settings("a", **FAST), extra_networks=[(net, 0.8)])
    assert np.array_equal(pixels(by_tag), pixels(direct))
    assert [(a.name, a.multiplier) for a in direct.applied] == [("style", 0.8)]


@pytest.mark.slow
def test_bf16_model_with_fp32_networks(tmp_path) -> None:
    import torch

    checkpoint = save_single_file(tiny_pipeline("sd1"), tmp_path / "tiny.safetensors", "sd1")
    pipe32, info = load_pipeline(checkpoint)
    pipe16, _ = load_pipeline(checkpoint, dtype=torch.bfloat16)
    Hypernetwork.create("style", [48, 32, 64], activation_func="swish", weight_init="XavierNormal", seed=1).save(tmp_path / "hn" / "style.pt")
    a = Generator(pipe32, info, tmp_path / "hn").generate(Settings("a <hypernet:style>", **FAST))
    b_gen = Generator(pipe16, info, tmp_path / "hn")
    b = b_gen.generate(Settings("a <hypernet:style>", **FAST))
    assert pipe16.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in b_gen.network(tmp_path / "hn" / "style.pt").parameters())
    assert np.abs(pixels(a) - pixels(b)).mean() < 12, "bf16 should be close to fp32, not a different image"


def test_memory_options_refuse_cleanly_without_gpu(setup) -> None:
    import torch

    from hypernet.engine.generate import apply_memory_options

    _, gen, _ = setup
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(HypernetError, match="no GPU was found"):
        apply_memory_options(gen.pipe, medvram=True)
    with pytest.raises(HypernetError, match="not both"):
        apply_memory_options(gen.pipe, medvram=True, lowvram=True)


@pytest.mark.slow
def test_prompts_file_split_across_two_processes(setup, tmp_path) -> None:
    """`accelerate launch` with 2 CPU processes: every prompt of the file is generated exactly once."""
    import socket
    import subprocess
    import sys

    family, _, root = setup
    if family != "sd1":
        pytest.skip("one family is enough")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a castle <hypernet:style:0.5>\n# a comment\n\na tree\na river\n")
    out = tmp_path / "out"
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `--multi_gpu` with no GPU gives gloo CPU processes (accelerate's `--cpu` would start only one)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "hypernet.cli", "generate",
           "--prompts", str(prompts), "--model", str(root / "tiny-sd1.safetensors"), "--hypernetwork-dir",
           str(root / "hypernetworks"), "--steps", "2", "--size", "64x64", "--seed", "5", "--sampler", "Euler",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 1/2: 2 prompt(s)" in proc.stdout and "process 2/2: 1 prompt(s)" in proc.stdout
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["00000-5.png", "00001-6.png", "00002-7.png"]
    texts = [read_infotext(Image.open(out / f))[0].split("\n")[0] for f in files]
    assert texts == ["a castle <hypernet:style:0.5>", "a tree", "a river"]


def test_clip_skip_changes_conditioning_and_is_recorded(setup) -> None:
    family, gen, _ = setup
    if family == "sdxl":
        pytest.skip("SDXL conditions on the penultimate layer already")
    one = gen.generate(Settings("a castle", **FAST))
    two = gen.generate(Settings("a castle", clip_skip=2, **FAST))
    assert not np.array_equal(pixels(one), pixels(two))
    assert "Clip skip: 2" in two.infotexts[0] and "Clip skip" not in one.infotexts[0]


def test_hypernetwork_precision_option(setup) -> None:
    family, gen, _ = setup
    if family != "sd1":
        pytest.skip("family-independent")
    full = gen.generate(Settings("a <hypernet:style>", **FAST))
    low = gen.generate(Settings("a <hypernet:style>", hypernetwork_precision="bf16", **FAST))
    assert np.abs(pixels(full) - pixels(low)).mean() < 3
    with pytest.raises(HypernetError, match="hypernetwork precision 'int8'"):
        gen.generate(Settings("a", hypernetwork_precision="int8", **FAST))


@pytest.mark.slow
def test_every_sampler_gives_finite_images(setup) -> None:
    import torch

    from hypernet.engine.generate import Hooks
    from hypernet.sampling import SAMPLERS

    family, gen, _ = setup
    if family != "sd1":
        pytest.skip("family-independent")
    for sampler in SAMPLERS:
        latents: list = []
        gen.generate(Settings("a cat", **{**FAST, "sampler_name": sampler.name}),
                     hooks=Hooks(latents=lambda l: latents.append(torch.isfinite(l).all().item())))
        assert latents and all(latents), f"{sampler.name} produced non-finite latents"
