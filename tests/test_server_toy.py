"""The server and the embedded toy model: always offered by /sd-models, selectable again after switching away, and
its defaults for the UI follow the loaded model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hypernet.server.app import create_app
from hypernet.server.state import ServerState
from hypernet.server.testing import tiny_server_config
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT

pytestmark = pytest.mark.usefixtures("one_thread")  # two shared cores: no OpenMP oversubscription


@pytest.mark.slow
def test_the_toy_model_stays_listed_and_selectable_after_switching_away(tmp_path: Path) -> None:
    config = replace(tiny_server_config(tmp_path), ckpt=CHECKPOINT)  # --ckpt outside --models-dir
    state = ServerState.start(config)
    try:
        client = TestClient(create_app(state))
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert titles[0].startswith("tiny-sd1.safetensors") and titles[1].startswith("toy-sd1.safetensors [")
        assert state.model.generator.defaults.width == 64
        state.switch_model(state.find_checkpoint("tiny-sd1.safetensors"))
        assert state.model.checkpoint.name == "tiny-sd1.safetensors"
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert any(t.startswith("toy-sd1.safetensors") for t in titles), titles
        state.switch_model(state.find_checkpoint("toy-sd1.safetensors"))
        assert state.model.checkpoint.path == CHECKPOINT and state.model.generator.defaults.cfg_scale == 5.0
        names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert names == ["tiny-sd1", "toy-sd1"]
    finally:
        state.close()
