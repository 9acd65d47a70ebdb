"""Training data as A1111 reads it: templates, captions, tag shuffle/drop-out, images, alpha weights, buckets, latent
caching per sampling method, and the configuration checks, each failing with a sentence."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypernet.errors import HypernetError
from hypernet.testing import tiny_pipeline
from hypernet.train.config import TrainConfig
from hypernet.train.dataset import (
    TEMPLATES_DIR,
    Item,
    TrainingDataset,
    alpha_weight,
    available_templates,
    build_dataset,
    build_prompt,
    derive_seed,
    filewords,
    read_image,
    read_template,
    resolve_template,
)

SHIPPED = {"hypernetwork.txt": 27, "none.txt": 1, "style.txt": 19, "style_filewords.txt": 19, "subject.txt": 27,
           "subject_filewords.txt": 27}


def picture(path: Path, size: tuple[int, int] = (64, 64), alpha: np.ndarray | None = None, seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    if alpha is not None:
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    else:
        Image.fromarray(rgb).save(path)
    return path


# ============================================================================================== templates
def test_shipped_templates_have_a1111_names_sizes_and_placeholders() -> None:
    found = available_templates()
    assert set(SHIPPED) <= set(found)
    for name, count in SHIPPED.items():
        lines = read_template(found[name])
        assert len(lines) == count, name
        assert all(line for line in lines)
        if "filewords" in name or name == "hypernetwork.txt":
            assert all("[filewords]" in line for line in lines), name
        if name.startswith(("style", "subject")):
            assert all("[name]" in line for line in lines), name
    assert TrainConfig().template_filename in found  # A1111's UI default is shipped


def test_template_lookup_by_name_user_folder_wins_and_paths_work(tmp_path: Path) -> None:
    assert resolve_template("style.txt") == TEMPLATES_DIR / "style.txt"
    mine = tmp_path / "sub" / "style.txt"
    mine.parent.mkdir()
    mine.write_text("a [name] drawing\n\nsecond\n", encoding="utf-8")
    assert resolve_template("style.txt", tmp_path) == mine  # found recursively, later duplicates win
    assert read_template(mine) == ["a [name] drawing", "", "second"]  # blank lines stay (empty prompts)
    assert resolve_template(str(mine)) == mine
    with pytest.raises(HypernetError, match=r'prompt template "nope.txt" was not found .*style_filewords.txt'):
        resolve_template("nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(HypernetError, match="empty.txt: the prompt template is empty"):
        read_template(empty)


# =============================================================================================== captions
def test_filewords_from_text_file_or_file_name(tmp_path: Path) -> None:
    image = tmp_path / "00012-3-a cat.png"
    assert filewords(image) == "a cat"  # leading numbers and dashes go, as in A1111
    assert filewords(tmp_path / "12 red, blue.jpg") == "red, blue"
    assert filewords(tmp_path / "00001-a_fluffy_cat.png", r"[a-z]+", "+") == "a+fluffy+cat"
    (tmp_path / "00012-3-a cat.txt").write_text("a tabby, sleeping", encoding="utf-8")
    assert filewords(image) == "a tabby, sleeping"


def test_prompt_fills_placeholders_and_shuffles_or_drops_tags() -> None:
    rng = random.Random(0)
    assert build_prompt("art of [filewords] by [name]", "mystyle", "a, b, c", False, 0, rng) == "art of a, b, c by mystyle"
    tags = " a, b, c, d, e, f"
    shuffled = build_prompt("[filewords]", "n", tags, True, 0, random.Random(1))
    assert sorted(shuffled.split(",")) == sorted(tags.split(",")) and shuffled != tags
    assert build_prompt("[filewords]", "n", tags, False, 1.0, random.Random(1)) == ""
    kept = build_prompt("[filewords]", "n", tags, False, 0.5, random.Random(3)).split(",")
    assert 0 < len(kept) < 6 and all(tag in tags.split(",") for tag in kept)  # order kept without shuffle
    assert build_prompt("x", "n", tags, True, 0.3, random.Random(5)) == build_prompt("x", "n", tags, True, 0.3, random.Random(5))


# ================================================================================================= images
def test_read_image_resizes_or_crops_to_multiples_of_8(tmp_path: Path) -> None:
    path = picture(tmp_path / "a.png", (70, 45))
    loaded = read_image(path, (64, 32))
    assert loaded.pixels.shape == (3, 32, 64) and loaded.original_size == (70, 45)
    assert -1 <= loaded.pixels.min() and loaded.pixels.max() <= 1
    assert read_image(path, None).pixels.shape == (3, 40, 64)  # varsize: centre crop to multiples of 8
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(OSError):
        read_image(tmp_path / "bad.png", (64, 64))


def test_read_image_turns_phone_photos_upright_as_preparation_does(tmp_path: Path) -> None:
    stored = Image.new("RGB", (48, 16), (200, 30, 30))  # stored landscape, EXIF says "rotate 90" (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif)
    loaded = read_image(tmp_path / "phone.jpg", None)
    assert loaded.original_size == (16, 48) and loaded.pixels.shape == (3, 48, 16)


def test_alpha_weight_has_mean_one_and_keeps_orientation() -> None:
    alpha = np.zeros((16, 32), dtype=np.uint8)  # wide image: left half opaque
    alpha[:, :16] = 255
    weight = alpha_weight(Image.fromarray(alpha, "L"), (4, 2))
    assert weight.shape == (2, 4)
    assert weight.mean().item() == pytest.approx(1.0, abs=1e-5) and weight.min().item() == pytest.approx(0.0, abs=1e-6)
    assert weight[:, :2].mean() > 1.5 and weight[:, 2:].mean() < 0.5  # opaque side weighs, not scrambled
    assert torch.equal(alpha_weight(None, (4, 2)), torch.ones(2, 4))
    assert torch.equal(alpha_weight(Image.new("L", (32, 16), 128), (4, 2)), torch.ones(2, 4))


# ========================================================================================== batches/epochs
def _dataset(sizes: list[tuple[int, int]], batch: int = 2, world: int = 1, gradient_step: int = 1) -> TrainingDataset:
    items = [Item(Path(f"{i}.png"), f"cap {i}", s, s, torch.zeros(4, s[1] // 8, s[0] // 8), prompt=f"cap {i}",
                  cond=torch.full((1, 77, 8), float(i))) for i, s in enumerate(sizes)]
    return TrainingDataset(items=items, name="n", lines=["[filewords]"], seed=3, batch_size=batch, world_size=world,
                           gradient_step=gradient_step, latent_sampling_method="once", shuffle_tags=False,
                           tag_drop_out=0, num_train_timesteps=1000, sdxl=False)


def test_epoch_plan_follows_a1111_bucket_rules() -> None:
    one = _dataset([(64, 64)] * 7, batch=2)
    plan = one.epoch_plan(0)
    assert len(plan) == 3 and all(len(b) == 2 for b in plan)  # 7 // 2; the remainder image sits this epoch out
    assert len({i for b in plan for i in b}) == 6
    assert plan == one.epoch_plan(0) and plan != _dataset([(64, 64)] * 7, batch=2).epoch_plan(1)

    mixed = _dataset([(64, 64)] * 5 + [(64, 32)] * 4, batch=2)
    plan = mixed.epoch_plan(0)
    assert len(plan) == 9 // 2
    for batch in plan:
        assert len({mixed.items[i].size for i in batch}) == 1  # a batch never mixes sizes

    accumulating = _dataset([(64, 64)] * 7, batch=1, gradient_step=2)
    assert len(accumulating.epoch_plan(0)) == 6 and accumulating.steps_per_epoch == 3  # a partial group is dropped


def test_processes_split_the_global_batch() -> None:
    single = _dataset([(64, 64)] * 4, batch=2)
    ranks = [_dataset([(64, 64)] * 4, batch=1, world=2) for _ in range(2)]
    for step in range(3):
        whole = single.batch(step, 0, 0, torch.device("cpu"), None)
        parts = [d.batch(step, 0, rank, torch.device("cpu"), None) for rank, d in enumerate(ranks)]
        assert torch.equal(whole.noise, torch.cat([p.noise for p in parts]))
        assert torch.equal(whole.timesteps, torch.cat([p.timesteps for p in parts]))
        assert whole.prompts == parts[0].prompts + parts[1].prompts
        assert torch.equal(whole.cond, torch.cat([p.cond for p in parts]))
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)


# ====================================================================================== building the dataset
@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    return tiny_pipeline("sd1").vae


def _build(root: Path, vae: torch.nn.Module, method: str = "once", **kw: object) -> TrainingDataset:
    args = dict(data_root=root, vae=vae, encode=lambda prompts: (torch.zeros(len(prompts), 77, 8), None), name="n",
                lines=["a [filewords] by [name]"], seed=1, size=(64, 64), use_weight=False, latent_sampling_method=method,
                shuffle_tags=False, tag_drop_out=0.0, word_regex="", join_string=" ", batch_size=1, world_size=1,
                gradient_step=1, num_train_timesteps=1000, sdxl=False, device=torch.device("cpu"))
    return build_dataset(**(args | kw))


@pytest.mark.slow
def test_build_dataset_lists_unreadable_files_and_caches_latents(tmp_path: Path, vae: torch.nn.Module) -> None:
    picture(tmp_path / "001-red fox.png", seed=1)
    picture(tmp_path / "002-blue jay.png", (80, 64), seed=2)
    (tmp_path / "002-blue jay.txt").write_text("a blue bird", encoding="utf-8")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    once = _build(tmp_path, vae)
    assert [i.caption for i in once.items] == ["red fox", "a blue bird"]
    assert once.skipped == ["broken.jpg (not an image)"]
    assert [i.prompt for i in once.items] == ["a red fox by n", "a a blue bird by n"]
    assert once.items[0].latent.shape == (4, 8, 8) and once.items[0].std is None

    deterministic = _build(tmp_path, vae, "deterministic")
    random_ = _build(tmp_path, vae, "random")
    assert torch.equal(deterministic.items[0].latent, random_.items[0].latent)  # the mean
    assert not torch.equal(once.items[0].latent, deterministic.items[0].latent)  # one sample of it
    assert torch.equal(once.items[0].latent, _build(tmp_path, vae).items[0].latent)  # same seed, same sample
    assert random_.items[0].std is not None
    a = random_.batch(0, 0, 0, torch.device("cpu"), None).latents
    b = random_.batch(1, 0, 0, torch.device("cpu"), None).latents
    assert not torch.equal(a, b)  # "random": a new sample every access

    varsize = _build(tmp_path, vae, size=None, batch_size=5)
    assert {i.size for i in varsize.items} == {(64, 64), (80, 64)}
    assert varsize.batch_size == 2 and "batch_size 5" in varsize.notes[0]  # clamped to the images there are


def test_use_weight_reads_alpha(tmp_path: Path, vae: torch.nn.Module) -> None:
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[32:] = 0
    picture(tmp_path / "a.png", alpha=alpha)
    picture(tmp_path / "b.png", seed=4)
    data = _build(tmp_path, vae, use_weight=True)
    weighted, plain = data.items
    assert weighted.weight[:4].mean() > 1.5 and weighted.weight[4:].max() < 0.2
    assert torch.equal(plain.weight, torch.ones(8, 8))
    assert data.batch(0, 0, 0, torch.device("cpu"), None).weights.shape == (1, 1, 8, 8)


def test_no_readable_image_is_a_sentence_listing_the_files(tmp_path: Path, vae: torch.nn.Module) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    (tmp_path / "b.txt").write_text("caption only", encoding="utf-8")
    with pytest.raises(HypernetError, match=r"no readable image in the dataset folder \(unreadable: a.png \(not an image\)\)"):
        _build(tmp_path, vae)


# ================================================================================================= config
def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "x.png").write_bytes(b"")
    return TrainConfig(**({"hypernetwork_name": "n", "data_root": str(data)} | kw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hypernetwork_name": ""}, "hypernetwork_name is empty"),
        ({"learn_rate": "0"}, 'learn_rate "0" has the rate 0; every rate must be a finite number above 0.'),
        ({"learn_rate": "-1"}, 'learn_rate "-1" has the rate -1'),
        ({"learn_rate": "nan"}, 'learn_rate "nan" has the rate nan'),
        ({"learn_rate": " "}, "learn_rate is empty"),
        ({"batch_size": 0}, "batch_size is 0; expected a value from 1 to 64."),
        ({"batch_size": 1.5}, "batch_size is 1.5; expected a whole number"),
        ({"gradient_step": -1}, "gradient_step is -1"),
        ({"steps": 0}, "steps is 0"),
        ({"save_hypernetwork_every": -5}, "save_hypernetwork_every is -5; expected a value from 0 to 1000000."),
        ({"data_root": "/no/such/dir"}, "/no/such/dir: the dataset folder does not exist"),
        ({"log_directory": ""}, "log_directory is empty"),
        ({"training_width": 100}, "training_width is 100; expected a multiple of 8"),
        ({"clip_grad_mode": "nrom"}, "clip_grad_mode is 'nrom'; expected one of: disabled, value or norm."),
        ({"latent_sampling_method": "sometimes"}, "latent_sampling_method is 'sometimes'; expected one of"),
        ({"tag_drop_out": 2}, "tag_drop_out is 2"),
        ({"preview_steps": 100000, "preview_from_txt2img": True}, "preview_steps is 100000; expected a value from 1 to 500."),
        ({"preview_width": 16384, "preview_from_txt2img": True}, "preview_width is 16384; expected a value from 8 to 8192."),
        ({"preview_width": 4096, "preview_height": 4096, "preview_from_txt2img": True}, "preview_width x preview_height is 4096x4096"),
        ({"steps": 10**9}, "steps is 1000000000; expected a value from 1 to 1000000."),
        ({"seed": 2**40}, "seed is 1099511627776"),
        ({"tag_drop_out": float("nan")}, "tag_drop_out is nan; expected a finite number"),
        ({"precision": "fp8"}, "precision is 'fp8'; expected one of: auto, no, fp16 or bf16."),
    ],
)
def test_config_errors_are_sentences_naming_the_field(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(HypernetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(tmp_path, **change).check()


def test_config_accepts_what_a1111_clients_send(tmp_path: Path) -> None:
    config = _config(tmp_path, batch_size=2.0, learn_rate=0.001, save_hypernetwork_every=None, clip_grad_mode="Norm",
                     hypernetwork_name="mystyle(1234abcd)")
    config.check()
    assert config.batch_size == 2 and config.learn_rate == "0.001" and config.save_hypernetwork_every == 0
    assert config.clip_grad_mode == "norm" and config.name == "mystyle"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HypernetError, match="the dataset folder is empty"):
        TrainConfig(hypernetwork_name="n", data_root=str(empty)).check()
