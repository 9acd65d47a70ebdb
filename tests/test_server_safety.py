"""Safety of ``hypernet serve``: loopback by default, a loud warning for --listen without --api-auth, Basic auth on
every route, folder confinement (traversal -> 4xx), request size limits, and 422s naming undecodable images."""

from __future__ import annotations

import base64
import io
import os

import pytest
import requests
import typer
import webuiapi
from PIL import Image
from typer.testing import CliRunner

from hypernet.errors import HypernetError
from hypernet.server import Limits, ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.command import bind_address, exposure_warning, serve
from hypernet.server.security import confine, parse_api_auth
from hypernet.server.testing import tiny_server_config

USER, PASSWORD = "alice", "s3cret:with-colon"
LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    config = tiny_server_config(root, api_auth=((USER, PASSWORD), ("bob", "other")),
                                limits=Limits(max_request_bytes=LIMIT))
    state = ServerState.start(config)
    app = create_app(state)
    with BackgroundServer(app) as running:
        yield running, state, app


@pytest.fixture
def session(server) -> requests.Session:
    s = requests.Session()
    s.auth = (USER, PASSWORD)
    return s


@pytest.fixture
def url(server) -> str:
    return server[0].url + "/sdapi/v1"


def png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "green").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------------------ binding
def test_loopback_by_default_and_listen_warns_without_auth() -> None:
    assert bind_address("127.0.0.1", listen=False) == "127.0.0.1"
    assert bind_address("127.0.0.1", listen=True) == "0.0.0.0"
    assert bind_address("192.168.1.5", listen=True) == "192.168.1.5"
    assert exposure_warning("127.0.0.1", auth=False) is None
    assert exposure_warning("0.0.0.0", auth=True) is None
    assert "WITHOUT authentication" in exposure_warning("0.0.0.0", auth=False)

    app = typer.Typer()
    app.command()(serve)
    runner = CliRunner()
    loud = runner.invoke(app, ["--listen", "--ckpt", "/nonexistent/model.safetensors"])
    assert isinstance(loud.exception, HypernetError) and "no such checkpoint" in str(loud.exception)
    assert "WITHOUT authentication" in loud.stderr and "--api-auth" in loud.stderr
    quiet = runner.invoke(app, ["--listen", "--api-auth", "u:p", "--ckpt", "/nonexistent/model.safetensors"])
    assert isinstance(quiet.exception, HypernetError) and "WITHOUT" not in quiet.stderr
    local = runner.invoke(app, ["--ckpt", "/nonexistent/model.safetensors"])
    assert "WITHOUT" not in local.stderr
    bad = runner.invoke(app, ["--api-auth", "nopassword"])
    assert isinstance(bad.exception, HypernetError) and "user:password" in str(bad.exception)
    assert parse_api_auth("a:b,c:d:e") == (("a", "b"), ("c", "d:e"))


# ------------------------------------------------------------------------------------------------ auth
@pytest.mark.slow
def test_every_route_needs_auth(server, url) -> None:
    running, _, app = server
    routes = [(method, path) for path, methods in app.openapi()["paths"].items() for method in methods]
    assert len(routes) > 30
    for method, path in sorted(routes) + [("get", "/docs"), ("get", "/openapi.json"), ("get", "/"), ("post", "/")]:
        r = requests.request(method, running.url + path, json={}, timeout=10)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"].startswith("Basic")
        assert r.json()["detail"] == "Incorrect username or password"
    wrong = requests.get(f"{url}/options", auth=(USER, "wrong"), timeout=10)
    assert wrong.status_code == 401
    garbage = requests.get(f"{url}/options", headers={"Authorization": "Basic !!!"}, timeout=10)
    assert garbage.status_code == 401


def test_client_with_credentials_works(server) -> None:
    running, _, _ = server
    api = webuiapi.WebUIApi(port=running.port, username=USER, password=PASSWORD)
    assert api.get_hypernetworks()[0]["name"] == "style"
    result = api.txt2img(prompt="<hypernet:style:0.7> a cat", steps=2, width=64, height=64, sampler_name="Euler")
    assert result.image.size == (64, 64)
    other = webuiapi.WebUIApi(port=running.port, username="bob", password="other")
    assert other.get_options()["sd_hypernetwork"] == "None"


# ------------------------------------------------------------------------------------------------ confinement
@pytest.mark.parametrize("name", ["../evil", "a/b", "..\\evil", "..", "/tmp/evil", "sub/../../evil"])
def test_create_refuses_names_that_are_paths(server, session, url, name) -> None:
    _, state, _ = server
    before = set(os.listdir(state.config.hypernetwork_dir.parent))
    r = session.post(f"{url}/create/hypernetwork", json={"name": name, "enable_sizes": [48], "layer_structure": "1, 2, 1"})
    assert r.status_code == 403 and "plain name" in r.json()["detail"]
    assert set(os.listdir(state.config.hypernetwork_dir.parent)) == before


def train_body(**changes) -> dict:
    body = {"id_task": "t", "hypernetwork_name": "style", "learn_rate": "1e-5", "data_root": "set",
            "log_directory": "logs", "steps": 1, "training_width": 64, "training_height": 64,
            "template_filename": "hypernetwork.txt", "create_image_every": 0, "save_hypernetwork_every": 0}
    return body | changes


@pytest.mark.parametrize("changes, status, word", [
    ({"data_root": "../../"}, 403, "data_root"),
    ({"data_root": "/etc"}, 403, "data_root"),
    ({"log_directory": "../elsewhere"}, 403, "log_directory"),
    ({"log_directory": "/tmp"}, 403, "log_directory"),
    ({"template_filename": "../../../etc/passwd"}, 403, "template_filename"),
    ({"hypernetwork_name": "../models/hypernetworks/style"}, 403, "hypernetwork_name"),
    ({"hypernetwork_dir": "/tmp"}, 403, "hypernetwork_dir"),
    ({"resume_from": "/etc/passwd"}, 403, "resume_from"),
    ({"data_root": "link-out"}, 403, "data_root"),
    ({"data_root": ""}, 422, "data_root"),
])
def test_train_paths_stay_in_their_folders(server, session, url, changes, status, word) -> None:
    _, state, _ = server
    link = state.config.data_dir / "link-out"
    if not link.exists():
        link.symlink_to(state.config.data_dir.parent.parent, target_is_directory=True)
    r = session.post(f"{url}/train/hypernetwork", json=train_body(**changes), timeout=30)
    assert r.status_code == status, r.text
    assert word in r.json()["detail"]


def test_preprocess_paths_stay_in_the_data_folder(session, url) -> None:
    body = {"process_src": "set", "process_dst": "out", "process_width": 64, "process_height": 64}
    for changes in ({"process_src": "../../"}, {"process_dst": "/tmp/hypernet-escape"}, {"process_dst": "set/../../x"}):
        r = session.post(f"{url}/preprocess", json=body | changes, timeout=30)
        assert r.status_code == 403, r.text
    assert not os.path.exists("/tmp/hypernet-escape")


def test_confine_unit(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert confine(root, "a", "x") == (root / "a").resolve()
    assert confine(root, str(root / "a"), "x") == (root / "a").resolve()
    assert confine(root, ".", "x") == root.resolve()
    for bad in ("..", "../root2", "a/../../root-other", "/"):
        with pytest.raises(HypernetError) as e:
            confine(root, bad, "folder")
        assert e.value.status == 403


# ------------------------------------------------------------------------------------------------ sizes, images
def test_request_size_limit(session, url) -> None:
    big = {"prompt": "x" * (LIMIT + 10)}
    r = session.post(f"{url}/txt2img", json=big, timeout=30)
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(LIMIT // 1024 + 4):
            yield b" " * 1024

    r = session.post(f"{url}/png-info", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert session.get(f"{url}/options", timeout=10).status_code == 200, "the server is fine afterwards"


def test_undecodable_images_are_422_naming_the_field(session, url) -> None:
    r = session.post(f"{url}/png-info", json={"image": "not base64 at all!"}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"].startswith("image: not valid base64")
    r = session.post(f"{url}/png-info", json={"image": base64.b64encode(b"plain text, not a picture").decode()})
    assert r.status_code == 422 and r.json()["detail"].startswith("image: the base64 data is not a readable image")
    r = session.post(f"{url}/img2img", json={"init_images": [png_b64(), "%%%"], "steps": 2})
    assert r.status_code == 422 and r.json()["detail"].startswith("init_images[1]:")
    r = session.post(f"{url}/img2img", json={"init_images": ["http://169.254.169.254/latest"], "steps": 2})
    assert r.status_code == 422 and "URLs are not fetched" in r.json()["detail"]
    ok = session.post(f"{url}/png-info", json={"image": "data:image/png;base64," + png_b64()}, timeout=10)
    assert ok.status_code == 200


def test_cross_site_form_posts_cannot_change_settings(session, url) -> None:
    """A web page can only send "simple" (text/plain, form) bodies to us without a CORS preflight; they are refused."""
    before = session.get(f"{url}/options", timeout=10).json()["send_seed"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = session.post(f"{url}/options", data=f'{{"send_seed": {str(not before).lower()}}}',
                         headers={"Content-Type": content_type}, timeout=10)
        assert r.status_code == 422
    assert session.get(f"{url}/options", timeout=10).json()["send_seed"] is before
