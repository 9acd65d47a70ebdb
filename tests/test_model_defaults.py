"""Defaults from the loaded model: its native size and what its checkpoint records, however the file is named;
A1111's values where the model says nothing, and always in the HTTP API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.model_defaults import (METADATA_KEY, checkpoint_defaults, model_defaults, native_size,
                                            network_widths)
from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork
from hypernet.testing import save_single_file, tiny_pipeline
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.toy.model import RECORDED_DEFAULTS

pytestmark = pytest.mark.usefixtures("one_thread")  # two shared cores: no OpenMP oversubscription


def test_the_toy_checkpoint_records_the_settings_its_figures_were_measured_with() -> None:
    with safetensors.safe_open(str(CHECKPOINT), "pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == RECORDED_DEFAULTS
    d = checkpoint_defaults(CHECKPOINT)
    assert (d.width, d.height, d.sampler_name, d.steps, d.cfg_scale) == (64, 64, "DPM++ 2M", 20, 5.0)
    training = d.training()
    assert training["steps"] == 300 and training["training_width"] == 64 and training["template_filename"] == "filewords.txt"


def test_a_renamed_copy_of_the_toy_model_generates_at_its_native_size(tmp_path: Path) -> None:
    copy = tmp_path / "my-model.safetensors"
    shutil.copy(CHECKPOINT, copy)
    generator = Generator(*load_pipeline(copy))
    result = generator.generate(Settings("a red circle on a white background, center", seed=1, steps=2))
    assert result.images[0].size == (64, 64)
    assert "CFG scale: 5.0" in result.infotexts[0] and "Sampler: DPM++ 2M" in result.infotexts[0]
    explicit = generator.generate(Settings("a red circle", seed=1, steps=1, width=32, height=48, cfg_scale=7))
    assert explicit.images[0].size == (32, 48)  # what the caller sets wins


def test_a_model_without_recorded_defaults_gets_its_native_size_and_a1111s_sampling(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd1")
    path = save_single_file(pipe, tmp_path / "plain.safetensors", "sd1")
    loaded, info = load_pipeline(path)
    d = model_defaults(loaded, info.path)
    assert d.width == d.height == native_size(loaded) and (d.sampler_name, d.steps, d.cfg_scale) == ("DPM++ 2M", 20, 7.0)
    assert checkpoint_defaults(path).training() == {
        "training_width": 512, "training_height": 512, "preview_width": 512, "preview_height": 512,
        "preview_steps": 20, "preview_sampler_name": "DPM++ 2M", "preview_cfg_scale": 7.0}


def test_unreadable_recorded_defaults_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({}, str(path), metadata={METADATA_KEY: "{not json"})
    with pytest.raises(HypernetError, match="hypernet_defaults.*not JSON"):
        checkpoint_defaults(path)


@pytest.mark.slow
def test_train_config_fields_left_unset_take_the_models_defaults(tmp_path: Path) -> None:
    """The Python API, like the CLI and the UI: on the toy model an unset size is 64x64 and the recorded rate, batch
    and template apply; what the caller sets wins; the HTTP API's configs set every field and keep A1111's."""
    from hypernet.toy.style import write_style_dataset
    from hypernet.train import TrainConfig, train_hypernetwork
    from hypernet.train.loop import with_model_defaults

    pipe, info = load_pipeline(CHECKPOINT)
    Hypernetwork.create("toy", network_widths(pipe, info.text_widths), seed=0).save(tmp_path / "hn" / "toy.pt")
    config = TrainConfig(hypernetwork_name="toy", data_root=str(write_style_dataset(tmp_path / "data", 4)),
                         log_directory=str(tmp_path / "logs"), hypernetwork_dir=str(tmp_path / "hn"), steps=1,
                         create_image_every=0, save_hypernetwork_every=0, device="cpu")
    result = train_hypernetwork(config, pipe=pipe, info=info)
    settings = json.loads(next(Path(result.log_directory).glob("settings-*.json")).read_text())
    assert (settings["training_width"], settings["training_height"]) == (64, 64)
    assert (settings["learn_rate"], settings["batch_size"], settings["steps"]) == ("2e-3", 4, 1)
    assert settings["template_file"].endswith("filewords.txt")
    everything = TrainConfig.parse(TrainConfig().model_dump() | {"hypernetwork_name": "toy"})
    assert with_model_defaults(everything, model_defaults(pipe, info.path)).training_width == 512
