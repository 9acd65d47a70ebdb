"""Resume that keeps its promise: a run's seed travels with the network, and a run stopped at any moment (the
process killed, no final save) continues from its newest snapshot when the same command runs again: the final
network equals an uninterrupted run with that seed, no snapshot is overwritten, the loss CSV has one row per step."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypernet import Hypernetwork, load_hypernetwork
from hypernet.engine.checkpoints import load_pipeline
from hypernet.testing import save_single_file, tiny_pipeline
from hypernet.train import TrainConfig, TrainProgress, train_hypernetwork

WIDTHS = [48, 32, 64]
STEPS = 6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    checkpoint = save_single_file(tiny_pipeline("sd1"), root / "tiny.safetensors", "sd1")
    data = root / "data"
    data.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{i:03d}-a thing, number {i}.png")
    pipe, info = load_pipeline(checkpoint)
    return pipe, info, checkpoint, data


def config(root: Path, data: Path, **kw) -> TrainConfig:
    values = dict(hypernetwork_name="net", learn_rate="1e-2", data_root=str(data), log_directory=str(root / "logs"),
                  training_width=32, training_height=32, steps=STEPS, save_hypernetwork_every=1,
                  training_write_csv_every=1, create_image_every=0, hypernetwork_dir=str(root / "hn"),
                  shuffle_tags=True, latent_sampling_method="random")
    return TrainConfig(**(values | kw))


def new_network(root: Path) -> Path:
    return Hypernetwork.create("net", WIDTHS, seed=1).save(root / "hn" / "net.pt")


def weights(path: Path) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in load_hypernetwork(path).parameters()])


def csv_steps(root: Path) -> list[int]:
    rows = []
    for path in sorted((root / "logs").glob("*/net*/hypernetwork_loss.csv")):
        with open(path, newline="") as f:
            rows += [int(row["step"]) for row in csv.DictReader(f)]
    return rows


def snapshot_hashes(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "logs").glob("*/*/hypernetworks/*.pt")}


class Killed(BaseException):
    """Stands for SIGKILL in-process: a BaseException skips the final save, as a killed process never makes it."""


@pytest.mark.slow
def test_the_seed_travels_with_the_network(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    new_network(tmp_path / "split")
    first = train_hypernetwork(config(tmp_path / "split", data, steps=3, save_hypernetwork_every=0), pipe=pipe, info=info)
    assert load_hypernetwork(tmp_path / "split" / "hn" / "net.pt").training_seed == first.seed
    second = train_hypernetwork(config(tmp_path / "split", data, save_hypernetwork_every=0), pipe=pipe, info=info)
    assert second.start_step == 3 and second.seed == first.seed  # no --seed: the stored one, not a new draw

    new_network(tmp_path / "whole")
    train_hypernetwork(config(tmp_path / "whole", data, seed=first.seed, save_hypernetwork_every=0), pipe=pipe, info=info)
    torch.testing.assert_close(weights(tmp_path / "split" / "hn" / "net.pt"),
                               weights(tmp_path / "whole" / "hn" / "net.pt"), rtol=0, atol=0)


@pytest.mark.slow
def test_stopped_at_random_points_the_rerun_continues_from_the_newest_snapshot(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    rng = random.Random(11)
    main = new_network(tmp_path)
    seeds: set[int | None] = set()
    written: dict[Path, str] = {}
    for _ in range(12):
        stop_at = (rng.randint(1, STEPS), rng.choice(["saving", "training"]))

        def progress(p: TrainProgress) -> None:
            if (p.step, p.phase) == stop_at:  # "saving": the CSV row is written, the snapshot not yet
                raise Killed

        try:
            result = train_hypernetwork(config(tmp_path, data), pipe=pipe, info=info, progress=progress)
        except Killed:
            assert load_hypernetwork(main).step == 0  # killed runs never replace the main file
            for path, digest in snapshot_hashes(tmp_path).items():
                assert written.setdefault(path, digest) == digest, f"{path} was overwritten"
                snapshot = load_hypernetwork(path)
                assert snapshot.optimizer_state_dict is not None  # a snapshot never lacks its sidecar
                seeds.add(snapshot.training_seed)
            continue
        break
    else:
        pytest.fail("the run never finished")
    assert result.step == STEPS and len(seeds) <= 1  # every attempt continued the first one's seed
    assert csv_steps(tmp_path) == list(range(1, STEPS + 1))  # one row per step, none twice
    assert len(list((tmp_path / "logs").glob("*/*/hypernetworks"))) == 1  # one folder: the run carried on in it

    whole = tmp_path / "whole"
    new_network(whole)
    train_hypernetwork(config(whole, data, seed=result.seed), pipe=pipe, info=info)
    torch.testing.assert_close(weights(main), weights(whole / "hn" / "net.pt"), rtol=0, atol=0)
    assert csv_steps(whole) == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_snapshots_of_another_network_are_never_resumed_nor_overwritten(tmp_path: Path, sd1) -> None:
    pipe, info, _, data = sd1
    new_network(tmp_path)
    train_hypernetwork(config(tmp_path, data, steps=3, seed=5), pipe=pipe, info=info)
    before = snapshot_hashes(tmp_path)
    Hypernetwork.create("net", WIDTHS, seed=2).save(tmp_path / "hn" / "net.pt")  # a new network of that name
    result = train_hypernetwork(config(tmp_path, data, steps=2, seed=5), pipe=pipe, info=info)
    assert result.start_step == 0 and result.step == 2
    assert all(snapshot_hashes(tmp_path)[p] == digest for p, digest in before.items())
    assert Path(result.log_directory).name == "net-run2"


@pytest.mark.slow
def test_sigkill_then_the_same_command_equals_an_uninterrupted_run(tmp_path: Path, sd1) -> None:
    _, _, checkpoint, data = sd1
    steps = 16  # long enough that the kills land mid-run on a fast machine too
    new_network(tmp_path)
    args = [sys.executable, "-m", "hypernet.train", "net", "--data", str(data), "--model", str(checkpoint),
            "--hypernetwork-dir", str(tmp_path / "hn"), "--log-directory", str(tmp_path / "logs"), "--width", "32",
            "--height", "32", "--steps", str(steps), "--learn-rate", "1e-2", "--save-every", "1", "--csv-every", "1",
            "--image-every", "0", "--shuffle-tags", "--latent-sampling", "random"]  # no --seed: the stored one
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    rng = random.Random()
    kills = 0
    for _ in range(2):
        seen = len(snapshot_hashes(tmp_path))
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while len(snapshot_hashes(tmp_path)) <= seen and process.poll() is None:  # this attempt's first snapshot
            assert time.monotonic() < deadline, "no snapshot within 3 minutes"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills += 1
    if load_hypernetwork(tmp_path / "hn" / "net.pt").step < steps:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 1
    assert load_hypernetwork(tmp_path / "hn" / "net.pt").step == steps
    assert csv_steps(tmp_path) == list(range(1, steps + 1))

    seed = load_hypernetwork(tmp_path / "hn" / "net.pt").training_seed
    whole = tmp_path / "whole"
    new_network(whole)
    pipe, info = load_pipeline(checkpoint)
    train_hypernetwork(config(whole, data, seed=seed, steps=steps), pipe=pipe, info=info)
    torch.testing.assert_close(weights(tmp_path / "hn" / "net.pt"), weights(whole / "hn" / "net.pt"), rtol=0, atol=0)
