"""Captioning through the real code paths, offline: a tiny random BLIP and a tiny WD14-style ONNX tagger built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
from transformers.models.blip import BlipImageProcessorPil

from hypernet.errors import HypernetError
from hypernet.prepare import ExistingCaption, PreprocessOptions, preprocess

WORDS = ["a", "picture", "of", "cat", "dog", "on", "the", "grass", "red", "sofa"]
SIZE = 8  # the tagger's input side
TAGS = [  # name, category, score on a pure red image, score on a pure blue one
    ("1girl", "0", 0.9, 0.9),
    ("smile_(happy)", "0", 0.6, 0.6),
    ("red_theme", "0", 0.97, 0.02),
    ("hatsune_miku", "4", 0.5, 0.5),
    ("general", "9", 0.99, 0.99),
    ("solo", "0", 0.2, 0.2),
]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BLIP captioning model of a few thousand random weights, saved as a Hub folder would be."""
    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer)\
        .save_pretrained(folder)
    torch.manual_seed(0)
    config = BlipConfig(
        text_config={"vocab_size": len(WORDS) + 6, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 32, "max_position_embeddings": 64, "bos_token_id": 5, "pad_token_id": 0,
                     "sep_token_id": 3, "eos_token_id": 3},
        vision_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WD14-layout tagger: NHWC BGR 0-255 input, sigmoid scores; only "red_theme" depends on the image."""
    folder = tmp_path_factory.mktemp("tagger")
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    weights = np.zeros((SIZE * SIZE * 3, len(TAGS)), np.float32)
    bias = np.array([logit(red) for _, _, red, _ in TAGS], np.float32)
    red_col = [name for name, *_ in TAGS].index("red_theme")
    # BGR input: red is channel 2, blue channel 0; the score follows red minus blue, so white stays low.
    weights[2::3, red_col] = (logit(0.97) - logit(0.02)) / (255 * SIZE * SIZE)
    weights[0::3, red_col] = -weights[2::3, red_col]
    bias[red_col] = logit(0.02)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input_1:0", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
            helper.make_node("Add", ["logits", "bias"], ["biased"]),
            helper.make_node("Sigmoid", ["biased"], ["predictions_sigmoid"]),
        ],
        "tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [numpy_helper.from_array(np.array([-1, SIZE * SIZE * 3], np.int64), "shape"),
         numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},100" for i, (name, cat, *_) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_tagger_writes_deepbooru_style_tags(tmp_path: Path, tagger_dir: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.new("RGB", (600, 400), (255, 0, 0)).save(src / "red.png")
    Image.new("RGB", (600, 400), (0, 0, 255)).save(src / "blue.png")
    transparent = Image.new("RGBA", (600, 400), (255, 0, 0, 0))  # red under full transparency: white to the tagger
    transparent.save(src / "ghost.png")
    (src / "red.txt").write_text("my character")
    options = PreprocessOptions(caption_tagger=True, tagger_model=str(tagger_dir), existing_caption=ExistingCaption.PREPEND,
                                flip=True, workers=1)
    report = preprocess(src, dst, options)
    captions = {p.name: p.read_text() for p in report.captions}
    # Threshold 0.35, rating tags dropped, alphabetical, underscores to spaces, parentheses escaped.
    plain = "1girl, hatsune miku, smile \\(happy\\)"
    assert captions == {
        "00000-0-blue.txt": plain,
        "00000-1-blue.txt": plain,
        "00001-0-ghost.txt": plain,
        "00001-1-ghost.txt": plain,
        "00002-0-red.txt": "my character 1girl, hatsune miku, red theme, smile \\(happy\\)",
        "00002-1-red.txt": "my character 1girl, hatsune miku, red theme, smile \\(happy\\)",
    }
    assert Image.open(dst / "00001-0-ghost.png").getchannel("A").getextrema() == (0, 0)  # the PNG keeps alpha

    stricter = preprocess(src, tmp_path / "strict", PreprocessOptions(caption_tagger=True, tagger_model=str(tagger_dir),
                                                                      tagger_threshold=0.95, workers=1))
    assert {p.name: p.read_text() for p in stricter.captions} == {"00002-0-red.txt": "red theme"}


def test_blip_caption_with_tags_and_existing_caption(tmp_path: Path, blip_dir: Path, tagger_dir: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.new("RGB", (600, 400), (0, 0, 255)).save(src / "photo.jpg")
    (src / "photo.txt").write_text("by someone")
    options = PreprocessOptions(caption_blip=True, blip_model=str(blip_dir), blip_min_length=8, blip_max_length=12,
                                caption_tagger=True, tagger_model=str(tagger_dir), existing_caption=ExistingCaption.APPEND,
                                workers=1, device="cpu")
    report = preprocess(src, dst, options)
    assert [p.name for p in report.captions] == ["00000-0-photo.txt"]
    caption = report.captions[0].read_text()
    blip_part, rest = caption.split(", ", 1)
    assert rest == "1girl, hatsune miku, smile \\(happy\\) by someone"
    words = blip_part.split()
    # The prompt "a picture of" is cut off, as A1111 cut it; what remains are words of the tiny vocabulary.
    assert words and set(words) <= set(WORDS) and not blip_part.startswith("a picture of")
    assert len(words) <= 12 - 1 - 3  # max_length counts [DEC] and the 3 prompt tokens


def test_model_errors_are_one_sentence(tmp_path: Path, tagger_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 64)).save(src / "x.png")
    with pytest.raises(HypernetError, match="blip_model 'nobody/no-such-blip' is neither a folder"):
        preprocess(src, tmp_path / "dst", PreprocessOptions(caption_blip=True, blip_model="nobody/no-such-blip"))
    with pytest.raises(HypernetError, match=r"tagger_model '.*missing' is neither a folder"):
        preprocess(src, tmp_path / "dst", PreprocessOptions(caption_tagger=True, tagger_model=str(tmp_path / "missing")))

    half = tmp_path / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    with pytest.raises(HypernetError, match="has no selected_tags.csv"):
        preprocess(src, tmp_path / "dst", PreprocessOptions(caption_tagger=True, tagger_model=str(half)))
    (half / "selected_tags.csv").write_text("tag_id,name,category,count\n0,solo,0,1\n")
    with pytest.raises(HypernetError, match="lists 1 tags but the model scores 6"):
        preprocess(src, tmp_path / "dst", PreprocessOptions(caption_tagger=True, tagger_model=str(half)))
    (half / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(HypernetError, match="could not be loaded by onnxruntime"):
        preprocess(src, tmp_path / "dst", PreprocessOptions(caption_tagger=True, tagger_model=str(half)))
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())
