"""Captions for training images: BLIP (transformers) and a WD14-style tagger (onnxruntime), combined as A1111 did."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hypernet.errors import HypernetError
from hypernet.prepare.options import ExistingCaption, PreprocessOptions

_TAG_SPECIALS = re.compile(r"([\\()])")
_RATING_CATEGORY = "9"


def combine(generated: str, existing: str | None, action: ExistingCaption) -> str:
    """The caption to write, from the generated one and ``<source stem>.txt`` (A1111's ``preprocess_txt_action``)."""
    if existing:
        if action is ExistingCaption.COPY:
            generated = existing
        elif action is ExistingCaption.PREPEND:
            generated = f"{existing} {generated}"
        elif action is ExistingCaption.APPEND:
            generated = f"{generated} {existing}"
    return generated.strip()


class Captioner:
    """BLIP caption, then tagger tags, joined with ", " (either may be off)."""

    def __init__(self, options: PreprocessOptions) -> None:
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.blip = (
            BlipCaptioner(options.blip_model, device, options.blip_num_beams, options.blip_min_length,
                          options.blip_max_length)
            if options.caption_blip
            else None
        )
        self.tagger = Tagger(options.tagger_model, options.tagger_threshold, device) if options.caption_tagger else None

    def __call__(self, images: list[Image.Image]) -> list[str]:
        """One caption per RGB image."""
        captions = self.blip(images) if self.blip else [""] * len(images)
        if self.tagger:
            tags = [self.tagger(im) for im in images]
            captions = [", ".join(part for part in pair if part) for pair in zip(captions, tags)]
        return captions


class BlipCaptioner:
    """BLIP as A1111 ran it: greedy decoding, 24 to 48 tokens, prompted with "a picture of " which is then cut off."""

    prompt = "a picture of "

    def __init__(self, model: str, device: str, num_beams: int = 1, min_length: int = 24, max_length: int = 48):
        # Imported here: transformers takes seconds to import and only captioning needs it.
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            # The PIL backend gives the same pixels whether or not torchvision happens to be installed.
            self.processor = BlipProcessor.from_pretrained(model, backend="pil")
            self.model = BlipForConditionalGeneration.from_pretrained(model, device_map=device).eval()
        except OSError:
            raise HypernetError(
                f"blip_model {model!r} is neither a folder with a BLIP captioning model nor a Hugging Face model "
                "in the local cache (run once with network access to download it)"
            ) from None
        self.device = device
        self.generate_kwargs = {"num_beams": num_beams, "min_length": min_length, "max_length": max_length,
                                "do_sample": False}

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        inputs = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt").to(self.device)
        output = self.model.generate(**inputs, **self.generate_kwargs)
        texts = self.processor.batch_decode(output, skip_special_tokens=True)
        return [text.strip().removeprefix(self.prompt.strip()).strip() for text in texts]


class Tagger:
    """A WD14-style ONNX tagger (a folder or Hub repo with ``model.onnx`` and ``selected_tags.csv``).

    Tags are written like A1111's deepbooru tags: those scoring at least ``threshold``, rating tags left out,
    sorted alphabetically, underscores as spaces, parentheses and backslashes escaped for prompt syntax.
    """

    files = ("model.onnx", "selected_tags.csv")

    def __init__(self, model: str, threshold: float, device: str = "cpu"):
        import onnxruntime

        folder = self._folder(model)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid models
            raise HypernetError(f"{folder / 'model.onnx'} could not be loaded by onnxruntime: {e}") from None
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise HypernetError(
                f"{folder / 'model.onnx'} takes input of shape {shape}; expected a WD14 tagger's [batch, size, size, 3]"
            )
        self.input_name, self.size = model_input.name, shape[1]
        self.names, self.categories = self._read_tags(folder / "selected_tags.csv")
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.names):
            raise HypernetError(
                f"{folder / 'selected_tags.csv'} lists {len(self.names)} tags but the model scores {outputs}"
            )
        self.threshold = threshold

    def __call__(self, image: Image.Image) -> str:
        """The tags of one RGB image, comma-separated."""
        scores = self.session.run(None, {self.input_name: self._prepare(image)})[0][0]
        chosen = sorted(
            name
            for name, category, score in zip(self.names, self.categories, scores)
            if score >= self.threshold and category != _RATING_CATEGORY
        )
        return ", ".join(_TAG_SPECIALS.sub(r"\\\1", name.replace("_", " ")) for name in chosen)

    def _prepare(self, image: Image.Image) -> np.ndarray:
        # WD14 convention: pad to a white square, resize, BGR float 0..255, NHWC.
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        pixels = np.asarray(square.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.float32)
        return np.ascontiguousarray(pixels[None, :, :, ::-1])

    @classmethod
    def _folder(cls, model: str) -> Path:
        folder = Path(model)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(model, allow_patterns=list(cls.files)))
            except (OSError, ValueError):
                raise HypernetError(
                    f"tagger_model {model!r} is neither a folder nor a Hugging Face model in the local cache; "
                    "expected a folder with model.onnx and selected_tags.csv"
                ) from None
        for name in cls.files:
            if not (folder / name).is_file():
                raise HypernetError(f"tagger_model {model!r} has no {name}; expected model.onnx and selected_tags.csv")
        return folder

    @staticmethod
    def _read_tags(path: Path) -> tuple[list[str], list[str]]:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "name" not in rows[0]:
            raise HypernetError(f"{path} has no 'name' column; expected WD14's tag_id,name,category,count header")
        return [row["name"] for row in rows], [row.get("category", "0") for row in rows]
