"""img2img's resize modes (A1111's resize_mode): the fitted image, and each mode through the engine and the API."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.resize import RESIZE_MODES, fit_image
from hypernet.settings import SettingsError
from hypernet.testing import save_single_file, tiny_pipeline


def _wide() -> Image.Image:
    """128x64: a red left half and a blue right half, a green first column and a yellow last column."""
    a = np.zeros((64, 128, 3), np.uint8)
    a[:, :64] = (255, 0, 0)
    a[:, 64:] = (0, 0, 255)
    a[:, 0] = (0, 255, 0)
    a[:, -1] = (255, 255, 0)
    return Image.fromarray(a)


def test_modes_fit_a_wide_image_into_a_square_as_a1111_does() -> None:
    wide = _wide()
    stretched = np.asarray(fit_image(0, wide, 64, 64))
    assert stretched.shape == (64, 64, 3) and stretched[32, 16, 0] > 200 and stretched[32, 48, 2] > 200
    cropped = np.asarray(fit_image(1, wide, 64, 64))  # scaled to 64 high (already), the sides cut off
    assert cropped.shape == (64, 64, 3)
    assert cropped[32, 1, 1] < 50 and cropped[32, 1, 0] > 200  # the green edge column was cropped away
    filled = np.asarray(fit_image(2, wide, 64, 64))  # scaled to 64x32 in the middle, bands above and below
    assert filled.shape == (64, 64, 3)
    assert (filled[0, 16] == filled[16, 16]).all() and (filled[63, 48] == filled[47, 48]).all()  # edge rows stretched
    assert fit_image(3, wide, 64, 64) is wide  # latent upscale: the latents are resized, not the image
    assert RESIZE_MODES[1] == "Crop and resize"


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Generator:
    checkpoint = save_single_file(tiny_pipeline("sd1"), tmp_path_factory.mktemp("m") / "tiny.safetensors", "sd1")
    return Generator(*load_pipeline(checkpoint))


@pytest.mark.slow
@pytest.mark.parametrize("mode", range(4))
def test_every_mode_gives_an_image_of_the_asked_size(generator: Generator, mode: int) -> None:
    out = generator.generate(Settings("a", steps=2, width=64, height=32, seed=1, init_image=_wide().resize((100, 60)),
                                      denoising_strength=0.5, resize_mode=mode))
    assert out.images[0].size == (64, 32)


def test_an_unknown_mode_is_one_sentence(generator: Generator) -> None:
    with pytest.raises(SettingsError, match="resize_mode is 7"):
        generator.generate(Settings("a", steps=1, width=64, height=64, init_image=_wide(), resize_mode=7))


@pytest.mark.slow
def test_the_api_passes_resize_mode_to_the_engine(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from hypernet.server.app import create_app
    from hypernet.server.state import ServerState
    from hypernet.server.testing import tiny_server_config

    buffer = io.BytesIO()
    _wide().save(buffer, "PNG")
    state = ServerState.start(tiny_server_config(tmp_path))
    with TestClient(create_app(state)) as client:
        body = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "seed": 3, "denoising_strength": 0.3,
                "init_images": [base64.b64encode(buffer.getvalue()).decode()]}
        images = {}
        for mode in (0, 1):
            r = client.post("/sdapi/v1/img2img", json=body | {"resize_mode": mode})
            assert r.status_code == 200, r.text
            images[mode] = r.json()["images"][0]
        assert images[0] != images[1]  # cropped, not stretched: the mode reached the engine
        refused = client.post("/sdapi/v1/img2img", json=body | {"resize_mode": 9})
        assert refused.status_code == 422 and "resize_mode is 9" in refused.text
