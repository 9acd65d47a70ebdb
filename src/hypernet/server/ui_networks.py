"""The web UI's Lora and Textual Inversion tabs (A1111's extra-networks cards): clicking a card adds
``<lora:NAME:WEIGHT>`` or the embedding's name to a prompt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from hypernet.server.state import ServerState

PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".jpeg", ".webp")


def _preview(path: Path) -> str | None:
    stem = path.with_suffix("")
    return next((str(stem) + s for s in PREVIEW_SUFFIXES if Path(str(stem) + s).is_file()), None)


def lora_cards(state: ServerState, placeholder: Callable[[str], Image.Image],
               refresh: bool = False) -> tuple[list[tuple[Any, str]], list[str], str]:
    """Gallery items, names (aliases, as tags use them) and a note for the LoRA files found now."""
    files = state.model.generator.loras.available(refresh=refresh)
    items = [(_preview(f.path) or placeholder(f.alias),
              f"{f.alias} · {f.sd_version}" + (f" ({f.name})" if f.alias != f.name else "")) for f in files.values()]
    note = "" if files else f"No LoRA files in {state.config.lora_dir}."
    return items, [f.alias for f in files.values()], note


def embedding_cards(state: ServerState, placeholder: Callable[[str], Image.Image],
                    refresh: bool = False) -> tuple[list[tuple[Any, str]], list[str], str]:
    """Gallery items, names and a note for the embeddings that fit the loaded model (skipped ones in the note)."""
    generator = state.model.generator
    library = generator.embeddings
    library.for_width(sum(generator.info.text_widths), force=refresh)
    items = [(_preview(e.path) or placeholder(n), f"{n} · {e.count} vector(s)") for n, e in library.loaded.items()]
    skipped = ", ".join(f"{n} (width {e.shape})" for n, e in library.skipped.items())
    note = (f"Skipped, made for another model: {skipped}." if skipped else "") or (
        "" if items else f"No embeddings in {state.config.embeddings_dir}.")
    return items, list(library.loaded), note


def network_tabs(state: ServerState, prompts: dict[str, dict[str, Any]], placeholder: Callable[[str], Image.Image]) -> None:
    """Add the two tabs inside the current ``gr.Tabs``; ``prompts`` are the txt2img/img2img components."""

    def loras(refresh: bool = False) -> tuple[list[tuple[Any, str]], list[str], str]:
        return lora_cards(state, placeholder, refresh)

    def embeddings(refresh: bool = False) -> tuple[list[tuple[Any, str]], list[str], str]:
        return embedding_cards(state, placeholder, refresh)

    for label, key, load, tag in (
        ("Lora", "lora", loras, lambda name, weight: f"<lora:{name}:{weight:g}>"),
        ("Textual Inversion", "ti", embeddings, lambda name, _weight: name),
    ):
        with gr.Tab(label, id=f"{key}_tab") as tab:
            with gr.Row():
                choices = ["txt2img", "img2img"] if key == "lora" else [
                    "txt2img", "txt2img negative", "img2img", "img2img negative"]
                target = gr.Radio(choices, value=choices[0], label="Clicking a card adds it to", elem_id=f"{key}_target")
                weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Multiplier", elem_id=f"{key}_multiplier",
                                   visible=key == "lora")
                refresh = gr.Button("Refresh", elem_id=f"{key}_refresh", size="sm")
            names = gr.State([])
            gallery = gr.Gallery(label=label, columns=6, fit_columns=False, allow_preview=False, elem_id=f"{key}_cards",
                                 height="auto", object_fit="contain")
            note = gr.Markdown(elem_id=f"{key}_note")
        fields = [prompts[k][f] for k in ("txt2img", "img2img") for f in ("prompt", "negative_prompt")]

        tab.select(load, None, [gallery, names, note])
        refresh.click(_refresher(load), None, [gallery, names, note])
        gallery.select(_inserter(tag), [names, target, weight, *fields], fields)


def _refresher(load: Callable[..., Any]) -> Callable[[], Any]:
    return lambda: load(refresh=True)


def _inserter(tag: Callable[[str, float], str]) -> Callable[..., list[Any]]:
    """The card-click handler: append the card's tag to the chosen prompt box after a space (A1111's separator)."""

    def insert(names: list[str], where: str, weight: float, txt: str, txt_negative: str, img: str, img_negative: str,
               evt: gr.SelectData) -> list[Any]:
        texts = [txt, txt_negative, img, img_negative]
        if not 0 <= evt.index < len(names):
            return [gr.skip()] * 4
        slot = {"txt2img": 0, "txt2img negative": 1, "img2img": 2, "img2img negative": 3}[where]
        addition = tag(names[evt.index], weight)
        return [(f"{text} {addition}" if text.strip() else addition) if i == slot else gr.skip()
                for i, text in enumerate(texts)]

    return insert
