"""X/Y/Z plots: A1111's value syntax, labels, loop order and layout; on the toy model, a grid of a training run's
snapshots x strengths x seeds from the CLI and the API whose every cell equals a single generation."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from hypernet.cli import main
from hypernet.defaults import TOY_CHECKPOINT as CHECKPOINT
from hypernet.engine.checkpoints import load_pipeline
from hypernet.engine.generate import Generator, Settings
from hypernet.engine.infotext import parse_infotext, read_infotext
from hypernet.errors import HypernetError
from hypernet.grid.axes import (Axis, axis_from_text, parse_axis, with_network,
                                with_strength)
from hypernet.grid.layout import annotate, image_grid
from hypernet.grid.plot import (Options, Plot, add_params, network_folder,
                                run_plot)
from hypernet.network import Hypernetwork
from hypernet.server import ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.state import ServerConfig

PROMPT = "a red circle on a white background, top left"
CELL = dict(steps=4, sampler_name="Euler a", cfg_scale=5.0, width=64, height=64)
NOTHING = Axis(0, [None])


# ------------------------------------------------------------------------------------------------ axis values
@pytest.mark.parametrize(("label", "text", "values"), [
    ("Seed", "1-5", [1, 2, 3, 4, 5]),
    ("Seed", "1-5 (+2)", [1, 3, 5]),
    ("Steps", "10-1 (-3)", [10, 7, 4]),
    ("Steps", "1-10 [5]", [1, 3, 5, 7, 10]),
    ("Seed", "3, -1-1, 8", [3, -1, 0, 1, 8]),
    ("CFG Scale", "0.5-1.5 (+0.5)", [0.5, 1.0, 1.5]),
    ("CFG Scale", "0-1 [3]", [0.0, 0.5, 1.0]),
    ("Hypernet str.", "0.25, 1e-3", [0.25, 0.001]),
    ("Sampler", 'Euler a, "DPM++ 2M",, ', ["Euler a", "DPM++ 2M"]),
])
def test_value_syntax_is_a1111s(label: str, text: str, values: list) -> None:
    assert parse_axis(label, text).values == pytest.approx(values) if label != "Sampler" else \
        parse_axis(label, text).values == values


def test_bad_axes_are_sentences() -> None:
    with pytest.raises(HypernetError, match="integers"):
        parse_axis("Steps", "7.0")
    with pytest.raises(HypernetError, match="not supported"):
        parse_axis(2, "1")  # Var. seed: A1111's index, a feature hypernet lacks
    with pytest.raises(HypernetError, match="unknown"):
        parse_axis("Colour", "red")
    with pytest.raises(HypernetError, match="LABEL: VALUES"):
        axis_from_text("Seed 1, 2")
    assert axis_from_text("Prompt S/R: a:b, c").values == ["a:b", "c"]  # a label with "/" and values with ":"
    assert axis_from_text("hypernet str.: 1").index == 52 and parse_axis("4", "5").type.label == "Steps"


def test_labels_and_dropdowns() -> None:
    assert parse_axis("CFG Scale", "7").labels == ["CFG Scale: 7.0"]
    assert parse_axis("Sampler", "", ["Euler a", "DDIM"], csv_mode=False).labels == ["Euler a", "DDIM"]
    assert parse_axis("Prompt order", "a, b").labels == ["a, b", "b, a"]
    assert parse_axis("Checkpoint name", "models/x.safetensors").labels == ["x.safetensors"]
    assert parse_axis(0).labels == [""]


@pytest.mark.slow
def test_a_plot_from_python_takes_the_models_defaults_for_unset_settings(tmp_path: Path) -> None:
    """As ``Generator.generate`` does: a base Settings without sampler, size or CFG uses the model's."""
    pipe, info = load_pipeline(CHECKPOINT)
    generator = Generator(pipe, info, tmp_path)
    base = Settings(PROMPT, steps=2, seed=3)
    result = run_plot(Plot(parse_axis("Seed", "3, 4"), NOTHING, NOTHING), base, generator)
    single = generator.generate(Settings(PROMPT, steps=2, seed=4))
    assert len(result.cells) == 2 and np.array_equal(np.asarray(result.cells[1]), np.asarray(single.images[0]))


def test_cells_loop_order_and_seeds() -> None:
    base = Settings("a <hypernet:one:0.7> cat", "ugly cat", seed=100, **CELL)
    plot = Plot(parse_axis("Prompt S/R", "cat, dog"), parse_axis("Hypernet str.", "0.5, 1"),
                parse_axis("Hypernetwork", "two, None"), Options(vary_seeds=(True, True, False)))
    cells = [c.finished() for c in plot.cells(base)]
    assert [c.prompt for c in cells[:4]] == ["a <hypernet:two:0.5> cat", "a <hypernet:two:0.5> dog",
                                             "a <hypernet:two:1> cat", "a <hypernet:two:1> dog"]
    assert cells[5].negative_prompt == "ugly dog"
    assert cells[4].prompt == cells[6].prompt == "a  cat"  # "None": the plain model, at any strength
    with pytest.raises(HypernetError, match="has none"):
        Plot(parse_axis("Hypernet str.", "1"), NOTHING, NOTHING).cells(Settings("a cat"))[0].finished()
    assert [c.seed for c in cells[:4]] == [100, 101, 102, 103]  # vary x: +ix, vary y: +iy * nx
    assert plot.run_order() == list(range(8))  # no costs: Z outer, Y, X inner
    costly = Plot(parse_axis("Seed", "1, 2"), parse_axis("Checkpoint name", "a, b"), NOTHING)
    assert costly.run_order() == [0, 1, 2, 3] and \
        Plot(parse_axis("Checkpoint name", "a, b"), parse_axis("Seed", "1, 2"), NOTHING).run_order() == [0, 2, 1, 3]
    random_seeds = Plot(parse_axis("Seed", "-1, 5"), NOTHING, NOTHING)
    fixed = random_seeds.fix_seeds(Settings("x", seed=-1))
    assert fixed.seed != -1 and random_seeds.x.values[0] != -1 and random_seeds.x.values[1] == 5
    kept = Plot(parse_axis("Seed", "-1"), NOTHING, NOTHING, Options(no_fixed_seeds=True))
    assert kept.fix_seeds(Settings("x", seed=-1)).seed == -1 and kept.x.values == [-1]


def test_network_tags() -> None:
    assert with_network("a cat", "style-100") == "a cat <hypernet:style-100:1>"
    assert with_network("a <hypernet:x:0.3> cat", "y") == "a <hypernet:y:0.3> cat"
    assert with_network("a <hypernet:x> cat <lora:z:1>", "None") == "a  cat <lora:z:1>"
    assert with_strength("<hypernet:x:0.3> and <hypernet:y>", 1.25) == "<hypernet:x:1.25> and <hypernet:y:1.25>"
    with pytest.raises(HypernetError, match="Prompt S/R did not find"):
        Plot(parse_axis("Prompt S/R", "cow, dog"), NOTHING, NOTHING).cells(Settings("a cat"))


def test_network_folder_accepts_files(tmp_path: Path) -> None:
    for name in ("a-1", "a-2"):
        Hypernetwork.create("a", [32]).save(tmp_path / "run" / f"{name}.pt")
    folder, names = network_folder([str(tmp_path / "run" / "a-1.pt"), "a-2", "None"], None)
    assert folder == (tmp_path / "run").resolve() and names == ["a-1", "a-2", "None"]
    Hypernetwork.create("b", [32]).save(tmp_path / "other" / "b.pt")
    with pytest.raises(HypernetError, match="different folders"):
        network_folder([str(tmp_path / "run" / "a-1.pt"), str(tmp_path / "other" / "b.pt")], None)


# ------------------------------------------------------------------------------------------------ layout
def test_layout_follows_a1111_sizes() -> None:
    cells = [Image.new("RGB", (100, 60), (i * 40, 0, 0)) for i in range(6)]
    grid = image_grid(cells, rows=2)
    assert grid.size == (300, 120) and grid.getpixel((250, 100)) == (200, 0, 0)
    small = image_grid([Image.new("RGB", (10, 10), "black"), Image.new("RGB", (20, 20), "red")], rows=1)
    assert small.size == (40, 20) and small.getpixel((2, 2)) == (255, 255, 255) and small.getpixel((5, 5)) == (0, 0, 0)  # centred in its slot, on white
    labelled = annotate(grid, 100, 60, ["a", "b", "c"], ["row one", "row two"], margin=4)
    pad_left = 100 * 3 // 4
    assert labelled.width == 300 + pad_left + 4 * 2
    assert labelled.height > 120 + 4 and labelled.getpixel((pad_left + 2 * 104 + 50, labelled.height - 30)) == (200, 0, 0)
    no_rows = annotate(grid, 100, 60, ["a", "b", "c"], ["", ""])
    assert no_rows.width == 300  # no row labels: no left band
    assert annotate(grid, 100, 60, ["", "", ""], ["", ""]).size == grid.size


def test_grid_infotext_keys_go_before_version() -> None:
    text = "a cat\nSteps: 4, Seed: 1, Version: hypernet 0.1.0"
    assert add_params(text, {"Script": "X/Y/Z plot", "X Values": "1, 2"}) == \
        'a cat\nSteps: 4, Seed: 1, Script: X/Y/Z plot, X Values: "1, 2", Version: hypernet 0.1.0'


# ------------------------------------------------------------------------------------------ on the toy model
# ------------------------------------------------------------------------------------------ on the toy model


@pytest.mark.slow
def test_cli_grid_of_snapshots_strengths_seeds(toy, toy_run: Path, single_image, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    main(["grid", PROMPT, "--hypernetwork-dir", str(toy_run / "hypernetworks"), "-x", "Hypernetwork: style-1, "
          "style-2, style-3", "-y", "Hypernet str.: 0.5, 1, 1.5", "-z", "Seed: 11, 12", "--steps", "4",
          "--sampler", "Euler a", "--cfg", "5", "--out", str(out)])
    assert "saved" in capsys.readouterr().out
    cells = sorted(out.glob("000*.png"))
    grids = sorted(out.glob("xyz_grid-*.png"))
    assert len(cells) == 18 and len(grids) == 1
    generator = Generator(*toy, hypernetwork_dir=toy_run / "hypernetworks")
    prompts = set()
    for path in cells:
        with Image.open(path) as image:
            text, _ = read_infotext(image)
            assert np.array_equal(np.asarray(image.convert("RGB")), single_image(generator, text)), path.name
        prompts.add(parse_infotext(text)["Prompt"])
    assert f"{PROMPT} <hypernet:style-2:1.5>" in prompts and len(prompts) == 9
    with Image.open(grids[0]) as grid:
        text, _ = read_infotext(grid)
        assert grid.width > 2 * 3 * 64 and grid.height > 3 * 64
    params = parse_infotext(text)
    assert params["Script"] == "X/Y/Z plot" and params["X Type"] == "Hypernetwork"
    assert params["Z Type"] == "Seed" and params["Fixed Z Values"] == "11, 12" and params["Seed"] == "11"


def test_cli_grid_errors_are_sentences(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["grid", PROMPT, "-x", "Hypernet str.: 1", "--out", str(tmp_path)])
    assert e.value.code == 2 and "has none" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(toy_run: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    config = ServerConfig(ckpt=CHECKPOINT, models_dir=CHECKPOINT.parent, hypernetwork_dir=toy_run / "hypernetworks",
                          data_dir=root, log_dir=root, outputs_dir=root / "outputs", ui=False)
    state = ServerState.start(config)
    with BackgroundServer(create_app(state)) as running:
        yield running, state


@pytest.mark.slow
def test_api_xyz_plot_script_args(toy, toy_run: Path, server, single_image) -> None:
    running, state = server
    args = [51, "style-1, style-2, style-3", None, 52, "0.5, 1, 1.5", None, 1, "11, 12", None,
            True, True, False, False, False, False, False, 0, False]
    body = dict(prompt=PROMPT, script_name="X/Y/Z plot", script_args=args, save_images=True, **CELL)
    r = requests.post(f"{running.url}/sdapi/v1/txt2img", json=body, timeout=600)
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in r.json()["images"]]
    info = json.loads(r.json()["info"])
    assert len(images) == 1 + 18 and images[0].width > 6 * 64
    assert parse_infotext(info["infotexts"][0])["Y Type"] == "Hypernet str."
    generator = Generator(*toy, hypernetwork_dir=toy_run / "hypernetworks")
    for image, text in zip(images[1:], info["infotexts"][1:]):
        assert np.array_equal(np.asarray(image.convert("RGB")), single_image(generator, text))
    saved = state.config.outputs_dir
    assert len(list(saved.glob("txt2img-images/*/*.png"))) == 18 and len(list(saved.glob("txt2img-grids/*/*.png"))) == 1

    bad = dict(body, script_args=[2, "1, 2", None])
    r = requests.post(f"{running.url}/sdapi/v1/txt2img", json=bad, timeout=60)
    assert r.status_code == 422 and "Var. seed" in r.json()["detail"]
    r = requests.post(f"{running.url}/sdapi/v1/txt2img", json=dict(body, script_args=[51, "nope", None]), timeout=60)
    assert r.status_code == 422 and "nope" in r.json()["detail"]
