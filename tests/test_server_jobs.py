"""One job on the model at a time: queueing, progress with live previews, interrupt, skip, clients that disconnect,
and training/preprocessing over HTTP (synchronous as in A1111, and asynchronous)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import webuiapi
from PIL import Image

from hypernet.network import load_hypernetwork
from hypernet.server import Limits, ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config
from hypernet.settings.limits import MAX_STEPS

SMALL = {"width": 64, "height": 64, "sampler_name": "Euler", "seed": 5}
LONG = MAX_STEPS  # sampling steps of jobs that tests interrupt, skip or abandon: the most any path allows
TIMEOUT = 120  # seconds; every wait in this module is bounded


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # long jobs (LONG steps) are interrupted early; the bound only matters if interrupting were broken
    config = tiny_server_config(tmp_path_factory.mktemp("jobs"), limits=Limits(max_steps=LONG))
    state = ServerState.start(config)
    with BackgroundServer(create_app(state)) as running:
        yield running, state


@pytest.fixture
def url(server) -> str:
    return server[0].url + "/sdapi/v1"


def wait_until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def progress(url: str, images: bool = False) -> dict:
    return requests.get(f"{url}/progress", params={"skip_current_image": not images}, timeout=10).json()


def running_step(url: str, at_least: int = 1, job_no: int = 0) -> Callable[[], dict | None]:
    def check() -> dict | None:
        p = progress(url, images=True)
        state = p["state"]
        return p if state["job_no"] == job_no and state["sampling_step"] >= at_least else None

    return check


def post_in_background(pool: ThreadPoolExecutor, url: str, path: str, body: dict):
    return pool.submit(lambda: requests.post(f"{url}/{path}", json=body, timeout=TIMEOUT))


def raw_post(port: int, path: str, body: dict) -> socket.socket:
    """Send a request and keep the socket, so the test can hang up before the answer."""
    data = json.dumps(body).encode()
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return conn


def idle(url: str) -> bool:
    p = progress(url)
    return p["state"]["job_count"] == 0 and p["progress"] == 0.0


@pytest.mark.slow
def test_concurrent_requests_queue_one_job_at_a_time(server, url, monkeypatch) -> None:
    _, state = server
    generator = state.model.generator
    active, most = [0], [0]
    lock = threading.Lock()
    original = generator.generate

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(generator, "generate", counting)
    with ThreadPoolExecutor(4) as pool:
        futures = [post_in_background(pool, url, "txt2img", {**SMALL, "prompt": f"p{i} <hypernet:style:0.5>",
                                                              "steps": 2, "seed": i}) for i in range(4)]
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 4
    assert [json.loads(a.json()["info"])["all_seeds"] for a in answers] == [[0], [1], [2], [3]]
    assert most[0] == 1, "two generations ran on the model at once"


def test_progress_preview_and_interrupt_mid_sampling(server, url) -> None:
    with ThreadPoolExecutor(1) as pool:
        pending = post_in_background(pool, url, "txt2img", {**SMALL, "prompt": "a long one", "steps": LONG, "n_iter": 3})
        p = wait_until(running_step(url, at_least=2), "sampling to start")
        state = p["state"]
        assert state["job"] == "txt2img" and state["job_count"] == 3 and state["sampling_steps"] == LONG
        assert 0.01 < p["progress"] < 0.5 and p["eta_relative"] >= 0
        p = wait_until(lambda: progress(url, images=True)["current_image"] and progress(url, images=True), "a preview")
        preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
        assert preview.format == "PNG" and preview.size == (64, 64)
        assert progress(url)["current_image"] is None, "skip_current_image=true must leave the image out"
        assert requests.post(f"{url}/interrupt", timeout=10).json() == {}
        answer = pending.result()
    assert answer.status_code == 200
    info = json.loads(answer.json()["info"])
    assert info["interrupted"] is True
    assert len(answer.json()["images"]) == 1, "the interrupted batch keeps its partial image; later ones never start"
    wait_until(lambda: idle(url), "the server to go idle")


def test_skip_ends_the_current_batch_only(server, url) -> None:
    with ThreadPoolExecutor(1) as pool:
        pending = post_in_background(pool, url, "txt2img", {**SMALL, "prompt": "skip me", "steps": LONG, "n_iter": 2})
        wait_until(running_step(url, at_least=1, job_no=0), "the first batch")
        assert requests.post(f"{url}/skip", timeout=10).json() is None
        wait_until(running_step(url, at_least=1, job_no=1), "the second batch")
        requests.post(f"{url}/interrupt", timeout=10)
        answer = pending.result()
    info = json.loads(answer.json()["info"])
    assert info["skipped_batches"] == 1 and info["interrupted"] is True
    assert info["all_seeds"] == [5, 6] and len(answer.json()["images"]) == 2


@pytest.mark.slow
def test_client_that_disconnects_is_abandoned_and_server_carries_on(server, url) -> None:
    running, state = server
    completed = state.jobs.completed
    conn = raw_post(running.port, "/sdapi/v1/txt2img", {**SMALL, "prompt": "nobody waits", "steps": LONG})
    wait_until(running_step(url, at_least=1), "the abandoned job to run")
    conn.close()
    wait_until(lambda: idle(url), "the abandoned job to stop", timeout=30)
    assert state.jobs.completed == completed + 1

    # a queued job whose client leaves never runs
    with ThreadPoolExecutor(1) as pool:
        first = post_in_background(pool, url, "txt2img", {**SMALL, "prompt": "first", "steps": LONG})
        wait_until(running_step(url, at_least=1), "the first job")
        cancelled = state.jobs.cancelled
        conn = raw_post(running.port, "/sdapi/v1/txt2img", {**SMALL, "prompt": "queued", "steps": 2})
        wait_until(lambda: state.jobs.pending == 1, "the second job to queue")
        conn.close()
        wait_until(lambda: state.jobs.pending == 0, "the queued job to be dropped", timeout=30)
        assert state.jobs.cancelled == cancelled + 1
        requests.post(f"{url}/interrupt", timeout=10)
        assert first.result().status_code == 200
    again = requests.post(f"{url}/txt2img", json={**SMALL, "prompt": "still fine", "steps": 2}, timeout=TIMEOUT)
    assert again.status_code == 200 and len(again.json()["images"]) == 1


def train_body(name: str, **changes) -> dict:
    """The body A1111's UI sends (all 29 keywords, id_task included), at tiny sizes."""
    body = {"id_task": "task(abc)", "hypernetwork_name": name, "learn_rate": "0.0001", "batch_size": 1,
            "gradient_step": 1, "data_root": "set", "log_directory": "textual_inversion", "training_width": 64,
            "training_height": 64, "varsize": False, "steps": 2, "clip_grad_mode": "disabled", "clip_grad_value": "0.1",
            "shuffle_tags": False, "tag_drop_out": 0, "latent_sampling_method": "once", "use_weight": False,
            "create_image_every": 0, "save_hypernetwork_every": 0, "template_filename": "hypernetwork.txt",
            "preview_from_txt2img": False, "preview_prompt": "", "preview_negative_prompt": "", "preview_steps": 20,
            "preview_sampler_name": "Euler a", "preview_cfg_scale": 7, "preview_seed": -1, "preview_width": 512,
            "preview_height": 512}
    return body | changes


@pytest.mark.slow
def test_training_over_http_sync_and_async(server, url) -> None:
    running, state = server
    api = webuiapi.WebUIApi(port=running.port)
    create = {"name": "trained", "enable_sizes": [48, 32, 64], "layer_structure": "1, 2, 1", "activation_func": "relu",
              "weight_init": "XavierNormal", "overwrite_old": True}
    assert api.custom_post("sdapi/v1/create/hypernetwork", create).info.startswith("create hypernetwork filename:")
    path = state.config.hypernetwork_dir / "trained.pt"

    done = api.custom_post("sdapi/v1/train/hypernetwork", train_body("trained", save_hypernetwork_every=1,
                                                                     health_probes=1))
    assert done.info == f"train embedding complete: filename: {path} error: None"
    assert load_hypernetwork(path).step == 2
    assert done.json["stopped"] == "finished"
    # training health: the start and both snapshots measured, the recommendation (if any) among the snapshots
    assert [row["step"] for row in done.json["health"]] == [0, 1, 2] and done.json["recommended_step"] in (None, 1, 2)
    assert isinstance(done.json["overcooked"], bool) and done.json["health"][1]["fidelity"] != ""
    already = api.custom_post("sdapi/v1/train/hypernetwork", train_body("trained"))
    assert already.info == f"train embedding complete: filename: {path} error: None"
    assert "already been trained" in already.json["message"]
    failed = requests.post(f"{url}/train/hypernetwork", json=train_body("trained", learn_rate="fast", steps=5), timeout=30)
    assert failed.status_code == 422 and failed.json()["detail"].startswith('learn_rate "fast" has the rate "fast"')
    unknown = api.custom_post("sdapi/v1/train/hypernetwork", train_body("nope"))
    assert unknown.info.startswith("train embedding complete: filename:  error: ") and "nope" in unknown.info

    # async: answers at once, /progress follows it (step, loss, preview), generation waits, /interrupt saves it
    body = train_body("trained", steps=100000, create_image_every=1, preview_from_txt2img=True, preview_steps=2,
                      preview_sampler_name="Euler", preview_width=64, preview_height=64, preview_prompt="a preview")
    started = requests.post(f"{url}/train/hypernetwork", params={"async": "true"}, json=body, timeout=30).json()
    assert started["info"] == "train hypernetwork started: trained" and started["task_id"] == "task(abc)"

    def trained_with_preview() -> dict | None:
        p = progress(url, images=True)
        t = p.get("training") or {}
        return p if (t.get("step", 0) >= 4 and t.get("loss") is not None and p["current_image"]) else None

    p = wait_until(trained_with_preview, "training steps with a loss and a preview")
    assert p["state"]["job"] == "train-hypernetwork" and p["state"]["job_count"] == 100000
    assert "loss" in p["textinfo"] and Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).size == (64, 64)
    with ThreadPoolExecutor(1) as pool:
        waiting = post_in_background(pool, url, "txt2img", {**SMALL, "prompt": "after training", "steps": 2})
        # the generation is queued behind the training job (not merely slow): it waits until training ends
        wait_until(lambda: state.jobs.pending == 1, "the generation to queue behind training")
        assert state.jobs.current is not None and state.jobs.current.name == "train-hypernetwork"
        assert not waiting.done(), "a generation ran while the model was training"
        assert requests.post(f"{url}/interrupt", timeout=10).json() == {}
        assert waiting.result().status_code == 200
    result = state.last_training.result
    assert result.stopped == "interrupted" and result.step >= 4
    assert load_hypernetwork(path).step == result.step, "interrupt saves the network"
    ended = progress(url)["training"]  # an async client learns how the run ended
    assert ended["stopped"] == "interrupted" and ended["step"] == result.step and ended["filename"] == str(path)


def test_preprocess_over_http(server, url) -> None:
    _, state = server
    raw = state.config.data_dir / "raw"
    raw.mkdir()
    Image.new("RGB", (120, 80), "red").save(raw / "wide.png")
    Image.new("RGB", (80, 80), "blue").save(raw / "square.jpg")
    (raw / "notes.txt").write_text("not an image")
    body = {"id_task": "t", "process_src": "raw", "process_dst": "prepped", "process_width": 64, "process_height": 64,
            "preprocess_txt_action": "ignore", "process_flip": True, "process_split": False, "process_caption": False,
            "process_caption_deepbooru": False}
    answer = requests.post(f"{url}/preprocess", json=body, timeout=TIMEOUT).json()
    assert answer["info"] == "preprocess complete" and answer["images"] == 4
    assert len(list((state.config.data_dir / "prepped").glob("*.png"))) == 4
    bad = requests.post(f"{url}/preprocess", json={**body, "process_width": 63}, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("process_width is 63")
