"""Limits on every HTTP path: refusals are 4xx with A1111's error body and one sentence; A1111-accepted values pass."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import os
import time

import numpy as np
import pytest
import requests
from PIL import Image

from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.settings.limits import MAX_INPUT_PIXELS, SEED_MAX

FAST = {"steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(tiny_server_config(tmp_path_factory.mktemp("limits")))
    with BackgroundServer(create_app(state)) as running:
        yield running, state


@pytest.fixture
def url(server) -> str:
    return server[0].url + "/sdapi/v1"


def refused(r: requests.Response, status: int = 422) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert body["errors"] == f"{status}: {body['detail']}"
    assert body["detail"].endswith(".") and "\n" not in body["detail"]
    return body["detail"]


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.slow
def test_preprocess_huge_size_is_refused_at_once(url) -> None:
    started = time.monotonic()
    r = requests.post(f"{url}/preprocess", json={"id_task": "t", "process_src": "set", "process_dst": "out",
                                                 "process_width": 100000, "process_height": 100000}, timeout=30)
    assert time.monotonic() - started < 1.0
    assert refused(r) == "process_width is 100000; expected a value from 64 to 4096."
    assert requests.get(f"{url}/progress", timeout=10).status_code == 200  # still up


@pytest.mark.parametrize(("body", "sentence"), [
    ({"seed": 99999999999999999999}, f"seed is 99999999999999999999; expected -1 (random) or a whole number from 0 to {SEED_MAX}."),
    ({"seed": -7}, f"seed is -7; expected -1 (random) or a whole number from 0 to {SEED_MAX}."),
    ({"subseed": 2**33}, "subseed is 8589934592"),
    ({"cfg_scale": "inf"}, "cfg_scale is inf; expected a finite number, a value from 0 to 100."),
    ({"cfg_scale": "nan"}, "cfg_scale is nan; expected a finite number"),
    ({"width": 100000, "height": 100000}, "width is 100000; expected a value from 8 to 8192."),
    ({"steps": 100000}, "steps is 100000; expected a value from 1 to 500."),
    ({"batch_size": 16, "n_iter": 100}, "batch_size x n_iter is 16x100; at most 800 images are allowed per request."),
    ({"enable_hr": True, "hr_scale": 8, "width": 512, "height": 512}, "the hires size is 4096x4096"),
])
def test_txt2img_refusals(url, body, sentence) -> None:
    assert sentence in refused(requests.post(f"{url}/txt2img", json=body, timeout=30))


def test_a1111_accepted_values_are_accepted(url) -> None:
    r = requests.post(f"{url}/txt2img", json={**FAST, "width": 65, "denoising_strength": 0, "seed": SEED_MAX,
                                              "sampler_name": "Euler z", "batch_size": 2}, timeout=300)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["width"] == 64 and Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
    assert any("width 65 is not a multiple of 8; using 64" in w for w in info["warnings"])
    assert any("sampler 'Euler z' is unknown; DPM++ 2M was used" in w for w in info["warnings"])
    assert info["sampler_name"] == "DPM++ 2M"
    assert len(info["all_subseeds"]) == 2 and info["all_subseeds"][1] == (info["all_subseeds"][0] + 1) % 2**32
    assert -1 not in info["all_subseeds"] and info["subseed"] == info["all_subseeds"][0]
    assert info["all_seeds"] == [SEED_MAX, SEED_MAX + 1]  # A1111 counts on past 2**32 too


def test_img2img_denoise_zero_keeps_the_image(url) -> None:
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    r = requests.post(f"{url}/img2img", json={**FAST, "init_images": [b64(source)], "denoising_strength": 0},
                      timeout=300)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")
    assert np.array_equal(np.asarray(out), np.asarray(source))


def test_decoded_image_size_is_checked_from_the_header(url) -> None:
    big = Image.new("L", (9000, 9000))  # a few hundred KB as PNG, 81 million pixels decoded
    assert 9000 * 9000 > MAX_INPUT_PIXELS
    data = b64(big)
    sentence = refused(requests.post(f"{url}/png-info", json={"image": data}, timeout=60))
    assert sentence.startswith("image is 9000x9000 (81,000,000 pixels); images of at most")
    sentence = refused(requests.post(f"{url}/img2img", json={**FAST, "init_images": [data]}, timeout=60))
    assert sentence.startswith("init_images[0] is 9000x9000")


def test_options_refuse_non_finite_values_and_stay_json(url) -> None:
    sentence = refused(requests.post(f"{url}/options", json={"extra_networks_default_multiplier": "nan"}, timeout=30))
    assert sentence == "extra_networks_default_multiplier is nan; expected a finite number, a value from -100 to 100."
    raw = '{"my_extension_setting": NaN}'  # Python's JSON reader takes NaN; it must not be stored and echoed
    r = requests.post(f"{url}/options", data=raw, headers={"content-type": "application/json"}, timeout=30)
    assert "my_extension_setting holds nan" in refused(r)
    assert refused(requests.post(f"{url}/options", json={"jpeg_quality": "high"}, timeout=30)) == \
        "jpeg_quality is 'high'; expected a whole number."
    r = requests.get(f"{url}/options", timeout=30)
    json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in /options"))
    assert r.json()["extra_networks_default_multiplier"] == 1.0


def test_create_and_train_limits(url) -> None:
    for sizes in ([65536], [4096] * 17, [4096, 4000, 3900, 3800]):
        r = requests.post(f"{url}/create/hypernetwork", json={"name": "huge", "enable_sizes": sizes}, timeout=30)
        assert r.status_code == 422 and "enable_sizes" in r.json()["detail"], r.text
    r = requests.post(f"{url}/create/hypernetwork", json={"name": "wide", "enable_sizes": [32, 768]}, timeout=30)
    assert refused(r) == ("enable_sizes has 768; the loaded model's attention layers take contexts at most 64 wide, so "
                          "such modules would never be used.")
    r = requests.post(f"{url}/create/hypernetwork", json={"name": "thin", "enable_sizes": [32],
                                                          "layer_structure": "1, 0.001, 1"}, timeout=30)
    assert "gives a layer of width 0" in refused(r)
    base = {"id_task": "t", "hypernetwork_name": "style", "data_root": "set", "steps": 2}
    for change, sentence in (({"learn_rate": "-1"}, 'learn_rate "-1" has the rate -1'),
                             ({"learn_rate": "nan"}, 'learn_rate "nan" has the rate nan'),
                             ({"preview_width": 16384, "preview_from_txt2img": True},
                              "preview_width is 16384; expected a value from 8 to 8192."),
                             ({"preview_steps": 100000, "preview_from_txt2img": True},
                              "preview_steps is 100000; expected a value from 1 to 500.")):
        assert sentence in refused(requests.post(f"{url}/train/hypernetwork", json=base | change, timeout=30))


def test_prompt_weights_must_be_finite(url) -> None:
    r = requests.post(f"{url}/txt2img", json={**FAST, "prompt": "a cat <hypernet:style:nan>"}, timeout=60)
    assert r.status_code == 400 and "not a finite number" in r.json()["detail"]


@pytest.mark.slow
def test_internal_routes_unload_reload_and_docs(server, url) -> None:
    running, _ = server
    assert requests.get(f"{running.url}/internal/ping", timeout=10).json() == {}
    unknown = requests.post(f"{running.url}/internal/progress", json={"id_task": "nobody"}, timeout=10).json()
    assert unknown == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                       "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    assert requests.post(f"{url}/unload-checkpoint", timeout=60).json() == {}
    r = requests.post(f"{url}/txt2img", json={**FAST, "force_task_id": "task-abc"}, timeout=300)
    assert r.status_code == 200  # the model came back for the job
    done = requests.post(f"{running.url}/internal/progress", json={"id_task": "task-abc"}, timeout=10).json()
    assert done["completed"] is True and done["active"] is False
    assert requests.post(f"{url}/reload-checkpoint", timeout=60).json() == {}
    docs = requests.get(f"{running.url}/docs", timeout=10).text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    script = docs.split('src="')[1].split('"')[0]
    assert requests.get(running.url + script, timeout=10).status_code == 200


@pytest.mark.slow
def test_async_training_results_are_per_task(url) -> None:
    base = {"hypernetwork_name": "style", "data_root": "set", "steps": 1, "learn_rate": "1e-5",
            "training_width": 64, "training_height": 64, "create_image_every": 0, "save_hypernetwork_every": 0}
    for name in ("first", "second"):
        created = requests.post(f"{url}/create/hypernetwork", json={"name": name, "enable_sizes": [32]}, timeout=60)
        assert created.status_code == 200, created.text
    tasks = {}
    for name in ("first", "second"):
        r = requests.post(f"{url}/train/hypernetwork?async=true", json={**base, "hypernetwork_name": name,
                                                                         "id_task": f"train-{name}"}, timeout=60)
        assert r.status_code == 200, r.text
        tasks[name] = r.json()["task_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        results = {name: requests.get(f"{url}/train/hypernetwork/{task}", timeout=10).json()
                   for name, task in tasks.items()}
        if all(r.get("phase") in ("done", "failed") for r in results.values()):
            break
        time.sleep(1)
    for name, result in results.items():
        assert result["name"] == name and result["phase"] == "done", result
        assert result["filename"].endswith(f"{name}.pt")
    assert requests.get(f"{url}/train/hypernetwork/nope", timeout=10).status_code == 404


@pytest.mark.slow
def test_port_in_use_is_one_sentence_before_the_model_loads(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "hypernet.cli", "serve", "--port", str(port), "--nowebui",
                            "--ckpt", str(tmp_path / "missing-is-checked-first.safetensors")],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and "no such checkpoint" in r.stderr
        r = subprocess.run([sys.executable, "-m", "hypernet.cli", "serve", "--port", str(port), "--nowebui"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"error: --port {port}: 127.0.0.1:{port} is already in use; stop "
                                                 "the other server or choose another port with --port.")
    assert time.monotonic() - started < 60  # no model was loaded


def test_every_ui_field_is_an_input_of_the_web_ui(server) -> None:
    from hypernet.server.inputs import ui_fields
    from hypernet.server.ui import build_ui
    from hypernet.settings import CreateSettings, GenerateSettings, PreprocessSettings, TrainSettings

    _, state = server
    labels = {getattr(block, "label", None) for block in build_ui(state).blocks.values()}
    for model in (GenerateSettings, CreateSettings, TrainSettings, PreprocessSettings):
        for name in ui_fields(model):
            assert model.surface(name).ui in labels, f"{model.__name__}.{name} is missing from the web UI"
