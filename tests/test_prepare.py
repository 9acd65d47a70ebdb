"""Preprocessing as a user runs it: A1111's names, tile formula, crops, flips, caption actions, awkward files."""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageCms, ImageOps
from typer.testing import CliRunner

from hypernet.errors import HypernetError
from hypernet.imageio import MAX_DECODED_PIXELS
from hypernet.prepare import ExistingCaption, Objective, PreprocessOptions, preprocess
from hypernet.prepare.command import preprocess as preprocess_command
from hypernet.prepare.crops import auto_size, crop_and_resize, split_tiles
from hypernet.prepare.focal import FocalSettings, focal_crop


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A picture where every pixel differs, so crops and offsets are visible in the pixels."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- A1111's arithmetic ------------------------------------------------------------------------------------------


def test_split_portrait_matches_the_spec_example() -> None:
    # spec §1.3: 512x1536 for 512x512 -> 4 tiles at offsets 0, 341, 682, 1024.
    im = gradient(512, 1536)
    tiles = split_tiles(im, 512, 512, 0.2)
    assert [t.size for t in tiles] == [(512, 512)] * 4
    for tile, offset in zip(tiles, (0, 341, 682, 1024)):
        assert np.array_equal(np.asarray(tile), np.asarray(im.crop((0, offset, 512, offset + 512))))


def test_split_landscape_tiles_along_the_width_after_fitting_the_height() -> None:
    im = gradient(2000, 1000)
    tiles = split_tiles(im, 512, 384, 0.2)
    # Height fitted to 384 -> long side 2000*384//1000 = 768; n = ceil((768 - 102.4) / 409.6) = 2.
    resized = im.resize((768, 384), Image.Resampling.BICUBIC)
    assert len(tiles) == 2
    for tile, offset in zip(tiles, (0, 256)):
        assert np.array_equal(np.asarray(tile), np.asarray(resized.crop((offset, 0, offset + 512, 384))))


def test_split_of_a_nearly_fitting_image_gives_one_tile() -> None:
    # 1001x1000 fits 512 on the short side to a long side of exactly 512: A1111 divides by zero here.
    assert [t.size for t in split_tiles(gradient(1001, 1000), 512, 512, 0.2)] == [(512, 512)]


def test_crop_and_resize_covers_then_keeps_the_centre() -> None:
    im = gradient(1024, 768)
    out = crop_and_resize(im, 512, 512)
    expected = im.resize((682, 512), Image.Resampling.LANCZOS).crop((85, 0, 597, 512))
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_auto_size_objectives() -> None:
    args = (384, 768, 4096, 409600)
    # 4:3 within 10% error: 704x576 has the largest area under 640^2; 512x384 is exactly 4:3.
    assert auto_size((1024, 768), *args, Objective.MAXIMIZE_AREA, 0.1) == (704, 576)
    assert auto_size((1024, 768), *args, Objective.MINIMIZE_ERROR, 0.1) == (512, 384)
    assert auto_size((3000, 500), *args, Objective.MAXIMIZE_AREA, 0.1) is None


# --- the whole run -----------------------------------------------------------------------------------------------


def test_names_order_and_every_step(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    gradient(512, 1536).save(src / "b tall.jpg")  # split into 4 tiles
    gradient(300, 200).save(src / "a.png")  # smaller than the target: upscaled with a warning
    (src / "c.pdf").write_bytes(b"%PDF-1.4 not an image")
    (src / "d.jpg").write_bytes(gradient(64, 64).tobytes()[:100])  # corrupt
    (src / "e folder").mkdir()
    gradient(600, 600).save(src / "f.png")

    report = preprocess(src, dst, PreprocessOptions(split=True, flip=True, workers=1))

    # Sorted entries; non-images still use up an index; each source counts its outputs, flips included.
    expected = ["00000-0-a.png", "00000-1-a.png"]
    expected += [f"00001-{i}-b tall.png" for i in range(8)]
    expected += ["00005-0-f.png", "00005-1-f.png"]
    assert names(dst) == sorted(expected)
    assert sorted(p.name for p in report.images) == sorted(expected)
    assert all(Image.open(dst / n).size == (512, 512) for n in expected)
    assert np.array_equal(pixels(dst / "00000-1-a.png"), np.asarray(ImageOps.mirror(Image.open(dst / "00000-0-a.png"))))
    # Tile 2 of "b tall" is the second tile; its mirror is subindex 3.
    second_tile = split_tiles(Image.open(src / "b tall.jpg").convert("RGB"), 512, 512, 0.2)[1]
    assert np.array_equal(pixels(dst / "00001-2-b tall.png"), np.asarray(second_tile))
    assert np.array_equal(pixels(dst / "00001-3-b tall.png"), np.asarray(ImageOps.mirror(second_tile)))

    assert {s.path.name: s.reason for s in report.skipped} == {
        "c.pdf": "not a readable image (not a format Pillow can read)",
        "d.jpg": "not a readable image (not a format Pillow can read)",
        "e folder": "a folder (only files directly in the source folder are used)",
    }
    assert report.warnings == ["a.png: 300x200 is smaller than the target, so it was upscaled"]
    assert report.captions == [] and not report.interrupted


def test_steps_are_not_exclusive_and_default_runs_only_alone(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    gradient(1024, 768).save(src / "photo.png")
    options = PreprocessOptions(focal_crop=True, focal_debug=True, focal_face_weight=0, multicrop=True,
                                keep_original_size=True, flip_vertical=True, flip_both=True, workers=1)
    preprocess(src, dst, options)
    sizes = {n: Image.open(dst / n).size for n in names(dst)}
    assert sizes == {
        "00000-0-photo.png": (512, 512),  # focal crop, then its vertical and 180° copies
        "00000-1-photo.png": (512, 512),
        "00000-2-photo.png": (512, 512),
        "00000-3-photo.png": (682, 512),  # focal debug image: the scaled image, never flipped
        "00000-4-photo.png": (704, 576),  # auto-sized crop + 2 flips
        "00000-5-photo.png": (704, 576),
        "00000-6-photo.png": (704, 576),
        "00000-7-photo.png": (1024, 768),  # original size + 2 flips
        "00000-8-photo.png": (1024, 768),
        "00000-9-photo.png": (1024, 768),
    }
    crop = pixels(dst / "00000-0-photo.png")
    assert np.array_equal(pixels(dst / "00000-1-photo.png"), crop[::-1])
    assert np.array_equal(pixels(dst / "00000-2-photo.png"), crop[::-1, ::-1])


def test_auto_sized_crop_that_fits_nothing_writes_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    gradient(1500, 250).save(src / "banner.png")
    report = preprocess(src, dst, PreprocessOptions(multicrop=True, workers=1))
    assert names(dst) == []
    assert report.warnings == [
        "banner.png: skipped by the auto-sized crop, no size within the error threshold fits 1500x250"
    ]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (ExistingCaption.IGNORE, None),
        (ExistingCaption.COPY, "red car, studio"),
        (ExistingCaption.PREPEND, "red car, studio"),
        (ExistingCaption.APPEND, "red car, studio"),
    ],
)
def test_existing_caption_actions_without_captioning(tmp_path: Path, action: ExistingCaption, expected: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    gradient(512, 512).save(src / "car.png")
    (src / "car.txt").write_text("\ufeffred car, studio\n", encoding="utf-8")  # a BOM, as Notepad writes
    gradient(512, 512).save(src / "plain.png")
    report = preprocess(src, dst, PreprocessOptions(existing_caption=action, flip=True, workers=1))
    # "car.txt" is entry 1 and still takes its index.
    caption_files = ["00000-0-car.txt", "00000-1-car.txt"] if expected else []
    assert [p.name for p in report.captions] == caption_files
    for name in caption_files:
        assert (dst / name).read_text(encoding="utf-8") == expected
    assert "00002-0-plain.png" in names(dst) and not any(n.startswith("00002") and n.endswith(".txt") for n in names(dst))


def test_caption_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    gradient(512, 512).save(src / "cafe.png")
    (src / "cafe.txt").write_bytes("café".encode("latin-1"))
    report = preprocess(src, dst, PreprocessOptions(existing_caption=ExistingCaption.COPY, workers=1))
    assert report.captions == [] and report.warnings == ["cafe.txt: not UTF-8 text; the existing caption was ignored"]


@pytest.mark.slow
def test_an_image_too_large_to_decode_is_skipped_from_its_header(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("L", (9000, 9000)).save(src / "bomb.png")  # a few hundred KB, 81 million pixels decoded
    Image.new("RGB", (64, 64), "red").save(src / "fine.png")
    report = preprocess(src, tmp_path / "dst", PreprocessOptions(width=64, height=64))
    assert len(report.images) == 1
    assert [(s.path.name, s.reason) for s in report.skipped] == [
        ("bomb.png", f"not a readable image (9000x9000 is 81,000,000 pixels; images of at most {MAX_DECODED_PIXELS:,} "
                     "pixels are read)")]


def test_images_as_people_have_them(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    # A phone photo stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    gradient(80, 40).save(src / "a_rotated.jpg", exif=exif, quality=95)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(src / "b_cmyk.jpg", quality=100)
    palette = Image.new("P", (40, 30))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.paste(1, (0, 0, 20, 30))
    palette.info["transparency"] = 0
    palette.save(src / "c_palette.png")
    Image.new("LA", (40, 30), (90, 40)).save(src / "d_la.png")
    Image.fromarray(np.array([[0, 32768, 65535, 65535]] * 3, dtype=np.uint16)).save(src / "e_16bit.png")
    Image.new("L", (40, 30), 77).save(src / "f_grey.png")
    Image.new("RGBA", (40, 30), (1, 2, 3, 255)).save(src / "g_opaque.png")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(src / "h_icc.png", icc_profile=srgb)

    report = preprocess(src, dst, PreprocessOptions(keep_original_size=True, workers=1))
    assert report.skipped == []
    out = {p.name.split("-", 2)[2]: Image.open(p) for p in report.images}
    rotated = out["a_rotated.png"]
    assert rotated.size == (40, 80) and rotated.mode == "RGB"  # upright: portrait
    # Turned clockwise: the stored left column (red 0) is now the top row, the stored bottom row (green 255) the
    # left column.
    assert np.asarray(rotated)[0, :, 0].max() < 20 and np.asarray(rotated)[:, 0, 1].min() > 230
    assert out["b_cmyk.png"].mode == "RGB" and out["b_cmyk.png"].getpixel((5, 5)) == (255, 0, 0)
    assert out["c_palette.png"].mode == "RGBA"
    assert out["c_palette.png"].getpixel((5, 5)) == (0, 0, 255, 255)
    assert out["c_palette.png"].getchannel("A").getpixel((30, 5)) == 0  # transparency kept for use_weight
    assert out["d_la.png"].mode == "RGBA" and out["d_la.png"].getpixel((0, 0)) == (90, 90, 90, 40)
    assert list(np.asarray(out["e_16bit.png"])[0, :, 0]) == [0, 128, 255, 255]  # scaled, not clipped
    assert out["f_grey.png"].mode == "RGB" and out["f_grey.png"].getpixel((0, 0)) == (77, 77, 77)
    assert out["g_opaque.png"].mode == "RGB"
    assert np.abs(np.asarray(out["h_icc.png"])[0, 0].astype(int) - (10, 200, 30)).max() <= 1  # sRGB to sRGB


def test_source_folder_is_only_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 3
    gradient(700, 300).save(src / "x.jpg", exif=exif)
    (src / "x.txt").write_text("caption")
    before = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in src.iterdir()}
    preprocess(src, tmp_path / "dst", PreprocessOptions(existing_caption=ExistingCaption.COPY, flip=True, split=True,
                                                          workers=1))
    after = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in src.iterdir()}
    assert after == before


def test_folders_are_checked(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(HypernetError, match="is the source folder"):
        preprocess(tmp_path / "src", tmp_path / "src" / ".." / "src")
    with pytest.raises(HypernetError, match="does not exist"):
        preprocess(tmp_path / "missing", tmp_path / "dst")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HypernetError, match="is a file"):
        preprocess(tmp_path / "src", tmp_path / "file")


@pytest.mark.slow
def test_worker_processes_write_the_same_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        noise(400 + 40 * i, 300, seed=i).save(src / f"{i}.png")
    (src / "junk.bin").write_bytes(b"\0" * 10)

    def options(workers: int) -> PreprocessOptions:
        return PreprocessOptions(split=True, split_threshold=1.0, flip=True, focal_crop=True, focal_face_weight=0.0,
                                 workers=workers)

    one = preprocess(src, tmp_path / "one", options(1))
    progress: list[tuple[int, int]] = []
    two = preprocess(src, tmp_path / "two", options(2), progress=lambda done, total: progress.append((done, total)))
    assert names(tmp_path / "one") == names(tmp_path / "two") and len(one.images) > 10
    for name in names(tmp_path / "one"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert [p.name for p in one.images] == [p.name for p in two.images]
    assert one.skipped == two.skipped and len(two.skipped) == 1
    assert progress == [(i, 6) for i in range(7)]  # 0 once the run is set up, then after each file


@pytest.mark.slow
def test_should_stop_ends_the_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        gradient(100, 100).save(src / f"{i}.png")
    report = preprocess(src, tmp_path / "dst", PreprocessOptions(width=64, height=64, workers=2),
                        should_stop=lambda: True)
    assert report.interrupted and [p.name for p in report.images] == ["00000-0-0.png"]


# --- focal point crop --------------------------------------------------------------------------------------------


def test_focal_crop_follows_a_face() -> None:
    # NASA's portrait of Eileen Collins, shipped inside scikit-image; set right of a flat grey area.
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.origin is not None
    face = Image.open(Path(spec.origin).parent / "data" / "astronaut.png").convert("RGB")
    canvas = Image.new("RGB", (1024, 512), (128, 128, 128))
    canvas.paste(face, (512, 0))
    result = focal_crop(canvas, FocalSettings(512, 512, face_weight=1.0, entropy_weight=0.0, edges_weight=0.0),
                        debug=True)
    left = result.box[0]
    assert 420 <= left <= 512  # a centre crop would start at 256; her eyes are near x = 512 + 215
    assert result.scale == 1.0 and result.crop.size == (512, 512)
    assert result.debug is not None and result.debug.size == (1024, 512)


def yunet_like_model(path: Path) -> None:
    """An ONNX model with YuNet's inputs and outputs that "detects" 64x64 faces centred on bright 8x8 grid cells.

    OpenCV's FaceDetectorYN decodes it exactly as it decodes YuNet: per stride, cls*obj scores, box offsets from the
    cell and log sizes, landmarks.
    """
    nodes, weights, outputs = [], [], []

    def const(name: str, value: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(value, name))
        return name

    for stride in (8, 16, 32):
        fires = stride == 8  # only the finest grid sees faces
        nodes.append(helper.make_node("AveragePool", ["input"], [f"pool{stride}"], kernel_shape=[stride, stride],
                                      strides=[stride, stride]))
        heads = {
            "prob": (np.full((1, 3, 1, 1), 0.1 / 3 if fires else 0, np.float32), [-12.0 if fires else -30.0]),
            "box": (np.zeros((4, 3, 1, 1), np.float32), [0.5, 0.5, math.log(64 / stride), math.log(64 / stride)]),
            "kps": (np.zeros((10, 3, 1, 1), np.float32), [0.0] * 10),
        }
        for head, (w, b) in heads.items():
            nodes.append(helper.make_node("Conv", [f"pool{stride}", const(f"w_{head}{stride}", w),
                                                   const(f"b_{head}{stride}", np.array(b, np.float32))],
                                          [f"{head}{stride}"]))
        nodes.append(helper.make_node("Sigmoid", [f"prob{stride}"], [f"sigmoid{stride}"]))
        for name, source, width in (("cls", "sigmoid", 1), ("obj", "sigmoid", 1), ("bbox", "box", 4), ("kps", "kps", 10)):
            out = f"{name}_{stride}"
            nodes.append(helper.make_node("Transpose", [f"{source}{stride}"], [f"{out}_t"], perm=[0, 2, 3, 1]))
            shape = const(f"{out}_shape", np.array([1, -1, width], np.int64))
            nodes.append(helper.make_node("Reshape", [f"{out}_t", shape], [out]))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, "n", width]))
    graph = helper.make_graph(nodes, "yunet-like",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_focal_crop_with_a_yunet_model(tmp_path: Path) -> None:
    yunet_like_model(tmp_path / "yunet.onnx")
    src = tmp_path / "src"
    src.mkdir()
    canvas = Image.new("RGB", (1024, 512))
    canvas.paste((255, 255, 255), (600, 200, 608, 208))  # one bright cell: a "face" box at (572, 172), 64x64
    canvas.save(src / "group photo.png")
    options = PreprocessOptions(focal_crop=True, focal_entropy_weight=0, focal_edges_weight=0,
                                face_model=tmp_path / "yunet.onnx", workers=1)
    report = preprocess(src, tmp_path / "dst", options)
    # Focus: the box's horizontal centre (604), a third down from its top (172 + 21); the crop is pushed inside.
    assert np.array_equal(pixels(report.images[0]), np.asarray(canvas.crop((348, 0, 860, 512))))


def test_focal_crop_follows_detail_and_corners() -> None:
    busy = Image.new("RGB", (1200, 600), (128, 128, 128))
    busy.paste(noise(400, 600), (800, 0))
    entropy = focal_crop(busy, FocalSettings(512, 512, face_weight=0, entropy_weight=1, edges_weight=0))
    # Scaled to 1024x512; the most varied 512-wide window is the right edge.
    assert entropy.box == (512, 0, 1024, 512)

    corners = Image.new("RGB", (1200, 600), (128, 128, 128))
    for x in range(40, 300, 60):
        for y in range(40, 500, 60):
            corners.paste((255, 255, 255), (x, y, x + 30, y + 30))
    edges = focal_crop(corners, FocalSettings(512, 512, face_weight=0, entropy_weight=0, edges_weight=1))
    assert edges.box[0] == 0

    flat = focal_crop(Image.new("RGB", (1200, 600), (9, 9, 9)), FocalSettings(512, 512, 0, 0, 1))
    assert flat.box == (256, 0, 768, 512)  # nothing of interest: the centre


def test_focal_crop_covers_an_elongated_target() -> None:
    # A1111 would fit the height (640x512) and pad a 768-wide crop with black; covering keeps every pixel real.
    result = focal_crop(gradient(1000, 800), FocalSettings(768, 512, 0, 1, 1))
    assert result.crop.size == (768, 512) and np.asarray(result.crop).min(axis=(0, 1)).max() > 0
    assert result.box[0] == 0


# --- options, A1111 parameter names, CLI ---------------------------------------------------------------------------


def test_options_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(HypernetError, match="^width 500 must be a multiple of 8"):
        PreprocessOptions(width=500)
    with pytest.raises(HypernetError, match="^existing_caption is 'keep'; expected one of: ignore, copy, prepend or append"):
        PreprocessOptions(existing_caption="keep")  # type: ignore[arg-type]  # strings are checked at run time
    with pytest.raises(HypernetError, match="^overlap_ratio is 0.95; expected a value from 0 to 0.9"):
        PreprocessOptions(overlap_ratio=0.95)
    with pytest.raises(HypernetError, match="^face_model .* is not a file"):
        PreprocessOptions(face_model=tmp_path / "yunet.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    (tmp_path / "src").mkdir()
    with pytest.raises(HypernetError, match="could not be loaded by OpenCV's YuNet"):
        preprocess(tmp_path / "src", tmp_path / "dst", PreprocessOptions(focal_crop=True, face_model=bad))


def test_a1111_parameters() -> None:
    options = PreprocessOptions.from_a1111({
        "id_task": "task(1)", "process_src": "/in", "process_dst": "/out", "process_width": 768,
        "process_height": 512, "preprocess_txt_action": "prepend", "process_flip": True, "process_split": True,
        "split_threshold": 1.7, "overlap_ratio": 0.95, "process_caption_deepbooru": True,
        "process_multicrop": True, "process_multicrop_objective": "Minimize error", "process_multicrop_mindim": None,
    })
    assert (options.width, options.height, options.existing_caption) == (768, 512, ExistingCaption.PREPEND)
    assert options.flip and options.split and options.caption_tagger and not options.caption_blip
    assert (options.split_threshold, options.overlap_ratio) == (1.0, 0.9)  # clamped as A1111 clamps
    assert options.multicrop_objective is Objective.MINIMIZE_ERROR and options.multicrop_min_dim == 384
    with pytest.raises(HypernetError, match="'process_rotate' is not a parameter"):
        PreprocessOptions.from_a1111({"process_rotate": True})


def test_command_line(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(preprocess_command)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    gradient(256, 256).save(src / "one.png")
    (src / "bad.jpg").write_bytes(b"nope")
    runner = CliRunner()
    result = runner.invoke(app, [str(src), str(dst), "--width", "128", "--height", "64", "--flip-vertical"])
    assert result.exit_code == 0, result.output
    assert "Wrote 2 images and 0 captions" in result.output and "bad.jpg: not a readable image" in result.output
    assert names(dst) == ["00001-0-one.png", "00001-1-one.png"]
    assert Image.open(dst / "00001-0-one.png").size == (128, 64)

    result = runner.invoke(app, [str(src), str(src)])
    assert isinstance(result.exception, HypernetError)
    result = runner.invoke(app, [str(src), str(dst), "--existing-caption", "keep"])
    assert isinstance(result.exception, HypernetError) and "existing_caption is 'keep'" in str(result.exception)
