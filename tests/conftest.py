"""Shared test set-up: offline hub, the conformance vectors from ../shared (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray download fails fast instead of hanging
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYPERNET_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared folder with the conformance vectors is missing: {SHARED} (set HYPERNET_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def conformance_dir(shared_dir: Path) -> Path:
    return shared_dir / "conformance"


@pytest.fixture(scope="module")
def one_thread():
    """Two busy cores: one torch thread per process avoids OpenMP oversubscription (up to x6 slower steps).
    Modules that train use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy():
    """hypernet's embedded toy model, loaded once."""
    from hypernet.engine.checkpoints import load_pipeline
    from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT

    return load_pipeline(CHECKPOINT)


@pytest.fixture(scope="session")
def toy_run(toy, tmp_path_factory) -> Path:
    """The log folder of a real 3-step training run on the toy model with a snapshot after every step
    (``hypernetworks/style-1.pt`` ... ``style-3.pt``)."""
    from hypernet.engine.attention import attention_widths
    from hypernet.network import Hypernetwork
    from hypernet.toy.style import write_style_dataset
    from hypernet.train import TrainConfig, train_hypernetwork

    pipe, info = toy
    root = tmp_path_factory.mktemp("toy-run")
    widths = sorted({*info.text_widths, *attention_widths(pipe.unet)})
    Hypernetwork.create("style", widths, layer_structure=[1, 2, 1], activation_func="swish",
                        weight_init="XavierNormal", seed=0).save(root / "hypernetworks" / "style.pt")
    config = TrainConfig(
        hypernetwork_name="style", learn_rate="2e-2", batch_size=2, data_root=str(write_style_dataset(root / "data", 4)),
        log_directory=str(root / "logs"), training_width=64, training_height=64, steps=3,
        latent_sampling_method="deterministic", create_image_every=0, save_hypernetwork_every=1,
        template_filename="filewords.txt",
        hypernetwork_dir=str(root / "hypernetworks"), seed=0, device="cpu")
    return Path(train_hypernetwork(config, pipe=pipe, info=info).log_directory)


@pytest.fixture(scope="session")
def single_image():
    """``single_image(generator, infotext)``: the image (numpy) one plain ``generate`` gives for the settings an
    infotext records, to check that X/Y/Z plot cells are exactly single generations."""
    import numpy as np

    from hypernet.engine.generate import Settings
    from hypernet.engine.infotext import parse_infotext

    def single(generator, infotext: str) -> np.ndarray:  # noqa: ANN001 - a Generator
        p = parse_infotext(infotext)
        settings = Settings(p["Prompt"], p["Negative prompt"], p["Sampler"], p["Schedule type"], int(p["Steps"]),
                            float(p["CFG scale"]), int(p["Seed"]), int(p["Size-1"]), int(p["Size-2"]))
        return np.asarray(generator.generate(settings).images[0])

    return single
