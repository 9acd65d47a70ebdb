"""Training on tiny single-file checkpoints: A1111's outputs, exact resume, interrupts, the NaN guard, clipping of
unscaled gradients, mixed precision, SD2-v and SDXL, the errors users meet, the CLI, and that it really learns."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import hypernet.train.loop as loop
from hypernet import Hypernetwork, HypernetError, load_hypernetwork
from hypernet.engine.attention import install_hypernetworks, installed_stack
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.conditioning import PromptEncoder
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext, read_infotext
from hypernet.testing import save_single_file, tiny_pipeline
from hypernet.train import AlreadyTrained, TrainConfig, TrainProgress, train_hypernetwork
from hypernet.train.dataset import Batch
from hypernet.train.loop import diffusion_loss, training_noise_scheduler

WIDTHS = {"sd1": [48, 32, 64], "sd2-v": [80, 32, 64], "sdxl": [128, 32, 64]}  # text width first, then the UNet's


pytestmark = pytest.mark.usefixtures("one_thread")


def make_images(folder: Path, count: int = 4, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        base = np.array([200, 40 + 30 * i, 60], dtype=np.float64)  # reddish pictures with noise
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}-a red thing, number {i}, blurry.png")
    return folder


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    checkpoint = save_single_file(tiny_pipeline("sd1"), root / "tiny.safetensors", "sd1")
    pipe, info = load_pipeline(checkpoint)
    return pipe, info, checkpoint, make_images(root / "data")


def config_for(tmp_path: Path, data: Path, name: str = "net", widths=WIDTHS["sd1"], create: bool = True, **kw) -> TrainConfig:
    hn_dir = tmp_path / "hypernetworks"
    create_kw = kw.pop("create_kw", {})
    if create:
        Hypernetwork.create(name, widths, seed=1, **create_kw).save(hn_dir / f"{name}.pt")
    defaults = dict(hypernetwork_name=name, learn_rate="1e-3", data_root=str(data), log_directory=str(tmp_path / "logs"),
                    training_width=64, training_height=64, steps=4, save_hypernetwork_every=0, create_image_every=0,
                    hypernetwork_dir=str(hn_dir), seed=3, preview_steps=2)
    return TrainConfig(**(defaults | kw))


def weights(path: Path) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in load_hypernetwork(path).parameters()])


# ============================================================================================ A1111 outputs
@pytest.mark.slow
def test_outputs_land_where_a1111_users_look(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    seen: list[TrainProgress] = []
    processors = pipe.unet.attn_processors
    config = config_for(tmp_path, data, steps=4, save_hypernetwork_every=2, create_image_every=1, training_write_csv_every=1)
    result = train_hypernetwork(config, pipe=pipe, info=info, progress=seen.append)

    assert result.stopped == "finished" and result.step == 4 and result.filename == str(tmp_path / "hypernetworks" / "net.pt")
    log = Path(result.log_directory)
    assert log.parent.parent == tmp_path / "logs" and log.name == "net"  # <log>/<YYYY-MM-DD>/<name>
    final = load_hypernetwork(result.filename)
    assert final.step == 4 and final.sd_checkpoint == info.short_hash and final.sd_checkpoint_name == "tiny"
    assert final.optimizer_state_dict is not None  # the .optim sidecar is written by default and matches

    for step in (2, 4):
        snapshot = load_hypernetwork(log / "hypernetworks" / f"net-{step}.pt")
        assert snapshot.step == step and snapshot.optimizer_state_dict is not None  # resumable, unlike A1111's
        with Image.open(log / "images" / f"net-{step}.png") as image:
            text, _ = read_infotext(image)
        params = parse_infotext(text)
        assert params["Steps"] == "20" and params["Sampler"] == "Euler a" and params["Size-1"] == "64"
        assert params["Model"] == "tiny" and "red thing" in params["Prompt"] and "net" in params["Prompt"]
        assert params["Prompt"].endswith(f" <hypernet:net-{step}:1>")  # this step's snapshot: PNG Info reproduces it
        assert "Training step" not in params
    for step in (1, 3):  # previews between snapshots: no file holds the network as it was, so the step is named
        params = parse_infotext(read_infotext(Image.open(log / "images" / f"net-{step}.png"))[0])
        assert params["Prompt"].endswith(" <hypernet:net:1>") and params["Training step"] == str(step)
    seeds = {parse_infotext(read_infotext(Image.open(log / "images" / f"net-{s}.png"))[0])["Seed"] for s in (2, 4)}
    assert len(seeds) == 1  # one preview seed per run, so previews compare like with like

    with open(log / "hypernetwork_loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "epoch", "epoch_step", "loss", "learn_rate"]
    assert [(r["step"], r["epoch"], r["epoch_step"], r["learn_rate"]) for r in rows] == [
        ("1", "0", "0", "0.001"), ("2", "0", "1", "0.001"), ("3", "0", "2", "0.001"), ("4", "0", "3", "0.001")]
    assert all(len(r["loss"].split(".")[1]) == 7 for r in rows)

    settings = json.loads(next(log.glob("settings-*.json")).read_text())
    for key in ("datetime", "model_name", "model_hash", "num_of_dataset_images", "layer_structure", "activation_func",
                "weight_init", "add_layer_norm", "use_dropout", "batch_size", "clip_grad_mode", "clip_grad_value",
                "create_image_every", "data_root", "gradient_step", "initial_step", "latent_sampling_method",
                "learn_rate", "log_directory", "steps", "template_file", "training_width", "training_height",
                "hypernetwork_name", "save_hypernetwork_every", "seed"):
        assert key in settings, key
    assert settings["num_of_dataset_images"] == 4 and settings["model_hash"] == info.short_hash
    for extra in ("loss.png", "contact_sheet.png"):
        with Image.open(log / extra) as image:
            assert image.width > 200

    training = [p for p in seen if p.phase == "training" and p.step > 0]
    assert [p.step for p in training] == [1, 2, 3, 4] and all(p.loss and p.learn_rate == 1e-3 for p in training)
    assert training[-1].it_per_s > 0 and training[-1].eta_s == 0 and training[-1].last_preview.endswith("net-4.png")
    assert seen[-1].phase == "done" and "Training finished at step 4" in seen[-1].message

    # the pipeline is the caller's: its attention processors were never replaced, and the hooks are gone
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    assert installed_stack(pipe.unet) is None


# ============================================================================================== it learns
def fixed_eval_loss(pipe, network: Hypernetwork | None, data: Path) -> float:
    """Mean loss over fixed images, timesteps and noise: the same numbers before and after training."""
    scheduler, encoder, gen, losses = training_noise_scheduler(pipe, "epsilon"), PromptEncoder(pipe), torch.Generator().manual_seed(0), []
    cond = encoder.encode("an artwork of a red thing in the style of net").embeds
    stack = install_hypernetworks(pipe.unet)
    with torch.no_grad(), stack.applied([(network, 1.0)] if network is not None else []):
        for path in sorted(data.glob("*.png")):
            pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1)
            latent = pipe.vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.mean * pipe.vae.config.scaling_factor
            for t in (100, 400, 700, 900):
                noise = torch.randn(latent.shape, generator=gen)
                losses.append(diffusion_loss(pipe.unet, scheduler, Batch(latent, noise, torch.tensor([t]), cond, None, None, None, [])).item())
    return float(np.mean(losses))


@pytest.mark.slow
def test_it_really_learns_and_the_saved_network_changes_generation(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    config = config_for(tmp_path, data, steps=40, learn_rate="1e-2")
    before = fixed_eval_loss(pipe, load_hypernetwork(tmp_path / "hypernetworks" / "net.pt"), data)
    result = train_hypernetwork(config, pipe=pipe, info=info)
    trained = load_hypernetwork(result.filename)
    after = fixed_eval_loss(pipe, trained, data)
    assert after < 0.9 * before, (before, after)

    generator = Generator(pipe, info, tmp_path / "hypernetworks")
    fast = dict(steps=3, width=64, height=64, seed=11, sampler_name="Euler")
    plain = np.asarray(generator.generate(Settings("a red thing", **fast)).images[0], dtype=np.float64)
    styled = generator.generate(Settings("a red thing <hypernet:net:1>", **fast))
    assert styled.applied[0].name == "net"
    assert np.abs(np.asarray(styled.images[0], dtype=np.float64) - plain).mean() > 0.5


# ================================================================================================== resume
@pytest.mark.slow
def test_resume_is_exact_mid_schedule_and_from_a_snapshot(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    common = dict(steps=6, learn_rate="1e-2:2, 5e-3:4, 2e-3", batch_size=2, gradient_step=2, shuffle_tags=True,
                  tag_drop_out=0.2, latent_sampling_method="random", clip_grad_mode="norm", clip_grad_value="1:3, 0.5",
                  create_kw={"dropout_structure": [0, 0.1, 0], "activation_func": "relu"})
    whole = config_for(tmp_path / "whole", data, **common)
    train_hypernetwork(whole, pipe=pipe, info=info)

    first = config_for(tmp_path / "split", data, **(common | {"steps": 3, "save_hypernetwork_every": 1}))
    assert train_hypernetwork(first, pipe=pipe, info=info).step == 3
    second = config_for(tmp_path / "split", data, create=False, **common)
    resumed = train_hypernetwork(second, pipe=pipe, info=info)
    assert resumed.start_step == 3 and resumed.step == 6
    expected = weights(tmp_path / "whole" / "hypernetworks" / "net.pt")
    torch.testing.assert_close(weights(tmp_path / "split" / "hypernetworks" / "net.pt"), expected, rtol=0, atol=1e-6)

    snapshot = Path(resumed.log_directory) / "hypernetworks" / "net-2.pt"  # snapshots resume exactly too
    third = config_for(tmp_path / "snap", data, create=False, **(common | {"resume_from": str(snapshot)}))
    assert train_hypernetwork(third, pipe=pipe, info=info).start_step == 2
    torch.testing.assert_close(weights(tmp_path / "snap" / "hypernetworks" / "net.pt"), expected, rtol=0, atol=1e-6)


def test_training_stops_when_the_schedule_runs_out_and_steps_are_absolute(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    result = train_hypernetwork(config_for(tmp_path, data, steps=10, learn_rate="1e-3:3"), pipe=pipe, info=info)
    assert result.stopped == "schedule_finished" and result.step == 3 and "where the learn_rate schedule ends" in result.message
    with pytest.raises(HypernetError, match=r'learn_rate "1e-3:3" has no phase ending after step 3 \("1e-3:3"'):
        train_hypernetwork(config_for(tmp_path, data, create=False, steps=10, learn_rate="1e-3:3"), pipe=pipe, info=info)
    with pytest.raises(AlreadyTrained, match=r"net.pt has already been trained for 3 steps, which reaches steps=3"):
        train_hypernetwork(config_for(tmp_path, data, create=False, steps=3), pipe=pipe, info=info)


# ============================================================================================== interrupts
@pytest.mark.slow
def test_stop_request_and_ctrl_c_save_then_return(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    done: list[int] = []

    def progress(p: TrainProgress) -> None:
        if p.phase == "training" and p.step:
            done.append(p.step)

    result = train_hypernetwork(config_for(tmp_path / "a", data, steps=50), pipe=pipe, info=info, progress=progress,
                                should_stop=lambda: len(done) >= 2)
    assert result.stopped == "interrupted" and result.step == 2 and load_hypernetwork(result.filename).step == 2

    def ctrl_c(p: TrainProgress) -> None:
        if p.phase == "training" and p.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    result = train_hypernetwork(config_for(tmp_path / "b", data, steps=50), pipe=pipe, info=info, progress=ctrl_c)
    assert result.stopped == "interrupted" and result.step == 3 and "Training interrupted at step 3" in result.message
    assert load_hypernetwork(result.filename).step == 3
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back


# ============================================================================================ the NaN guard
def poisoned_loss(bad_calls: set[int]):
    calls = {"n": 0}

    def loss(*args, **kw):
        value = diffusion_loss(*args, **kw)
        calls["n"] += 1
        return value * float("nan") if calls["n"] in bad_calls else value

    return loss


@pytest.mark.slow
def test_nan_steps_are_skipped_and_never_saved(tmp_path: Path, sd1, monkeypatch) -> None:
    pipe, info, _, data = sd1
    monkeypatch.setattr(loop, "diffusion_loss", poisoned_loss({2, 3}))
    result = train_hypernetwork(config_for(tmp_path / "a", data, steps=5, save_hypernetwork_every=1), pipe=pipe, info=info)
    assert result.stopped == "finished" and result.step == 5
    assert [s for s, _ in result.losses] == [1, 4, 5]
    assert "2 steps had a NaN or infinite loss or gradients and were skipped without an update (steps 2, 3)." in result.warnings
    for path in [Path(result.filename), *Path(result.log_directory).glob("hypernetworks/*.pt")]:
        assert torch.isfinite(weights(path)).all(), path
    snapshots = Path(result.log_directory) / "hypernetworks"
    assert torch.equal(weights(snapshots / "net-1.pt"), weights(snapshots / "net-3.pt"))  # skipped: unchanged

    monkeypatch.setattr(loop, "diffusion_loss", poisoned_loss(set(range(3, 100))))
    result = train_hypernetwork(config_for(tmp_path / "b", data, steps=20, max_bad_steps=3), pipe=pipe, info=info)
    assert result.stopped == "diverged" and result.step == 5
    assert "NaN or infinite in 3 steps in a row" in result.message and "last good network was kept" in result.message
    assert torch.isfinite(weights(Path(result.filename))).all()


@pytest.mark.slow
def test_fp16_skips_lower_the_loss_scale_and_clipping_sees_unscaled_gradients(tmp_path: Path, sd1, monkeypatch) -> None:
    pipe, info, _, data = sd1
    seen: list[TrainProgress] = []
    monkeypatch.setattr(loop, "diffusion_loss", poisoned_loss({2}))
    config = config_for(tmp_path, data, steps=3, precision="fp16", clip_grad_mode="norm", clip_grad_value="1e-4")
    result = train_hypernetwork(config, pipe=pipe, info=info, progress=seen.append)
    steps = [p for p in seen if p.phase == "training" and p.step > 0]
    scales = [p.loss_scale for p in steps]
    norms = [p.grad_norm for p in steps if p.grad_norm is not None]  # what the optimizer's updates used
    assert result.step == 3 and scales[0] == 65536.0 and scales[1] == 32768.0  # the NaN step halved the scale
    assert len(norms) == 2  # the skipped step never reached the optimizer
    for norm in norms:  # clipped in true units: A1111 would clip scaled gradients to 1e-4, i.e. to ~1.5e-9 really
        assert norm == pytest.approx(1e-4, rel=1e-2)
    assert all(p.dtype == torch.float32 for p in load_hypernetwork(result.filename).parameters())


def test_bf16_autocast_keeps_an_fp32_network(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    config = config_for(tmp_path, data, precision="bf16", steps=2, learn_rate="1e-2")
    before = weights(tmp_path / "hypernetworks" / "net.pt")
    result = train_hypernetwork(config, pipe=pipe, info=info)
    assert all(np.isfinite(l) for _, l in result.losses) and len(result.losses) == 2
    after = weights(Path(result.filename))
    assert after.dtype == torch.float32 and not torch.equal(before, after)
    assert pipe.unet.dtype == torch.float32  # the caller's model is untouched


# ================================================================================================= families
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sd2-v", "sdxl"])
def test_sd2_v_prediction_and_sdxl_train(tmp_path: Path, variant: str) -> None:
    checkpoint = save_single_file(tiny_pipeline(variant), tmp_path / f"tiny-{variant}.safetensors", variant)
    data = make_images(tmp_path / "data", count=2)
    alpha = np.full((48, 72), 255, dtype=np.uint8)
    alpha[:, 36:] = 0  # the right half does not count
    Image.fromarray(np.dstack([np.full((48, 72, 3), 90, dtype=np.uint8), alpha]), "RGBA").save(data / "cut out.png")
    config = config_for(tmp_path, data, widths=WIDTHS[variant], model=str(checkpoint), steps=2, learn_rate="1e-2",
                        create_image_every=2, varsize=True, use_weight=True, batch_size=2)
    before = weights(tmp_path / "hypernetworks" / "net.pt")
    result = train_hypernetwork(config)
    assert result.step == 2 and all(np.isfinite(l) for _, l in result.losses)
    assert not torch.equal(weights(Path(result.filename)), before)
    net = load_hypernetwork(result.filename)
    assert net.step == 2 and net.sd_checkpoint_name == f"tiny-{variant}"
    assert (Path(result.log_directory) / "images" / "net-2.png").is_file()
    pipe, info = load_pipeline(checkpoint)
    scheduler = training_noise_scheduler(pipe, info.prediction_type)
    assert scheduler.config.prediction_type == ("v_prediction" if variant == "sd2-v" else "epsilon")


# =================================================================================================== errors
@pytest.mark.slow
def test_errors_before_training_are_sentences(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    cases = [
        (dict(data_root=str(tmp_path / "missing")), "missing: the dataset folder does not exist"),
        (dict(template_filename="nope.txt"), 'prompt template "nope.txt" was not found'),
        (dict(learn_rate="1e-3:2, fast:4"), 'learn_rate "1e-3:2, fast:4" has the rate "fast" in "fast:4"'),
        (dict(clip_grad_mode="value", clip_grad_value="0.1:ten"), 'clip_grad_value "0.1:ten" has the step "ten"'),
        (dict(hypernetwork_name="other"), r'no hypernetwork named "other" in .* \(found: net\); create it first'),
        (dict(preview_from_txt2img=True, preview_sampler_name="Eulr", create_image_every=5), 'sampler "Eulr" is unknown'),
    ]
    for change, message in cases:
        with pytest.raises(HypernetError, match=message):
            train_hypernetwork(config_for(tmp_path, data, **change), pipe=pipe, info=info)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.doc").write_bytes(b"words")
    with pytest.raises(HypernetError, match=r"no readable image in the dataset folder \(unreadable: notes.doc"):
        train_hypernetwork(config_for(tmp_path, junk), pipe=pipe, info=info)
    with pytest.raises(HypernetError, match="there is nothing to train; create the network with --sizes 32,48,64"):
        train_hypernetwork(config_for(tmp_path, data, widths=[768, 320]), pipe=pipe, info=info)
    with pytest.raises(HypernetError, match="model is empty; pass the checkpoint"):
        train_hypernetwork(config_for(tmp_path, data))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(HypernetError, match="training_enable_tensorboard needs the tensorboard package"):
            train_hypernetwork(config_for(tmp_path, data, training_enable_tensorboard=True), pipe=pipe, info=info)


# ====================================================================================================== CLI
@pytest.mark.slow
def test_cli_trains_and_reports_errors_in_one_sentence(tmp_path: Path, sd1, capsys) -> None:
    import typer

    from hypernet.train.__main__ import main
    from hypernet.train.command import train

    _, _, checkpoint, data = sd1
    hn_dir = tmp_path / "hn"
    Hypernetwork.create("cli net", WIDTHS["sd1"], seed=2).save(hn_dir / "cli net.pt")
    app = typer.Typer()
    app.command()(train)
    args = ["cli net", "--data", str(data), "--model", str(checkpoint), "--hypernetwork-dir", str(hn_dir),
            "--log-directory", str(tmp_path / "logs"), "--learn-rate", "5e-3", "--batch-size", "2", "--gradient-step", "1",
            "--width", "64", "--height", "64", "--steps", "2", "--clip-grad-mode", "value", "--clip-grad-value", "0.1",
            "--shuffle-tags", "--tag-dropout", "0.1", "--latent-sampling", "deterministic", "--image-every", "2",
            "--save-every", "1", "--template", "subject_filewords.txt", "--preview-prompt", "a red thing",
            "--preview-steps", "2", "--preview-sampler", "Euler", "--preview-seed", "5", "--seed", "1"]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "Training finished at step 2; hypernetwork saved to" in outcome.output
    net = load_hypernetwork(hn_dir / "cli net.pt")
    assert net.step == 2
    preview = next((tmp_path / "logs").glob("*/cli net/images/cli net-2.png"))
    params = parse_infotext(read_infotext(Image.open(preview))[0])
    assert params["Prompt"] == "a red thing <hypernet:cli net-2:1>"
    assert params["Seed"] == "5" and params["Steps"] == "2" and params["Sampler"] == "Euler"
    assert f"In {preview.parent.parent}: 2 snapshots in hypernetworks/, 1 preview in images/, loss.png, " \
           "contact_sheet.png, health.csv." in " ".join(outcome.output.split())  # only what was made (no loss CSV)
    assert "hypernet pick" in outcome.output  # snapshots were measured: the command that compares them

    with pytest.raises(SystemExit) as exit_info:
        main(["cli net", "--data", str(tmp_path / "nowhere"), "--hypernetwork-dir", str(hn_dir)])
    assert exit_info.value.code == 2
    assert "nowhere: the dataset folder does not exist (data_root)" in capsys.readouterr().err


def test_cli_prints_warnings_when_they_happen_and_once(tmp_path: Path, sd1) -> None:
    import shutil

    import typer

    from hypernet.train.command import train

    _, _, checkpoint, data = sd1
    mixed = tmp_path / "data"
    shutil.copytree(data, mixed)
    (mixed / "notes.doc").write_bytes(b"words")
    Hypernetwork.create("net", WIDTHS["sd1"], seed=2).save(tmp_path / "hn" / "net.pt")
    app = typer.Typer()
    app.command()(train)
    outcome = CliRunner().invoke(app, ["net", "--data", str(mixed), "--model", str(checkpoint), "--hypernetwork-dir",
                                       str(tmp_path / "hn"), "--log-directory", str(tmp_path / "logs"), "--width", "64",
                                       "--height", "64", "--steps", "1", "--image-every", "0", "--save-every", "0"])
    assert outcome.exit_code == 0, outcome.output
    warning = "are not readable images and were left out: notes.doc"
    assert outcome.output.count(warning) == 1
    assert outcome.output.index(warning) < outcome.output.index("Training finished at step 1")


# ================================================================================================ drawings
@pytest.mark.slow
def test_loss_curve_contact_sheet_and_tensorboard_logging(tmp_path: Path, sd1, monkeypatch) -> None:
    from hypernet.train import outputs

    curve = outputs.loss_curve([(step, 1 / step + (step % 7) * 0.01) for step in range(1, 300)], title="t")
    colours = {colour for _, colour in curve.getcolors(1 << 16)}
    assert curve.size == (960, 480) and outputs._MEAN in colours and outputs._RAW in colours

    frames = []
    for step in (30, 10, 20):
        Image.new("RGB", (64, 48), (step * 5, 0, 0)).save(tmp_path / f"net-{step}.png")
        frames.append((step, tmp_path / f"net-{step}.png"))
    sheet = outputs.contact_sheet(sorted(frames), title="net", thumb=64)
    assert sheet.size == (3 * 64, 34 + 64 + 22)
    assert [sheet.getpixel((32 + 64 * i, 34 + 32))[0] for i in range(3)] == [50, 100, 150]  # in step order
    tiny = outputs.contact_sheet(sorted(frames), title="net")  # tiny previews fill cells of 128, enlarged 2x
    assert tiny.size == (3 * 128, 34 + 128 + 22)
    assert tiny.getpixel((2, 34 + 64)) == (50, 0, 0) and tiny.getpixel((2, 34 + 10)) == (255, 255, 255)

    logged: list[tuple] = []

    class FakeWriter:
        def add_scalar(self, *args):
            logged.append(("scalar", *args))

        def add_image(self, tag, image, step, dataformats):
            logged.append(("image", tag, step, image.shape, dataformats))

        def close(self):
            logged.append(("close",))

    monkeypatch.setattr(outputs, "_tensorboard", lambda folder, flush: FakeWriter())
    pipe, info, _, data = sd1
    config = config_for(tmp_path, data, steps=2, create_image_every=2, training_enable_tensorboard=True,
                        training_tensorboard_save_images=True)
    train_hypernetwork(config, pipe=pipe, info=info)
    scalars = [(tag, step) for kind, tag, value, step, *_ in [e for e in logged if e[0] == "scalar"]]
    assert scalars == [("loss", 1), ("learn_rate", 1), ("loss", 2), ("learn_rate", 2)]
    assert ("image", "preview", 2, (64, 64, 3), "HWC") in logged and logged[-1] == ("close",)
