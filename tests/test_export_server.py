"""The export endpoints on a tiny served model: a LoRA in models/Lora, a baked checkpoint listed by /sd-models."""

from __future__ import annotations

import pytest
import requests
import safetensors

from hypernet.network import Hypernetwork
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.testing import TEXT_WIDTHS, UNET_CHANNELS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config = tiny_server_config(tmp_path_factory.mktemp("export"))
    Hypernetwork.create("flat", [*TEXT_WIDTHS["sd1"], *UNET_CHANNELS], weight_init="XavierNormal", seed=3).save(
        config.hypernetwork_dir / "flat.pt")
    state = ServerState.start(config)
    with BackgroundServer(create_app(state)) as running:
        yield running.url + "/sdapi/v1", config


@pytest.mark.slow
def test_export_lora_and_bake_over_http(served) -> None:
    url, config = served
    answer = requests.post(f"{url}/hypernet/export-lora", json={"hypernetworks": ["flat:0.5"], "rank": 4}, timeout=300)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    lora = config.lora_dir / "flat.safetensors"
    assert report["path"] == str(lora) and report["method"] == "svd" and report["rank"] == 4 and lora.is_file()
    assert safetensors.safe_open(lora, "pt").metadata()["hypernet_multiplier"] == "0.5"
    # the export is usable at once as a <lora:...> tag on the same server
    assert "flat" in [entry["name"] for entry in requests.get(f"{url}/loras", timeout=30).json()]
    body = {"prompt": "a cat <lora:flat:1>", "steps": 2, "width": 64, "height": 64, "seed": 3}
    used = requests.post(f"{url}/txt2img", json=body, timeout=300)
    assert used.status_code == 200, used.text
    assert "Lora hashes" in used.json()["info"]

    answer = requests.post(f"{url}/hypernet/bake", json={"hypernetworks": ["flat"], "output_name": "baked"}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert (config.models_dir / "baked.safetensors").is_file()
    titles = [m["title"] for m in requests.get(f"{url}/sd-models", timeout=30).json()]
    assert any(title.startswith("baked.safetensors") for title in titles)


def test_export_errors_over_http(served) -> None:
    url, config = served
    refused = requests.post(f"{url}/hypernet/bake", json={"hypernetworks": ["style"]}, timeout=60)
    assert 400 <= refused.status_code < 500 and "--approximate" in refused.text
    outside = requests.post(f"{url}/hypernet/export-lora", json={"hypernetworks": ["../flat"]}, timeout=60)
    assert outside.status_code == 403
    named = requests.post(f"{url}/hypernet/export-lora", json={"hypernetworks": ["flat"], "output_name": "../x"},
                          timeout=60)
    assert named.status_code == 403 and not (config.models_dir.parent / "x.safetensors").exists()
    unknown = requests.post(f"{url}/hypernet/export-lora", json={"hypernetworks": ["nope"]}, timeout=60)
    assert 400 <= unknown.status_code < 500 and "'nope' is not in" in unknown.text
    bad_rank = requests.post(f"{url}/hypernet/export-lora", json={"hypernetworks": ["flat"], "rank": 0}, timeout=60)
    assert bad_rank.status_code == 422
    for body, sentence in (({"multiplier": "nan"}, "multiplier is nan; expected a finite number"),
                           ({"check": 100}, "check is 100; expected a value from 0 to 8."),
                           ({"prompts": ["x" * 200_000]}, "prompts[0] is too long; expected at most 100000 characters.")):
        answer = requests.post(f"{url}/hypernet/export-lora", json={"hypernetworks": ["flat"], **body}, timeout=60)
        assert answer.status_code == 422 and answer.json()["detail"].startswith(sentence), answer.text
