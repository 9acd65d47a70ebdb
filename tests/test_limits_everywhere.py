"""One limit, one sentence: the Python API, the HTTP API and the command line refuse the same value with the same
sentence (HTTP: 422 with A1111's error body; CLI: ``error: <sentence>``, exit code 2, before any model loads), for
generation and for creating, training and preprocessing."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import requests
from PIL import Image

from hypernet.cli import main
from hypernet.engine.generate import Settings
from hypernet.engine.model_defaults import ModelDefaults
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.errors import HypernetError
from hypernet.settings import CreateSettings, PreprocessSettings, SettingsError, TrainSettings
from hypernet.settings.images import open_image
from hypernet.settings.limits import MAX_IMAGES, MAX_INPUT_PIXELS, MAX_PIXELS, MAX_PROMPT_CHARS, MAX_STEPS, SEED_MAX

SEED_RANGE = f"-1 (random) or a whole number from 0 to {SEED_MAX}"

# (Python/HTTP values, command-line arguments, the sentence)
CASES = [
    ({"seed": 2**40}, ["--seed", str(2**40)], f"seed is {2**40}; expected {SEED_RANGE}."),
    ({"seed": -2}, ["--seed", "-2"], f"seed is -2; expected {SEED_RANGE}."),
    ({"subseed": 2**33}, ["--subseed", str(2**33)], f"subseed is {2**33}; expected {SEED_RANGE}."),
    ({"cfg_scale": float("inf")}, ["--cfg", "inf"], "cfg_scale is inf; expected a finite number, a value from 0 to 100."),
    ({"cfg_scale": float("nan")}, ["--cfg", "nan"], "cfg_scale is nan; expected a finite number, a value from 0 to 100."),
    ({"steps": 100000}, ["--steps", "100000"], f"steps is 100000; expected a value from 1 to {MAX_STEPS}."),
    ({"width": 100000, "height": 100000}, ["--size", "100000x100000"], "width is 100000; expected a value from 8 to 8192."),
    ({"width": 4096, "height": 4096}, ["--size", "4096x4096"],
     f"width x height is 4096x4096 (16,777,216 pixels); at most {MAX_PIXELS:,} pixels are allowed per image."),
    ({"batch_size": 16, "n_iter": 100}, ["--batch-size", "16", "--batch-count", "100"],
     f"batch_size x n_iter is 16x100; at most {MAX_IMAGES} images are allowed per request."),
    ({"subseed_strength": 2.0}, ["--subseed-strength", "2"], "subseed_strength is 2.0; expected a value from 0 to 1."),
    ({"enable_hr": True, "hr_scale": 8.0, "width": 512, "height": 512}, ["--hires", "--hr-scale", "8", "--size", "512x512"],
     "the hires size is 4096x4096 (16,777,216 pixels); at most 4,194,304 pixels are allowed per image (lower hr_scale "
     "or hr_resize_x/hr_resize_y)."),
]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    state = ServerState.start(tiny_server_config(tmp_path_factory.mktemp("everywhere")))
    with BackgroundServer(create_app(state)) as running:
        yield running.url + "/sdapi/v1"


@pytest.mark.slow
@pytest.mark.parametrize(("values", "args", "sentence"), CASES)
def test_the_same_sentence_on_every_surface(url, tmp_path: Path, capsys, values, args, sentence) -> None:
    with pytest.raises(SettingsError) as python:
        ModelDefaults().complete(Settings("x", **values)).check()  # what Generator.generate runs first
    assert str(python.value) == sentence

    body = {k: str(v) if v in (float("inf"),) or v != v else v for k, v in values.items()}  # JSON has no inf/nan
    r = requests.post(f"{url}/txt2img", json={"prompt": "x", **body}, timeout=60)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["detail"] == sentence and body["errors"] == f"422: {sentence}" and set(body) == {"error", "detail", "body", "errors"}

    with pytest.raises(SystemExit) as cli:
        main(["generate", "x", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert cli.value.code == 2 and err.strip() == f"error: {sentence}"


# (family, Python values, HTTP endpoint and body, command-line arguments, the sentence; {name} is the field as each
# surface spells it: A1111's name over HTTP and in Python, the flag's on the command line)
FAMILIES = [
    (CreateSettings, {"name": "x", "enable_sizes": [32], "layer_structure": "1, 0.001, 1"},
     "create/hypernetwork", {"name": "x", "enable_sizes": [32], "layer_structure": "1, 0.001, 1"},
     ["create", "x", "--sizes", "32", "--layers", "1, 0.001, 1"],
     'layer_structure "1, 0.001, 1" gives a layer of width 0 at width 32; every layer needs at least one unit '
     "(raise the multiplier).", {}),
    (TrainSettings, {"hypernetwork_name": "style", "learn_rate": "-1"},
     "train/hypernetwork", {"id_task": "t", "hypernetwork_name": "style", "data_root": "set", "learn_rate": "-1"},
     ["train", "style", "--data", ".", "--learn-rate", "-1"],
     'learn_rate "-1" has the rate -1; every rate must be a finite number above 0.', {}),
    (TrainSettings, {"hypernetwork_name": "style", "preview_from_txt2img": True, "preview_steps": 100000},
     "train/hypernetwork", {"id_task": "t", "hypernetwork_name": "style", "data_root": "set",
                            "preview_from_txt2img": True, "preview_steps": 100000},
     ["train", "style", "--data", ".", "--preview-steps", "100000"],
     f"preview_steps is 100000; expected a value from 1 to {MAX_STEPS}.", {}),
    (CreateSettings, {"name": "x", "enable_sizes": [65536]},
     "create/hypernetwork", {"name": "x", "enable_sizes": [65536]},
     ["create", "x", "--sizes", "65536"],
     "enable_sizes[0] is 65536; expected 1 to 16 widths, each from 1 to 4096.", {}),
    (PreprocessSettings, {"process_width": 100000},
     "preprocess", {"id_task": "t", "process_src": "set", "process_dst": "out", "process_width": 100000},
     ["preprocess", ".", "out", "--width", "100000"],
     "{name} is 100000; expected a value from 64 to 4096.", {"python": "process_width", "http": "process_width",
                                                              "cli": "width"}),
]


@pytest.mark.parametrize(("model", "values", "endpoint", "body", "args", "sentence", "names"), FAMILIES)
def test_other_families_say_the_same_sentence_too(url, tmp_path: Path, capsys, monkeypatch, model, values, endpoint,
                                                  body, args, sentence, names) -> None:
    with pytest.raises(SettingsError) as python:
        model.parse(values)
    assert str(python.value) == sentence.format(name=names.get("python"))

    r = requests.post(f"{url}/{endpoint}", json=body, timeout=60)
    assert r.status_code == 422 and r.json()["detail"] == sentence.format(name=names.get("http")), r.text

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as cli:
        main(args)
    assert cli.value.code == 2 and capsys.readouterr().err.strip() == f"error: {sentence.format(name=names.get('cli'))}"


def test_prompt_length_on_every_surface(url, tmp_path: Path, capsys) -> None:
    prompt = "x" * (MAX_PROMPT_CHARS + 1)
    sentence = f"prompt is too long; expected at most {MAX_PROMPT_CHARS} characters."
    with pytest.raises(SettingsError) as python:
        ModelDefaults().complete(Settings(prompt)).check()
    assert str(python.value) == sentence
    r = requests.post(f"{url}/txt2img", json={"prompt": prompt}, timeout=60)
    assert r.status_code == 422 and r.json()["detail"] == sentence, r.text[:500]
    with pytest.raises(SystemExit) as cli:
        main(["generate", prompt, "--out", str(tmp_path)])
    assert cli.value.code == 2 and capsys.readouterr().err.strip() == f"error: {sentence}"


def test_decoded_image_size_on_every_surface(url, tmp_path: Path, capsys) -> None:
    """A 10 KB PNG that declares 9000x9000 pixels is refused from its header on every path that decodes images."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")
    (tmp_path / "big.png").write_bytes(buffer.getvalue())
    size = f"is 9000x9000 (81,000,000 pixels); images of at most {MAX_INPUT_PIXELS:,} pixels are accepted."
    with pytest.raises(HypernetError) as python:
        open_image(tmp_path / "big.png", "init image")
    assert str(python.value) == f"init image {size}"
    encoded = base64.b64encode(buffer.getvalue()).decode()
    r = requests.post(f"{url}/img2img", json={"prompt": "x", "init_images": [encoded]}, timeout=60)
    assert r.status_code == 422 and r.json()["detail"].endswith(size), r.text[:500]
    r = requests.post(f"{url}/png-info", json={"image": encoded}, timeout=60)
    assert r.status_code == 422 and r.json()["detail"].endswith(size), r.text[:500]
    with pytest.raises(SystemExit) as cli:
        main(["generate", "x", "--init-image", str(tmp_path / "big.png"), "--out", str(tmp_path)])
    assert cli.value.code == 2 and capsys.readouterr().err.strip() == f"error: --init-image {size}"
