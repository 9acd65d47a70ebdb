"""The A1111-compatible API, driven by the unmodified ``webuiapi`` 0.9.17 client and raw requests, on a tiny model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from hypernet.engine.infotext import parse_infotext
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.testing import save_tiny_esrgan

FAST = dict(steps=3, width=64, height=64, seed=7, sampler_name="Euler", cfg_scale=7.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(tiny_server_config(tmp_path_factory.mktemp("api")))
    with BackgroundServer(create_app(state)) as running:
        yield running, state


@pytest.fixture(scope="module")
def api(server) -> webuiapi.WebUIApi:
    running, _ = server
    return webuiapi.WebUIApi(host="127.0.0.1", port=running.port, sampler="Euler", steps=3)


@pytest.fixture
def url(server) -> str:
    return server[0].url + "/sdapi/v1"


@pytest.fixture
def untouched(tmp_path):
    """A server of its own, for the test that lists what a fresh server has: the shared one gains networks, LoRAs,
    embeddings and checkpoints from the other tests, in whatever order they run."""
    state = ServerState.start(tiny_server_config(tmp_path))
    with BackgroundServer(create_app(state)) as running:
        yield running, state
    state.close()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


@pytest.mark.slow
def test_client_lists_hypernetworks_models_samplers(untouched) -> None:
    running, state = untouched
    api = webuiapi.WebUIApi(host="127.0.0.1", port=running.port, sampler="Euler", steps=3)
    assert api.get_hypernetworks() == [{"name": "style", "path": str(state.config.hypernetwork_dir / "style.pt")}]
    models = api.get_sd_models()
    assert models[0]["title"].startswith("tiny-sd1.safetensors [") and len(models[0]["hash"]) == 10
    assert api.util_get_current_model() == models[0]["title"]
    assert {"Euler a", "Euler", "DDIM", "PLMS", "UniPC", "DPM++ 2M"} <= set(api.util_get_sampler_names())
    assert "karras" in api.util_get_scheduler_names()
    assert api.get_scripts() == {"txt2img": ["x/y/z plot"], "img2img": []}
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    for empty in (api.get_loras, api.get_face_restorers, api.get_prompt_styles, api.get_sd_vae,
                  api.get_realesrgan_models):
        assert empty() == []
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    esrgan = save_tiny_esrgan(state.config.esrgan_dir / "4x-tiny.pth")
    try:
        assert api.get_upscalers()[-1] == {"name": "4x-tiny", "model_name": "ESRGAN", "model_path": str(esrgan),
                                           "model_url": None, "scale": 4}
        assert api.get_cmd_flags()["esrgan_models_path"] == str(state.config.esrgan_dir)
    finally:
        esrgan.unlink()
    assert [m["name"] for m in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    assert len(api.util_get_sampler_names()) == 20 and len(api.util_get_scheduler_names()) == 12
    assert api.get_cmd_flags()["hypernetwork_dir"] == str(state.config.hypernetwork_dir)
    assert api.get_cmd_flags()["api_auth"] is None
    memory = api.get_memory()
    assert memory["ram"]["total"] > 0 and "error" in memory["cuda"]
    assert api.refresh_checkpoints() is None


@pytest.mark.slow
def test_txt2img_with_hypernetwork_tag(api) -> None:
    plain = api.txt2img(prompt="a castle", **FAST)
    styled = api.txt2img(prompt="a castle <hypernet:style:0.7>", **FAST)
    zero = api.txt2img(prompt="a castle <hypernet:style:0>", **FAST)
    assert styled.image.size == (64, 64)
    assert np.abs(pixels(styled.image) - pixels(plain.image)).mean() > 0.5
    assert np.array_equal(pixels(zero.image), pixels(plain.image))
    info = styled.info  # the client json-decodes ``info``: it must be a JSON string
    assert info["hypernetworks"][0]["name"] == "style" and info["hypernetworks"][0]["multiplier"] == 0.7
    assert info["all_seeds"] == [7] and info["sampler_name"] == "Euler" and info["warnings"] == []
    assert info["prompt"] == "a castle <hypernet:style:0.7>"
    infotext = styled.image.info["parameters"]  # the PNG chunk A1111 writes
    assert infotext == info["infotexts"][0]
    assert parse_infotext(infotext)["Prompt"] == "a castle <hypernet:style:0.7>"
    assert styled.parameters["prompt"] == "a castle <hypernet:style:0.7>" and styled.parameters["n_iter"] == 1


def test_raw_response_shape_and_batches(url) -> None:
    body = {"prompt": "a tree", "steps": 2, "width": 64, "height": 64, "seed": 3, "batch_size": 2, "n_iter": 2,
            "sampler_index": "Euler a", "eta": 0, "denoising_strength": 0, "seed_resize_from_h": -1,
            "seed_resize_from_w": -1, "legacy_field_nobody_knows": {"x": 1}, "styles": None, "cfg_scale": None}
    r = requests.post(f"{url}/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert float(r.headers["x-process-time"]) > 0
    data = r.json()
    assert set(data) == {"images", "parameters", "info"} and isinstance(data["info"], str)
    assert len(data["images"]) == 4 and not data["images"][0].startswith("data:")
    info = json.loads(data["info"])
    assert info["all_seeds"] == [3, 4, 5, 6] and info["sampler_name"] == "Euler a" and info["cfg_scale"] == 7.0
    assert data["parameters"]["cfg_scale"] == 7.0 and data["parameters"]["steps"] == 2
    assert "legacy_field_nobody_knows" not in data["parameters"]
    no_images = requests.post(f"{url}/txt2img", json={**body, "batch_size": 1, "n_iter": 1, "send_images": False}).json()
    assert no_images["images"] == []


@pytest.mark.parametrize("sampler", ["PLMS", "DDIM", "UniPC", "DPM++ 2M Karras"])
def test_a1111_samplers_hires_fix_and_unsupported_extras(url, sampler) -> None:
    body = {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]", "steps": 3,
            "width": 64, "height": 64, "sampler_index": sampler, "enable_hr": True, "denoising_strength": 0.5,
            "hr_second_pass_steps": 2, "subseed": 3, "subseed_strength": 0.2, "restore_faces": True, "tiling": True}
    r = requests.post(f"{url}/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert any("tiling" in w for w in info["warnings"]) and not any("hires" in w for w in info["warnings"])
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (128, 128)
    text = info["infotexts"][0]
    assert "Hires upscale: 2.0" in text and "Hires steps: 2" in text and "Variation seed: 3" in text


@pytest.mark.slow
def test_hires_fix_with_an_esrgan_model_from_the_esrgan_folder(server, url) -> None:
    _, state = server
    esrgan = save_tiny_esrgan(state.config.esrgan_dir / "4x-tiny.safetensors", "old")
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "enable_hr": True, "denoising_strength": 0.5,
            "hr_scale": 1.5, "hr_second_pass_steps": 1, "hr_upscaler": "4x-tiny"}
    try:
        r = requests.post(f"{url}/txt2img", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (96, 96)
        assert "Hires upscaler: 4x-tiny" in json.loads(r.json()["info"])["infotexts"][0]
    finally:
        esrgan.unlink()
    r = requests.post(f"{url}/txt2img", json=body, timeout=120)
    assert r.status_code == 400 and 'could not find upscaler named "4x-tiny"' in r.json()["detail"]


@pytest.mark.slow
def test_options_round_trip_and_sd_hypernetwork(api, url) -> None:
    options = api.get_options()
    assert options["sd_hypernetwork"] == "None" and options["extra_networks_default_multiplier"] == 1.0
    assert options["sd_model_checkpoint"] == api.util_get_current_model()
    assert api.set_options({"send_seed": not options["send_seed"], "some_extension_setting": [1, 2]}) is None
    after = api.get_options()
    assert after["send_seed"] is (not options["send_seed"]) and after["some_extension_setting"] == [1, 2]

    tagged = api.txt2img(prompt="a dog <hypernet:style:0.6>", **FAST)
    api.set_options({"sd_hypernetwork": "style", "extra_networks_default_multiplier": 0.6})
    try:
        by_setting = api.txt2img(prompt="a dog", **FAST)
    finally:
        api.set_options({"sd_hypernetwork": "None", "extra_networks_default_multiplier": 1.0})
    assert np.array_equal(pixels(by_setting.image), pixels(tagged.image))
    assert by_setting.info["prompt"] == "a dog<hypernet:style:0.6>"

    per_request = api.txt2img(prompt="a dog", override_settings={"sd_hypernetwork": "style",
                                                                 "extra_networks_default_multiplier": 0.6}, **FAST)
    assert np.array_equal(pixels(per_request.image), pixels(tagged.image))
    assert api.get_options()["sd_hypernetwork"] == "None", "override_settings must be restored afterwards"

    bad = requests.post(f"{url}/options", json={"sd_hypernetwork": "Style"})
    assert bad.status_code == 400 and "did you mean 'style'" in bad.json()["detail"]
    bad = requests.post(f"{url}/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert bad.status_code == 400 and "not found" in bad.json()["detail"]
    assert requests.post(f"{url}/options", json={"jpeg_quality": "high"}).status_code == 422
    api.util_set_model(api.util_get_current_model())  # the client's own model switch: a no-op here


def test_samples_format_jpeg_keeps_infotext_in_exif(url) -> None:
    body = {"prompt": "a bird", "steps": 2, "width": 64, "height": 64, "seed": 1,
            "override_settings": {"samples_format": "jpg"}}
    data = requests.post(f"{url}/txt2img", json=body, timeout=120).json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert image.format == "JPEG"
    r = requests.post(f"{url}/png-info", json={"image": data["images"][0]}).json()
    assert r["parameters"]["Prompt"] == "a bird" and r["parameters"]["Seed"] == "1"


def test_img2img_and_png_info(api, url) -> None:
    source = api.txt2img(prompt="a lake", **FAST).image
    result = api.img2img(images=[source], prompt="a lake <hypernet:style:0.5>", steps=4, width=64, height=64, seed=2,
                         denoising_strength=0.5, sampler_name="Euler")
    assert result.image.size == (64, 64)
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    assert result.parameters["init_images"] is None and "include_init_images" not in result.parameters
    info = api.png_info(result.image)
    assert info.info.startswith("a lake <hypernet:style:0.5>")
    assert info.json["parameters"]["Steps"] == "4"

    missing = requests.post(f"{url}/img2img", json={"prompt": "x", "steps": 2})
    assert missing.status_code == 404 and missing.json() == {
        "error": "HTTPException", "detail": "Init image not found", "body": "", "errors": "404: Init image not found"}
    plain = requests.post(f"{url}/png-info", json={"image": webuiapi.raw_b64_img(Image.new("RGB", (8, 8)))}).json()
    assert plain["info"] == "" and plain["parameters"] == {}


def test_infotext_field_fills_unset_fields(url) -> None:
    infotext = "a fox <hypernet:style:0.4>\nNegative prompt: blur\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 11, Size: 64x64"
    data = requests.post(f"{url}/txt2img", json={"infotext": infotext, "steps": 3}, timeout=120).json()
    info = json.loads(data["info"])
    assert info["prompt"] == "a fox <hypernet:style:0.4>" and info["negative_prompt"] == "blur"
    assert info["steps"] == 3, "fields the request sets win over the infotext"
    assert (info["seed"], info["cfg_scale"], info["width"], info["sampler_name"]) == (11, 5.0, 64, "Euler")


def test_user_errors_are_4xx_with_a1111_error_body(url) -> None:
    r = requests.post(f"{url}/txt2img", json={"prompt": "<hypernet:Style>", "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert body["error"] == "HypernetError" and "did you mean 'style'" in body["detail"]
    r = requests.post(f"{url}/txt2img", json={"sampler_name": "Euler z", "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 200 and "sampler 'Euler z' is unknown" in json.loads(r.json()["info"])["warnings"][0]
    r = requests.post(f"{url}/txt2img", json={"width": 100, "height": 64, "steps": 2})
    assert r.status_code == 200 and "not a multiple of 8; using 96" in json.loads(r.json()["info"])["warnings"][0]
    r = requests.post(f"{url}/txt2img", json={"steps": "many"})
    assert r.status_code == 422 and r.json() == {"error": "HTTPException", "detail": "steps is 'many'; expected a whole number.",
                                                 "body": "", "errors": "422: steps is 'many'; expected a whole number."}
    r = requests.post(f"{url}/txt2img", json={"script_name": "sd upscale", "steps": 2})
    assert r.status_code == 422 and r.json()["detail"] == "Script 'sd upscale' not found"
    r = requests.post(f"{url}/txt2img", json={"alwayson_scripts": {"ADetailer": {"args": [False]}}, "steps": 2})
    assert r.status_code == 422 and r.json()["detail"] == "always on script ADetailer not found"
    r = requests.post(f"{url}/txt2img", json={"steps": 100000})
    assert r.status_code == 422 and r.json()["detail"] == "steps is 100000; expected a value from 1 to 500."
    r = requests.post(f"{url}/txt2img", json={"width": 4096, "height": 4096})
    assert r.status_code == 422 and "pixels" in r.json()["detail"]
    r = requests.get(f"{url}/no-such-route")
    assert r.status_code == 404 and r.json()["error"] == "HTTPException"
    square = webuiapi.raw_b64_img(Image.new("RGB", (64, 64)))
    r = requests.post(f"{url}/img2img", json={"init_images": [square], "mask": webuiapi.raw_b64_img(Image.new("L", (64, 64)))})
    assert r.status_code == 422 and r.json()["detail"].startswith("mask: inpainting is not supported")


def test_create_hypernetwork_over_http(api, server, url) -> None:
    _, state = server
    payload = {"name": "mystyle", "enable_sizes": [48, 32, 64], "overwrite_old": False, "layer_structure": "1, 2, 1",
               "activation_func": "linear", "weight_init": "Normal", "add_layer_norm": False, "use_dropout": False,
               "dropout_structure": "0, 0, 0"}
    created = api.custom_post("sdapi/v1/create/hypernetwork", payload)
    path = state.config.hypernetwork_dir / "mystyle.pt"
    assert created.info == f"create hypernetwork filename: {path}" and path.is_file()
    assert {"name": "mystyle", "path": str(path)} in api.get_hypernetworks()
    again = api.custom_post("sdapi/v1/create/hypernetwork", payload)
    assert again.info == f"create hypernetwork error: file {path} already exists"
    bad = requests.post(f"{url}/create/hypernetwork", json={**payload, "name": "x", "layer_structure": "2, 1"})
    assert bad.status_code == 422 and bad.json()["detail"] == 'layer_structure "2, 1" must start and end with 1, e.g. "1, 2, 1".'
    dropout = api.custom_post("sdapi/v1/create/hypernetwork", {**payload, "name": "dropped", "use_dropout": True,
                                                                "dropout_structure": "0, 0.1, 0", "activation_func": "relu"})
    assert dropout.info.endswith("dropped.pt")
    styled = api.txt2img(prompt="a house <hypernet:mystyle:1>", **FAST)
    assert styled.info["hypernetworks"][0]["name"] == "mystyle"
    assert requests.post(f"{url}/refresh-hypernetworks").json() is None


def test_idle_progress_is_what_clients_wait_for(api) -> None:
    progress = api.get_progress()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    assert progress["current_image"] is None and progress["state"]["job"] == ""
    api.util_wait_for_ready(check_interval=0.1)  # returns at once on an idle server
    assert api.interrupt() == {} and api.skip() is None


@pytest.mark.slow
def test_switch_checkpoint_through_options_and_override(api, server, url) -> None:
    _, state = server
    original = api.util_get_current_model()
    other = state.config.models_dir / "sub" / "other.safetensors"
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(state.config.ckpt.read_bytes())
    assert api.refresh_checkpoints() is None
    titles = api.util_get_model_names()
    assert "sub/other.safetensors" in titles, titles  # unhashed until loaded, as in A1111
    per_request = api.txt2img(prompt="a hill", override_settings={"sd_model_checkpoint": "sub/other.safetensors"}, **FAST)
    assert per_request.info["sd_model_name"] == "other"
    assert api.util_get_current_model() == original, "the override is restored afterwards"
    try:
        api.util_set_model("sub/other")  # the client's fuzzy match, then POST /options
        assert api.util_get_current_model().startswith("sub/other.safetensors [")
        assert api.txt2img(prompt="a hill", **FAST).info["sd_model_name"] == "other"
    finally:  # the server is shared: the other tests expect the original model
        api.set_options({"sd_model_checkpoint": original})
    assert api.util_get_current_model() == original


def test_loras_and_embeddings_listed_refreshed_and_used(api, server, url) -> None:
    import torch

    from hypernet.testing import TEXT_WIDTHS, kohya_lora, save_tensors

    _, state = server
    pipe = state.model.generator.pipe
    lora, _ = kohya_lora(pipe, "sd1", seed=1)
    save_tensors(lora, state.config.lora_dir / "sub" / "detail.safetensors", {"ss_output_name": "Detail"})
    width = TEXT_WIDTHS["sd1"][0]
    state.config.embeddings_dir.mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.full((2, width), 0.01)}, "step": 500}, state.config.embeddings_dir / "easyneg.pt")
    torch.save({"emb_params": torch.zeros(1, 1024)}, state.config.embeddings_dir / "sd2only.pt")
    assert requests.post(f"{url}/refresh-loras").json() is None
    assert requests.post(f"{url}/refresh-embeddings").json() is None
    assert api.get_loras() == [{"name": "detail", "alias": "Detail", "path": str(state.config.lora_dir / "sub" / "detail.safetensors"),
                                "metadata": {"ss_output_name": "Detail"}}]
    assert api.get_embeddings() == {
        "loaded": {"easyneg": {"step": 500, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": width, "vectors": 2}},
        "skipped": {"sd2only": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 1024, "vectors": 1}},
    }
    result = api.txt2img(prompt="a castle <hypernet:style:0.5> <lora:Detail:0.8>", negative_prompt="easyneg", **FAST)
    info = result.info
    assert info["extra_generation_params"]["Lora hashes"].startswith("Detail: ")
    assert info["extra_generation_params"]["TI hashes"].startswith("easyneg: ")
    assert info["loras"][0]["name"] == "Detail" and info["loras"][0]["te"] == 0.8 and info["embeddings"] == ["easyneg"]
    bad = requests.post(f"{url}/txt2img", json={"prompt": "a <lora:detial:1>", **FAST})
    assert bad.status_code == 400 and "did you mean 'detail'" in bad.json()["detail"]
