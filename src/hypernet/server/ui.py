"""The web UI (Gradio), mounted at ``/`` of the API's app: the tabs a hypernetwork user needs, nothing else.

Every action goes through the same code as the HTTP API (``plan_request``/``run_plan``, ``create_hypernetwork``,
the training and preprocessing jobs) and the same job queue, so the UI and API clients can share one server.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home from a local server

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402  # gradio's own dependency: the loss chart's frame
from fastapi import FastAPI  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from hypernet.engine.hires import UPSCALERS  # noqa: E402
from hypernet.engine.infotext import parse_infotext, read_infotext  # noqa: E402
from hypernet.engine.model_defaults import network_widths  # noqa: E402
from hypernet.engine.paste import settings_from_infotext  # noqa: E402
from hypernet.engine.resize import RESIZE_MODES  # noqa: E402
from hypernet.engine.upscalers import list_esrgan  # noqa: E402
from hypernet.errors import HypernetError  # noqa: E402
from hypernet.network import describe_file  # noqa: E402
from hypernet.sampling import SAMPLERS, SCHEDULES, resolve_sampler  # noqa: E402
from hypernet.server.export_ui import export_panel  # noqa: E402
from hypernet.server.generation import Outcome, plan_request, run_plan  # noqa: E402
from hypernet.server.hypernetworks import (  # noqa: E402
    create_hypernetwork,
    preprocess_job,
    train_config,
    training_job,
)
from hypernet.server.inputs import component, ui_fields  # noqa: E402
from hypernet.server.models import M  # noqa: E402
from hypernet.server.security import encode_png_b64  # noqa: E402
from hypernet.server.state import ServerState  # noqa: E402
from hypernet.server.ui_grid import XYZControls  # noqa: E402
from hypernet.server.ui_health import health_note, health_table  # noqa: E402
from hypernet.server.ui_networks import embedding_cards, lora_cards, network_tabs  # noqa: E402
from hypernet.settings import CreateSettings, GenerateSettings as G, PreprocessSettings  # noqa: E402
from hypernet.settings.train import TrainSettings  # noqa: E402
from hypernet.train.dataset import available_templates  # noqa: E402
from hypernet.train.outputs import moving_average  # noqa: E402

CSS = """
#hn_cards .caption-label { white-space: normal; }
.hn-note { font-size: 0.9em; opacity: 0.8; }
/* results are shown whole (object-fit: contain) and tiny ones scaled up with hard pixel edges, not blurred */
#txt2img_gallery img, #img2img_gallery img, #train_preview img { image-rendering: pixelated; object-fit: contain; }
#txt2img_gallery .grid-container, #img2img_gallery .grid-container {
  grid-template-columns: repeat(auto-fit, minmax(0, 380px)) !important; justify-content: center; }
#txt2img_gallery .thumbnail-item, #img2img_gallery .thumbnail-item { max-height: 380px; }
"""
SAME_SAMPLER, SAME_SCHEDULER = "Use same sampler", "Use same scheduler"  # A1111's hires "same as first pass"
PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".jpeg", ".webp")


def mount_ui(app: FastAPI, state: ServerState) -> None:
    """Mount the UI at ``/`` (after the API routes, which keep precedence)."""
    theme = gr.themes.Default(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    gr.mount_gradio_app(app, build_ui(state), path="/", theme=theme, css=CSS, footer_links=[], run_history=False,
                        max_file_size=state.config.limits.max_request_bytes)


def _user_error(error: Exception) -> gr.Error:
    return gr.Error(str(error), print_exception=False)


def _sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def _schedule_labels() -> list[str]:
    return [s.label for s in SCHEDULES]


def _placeholder_card(name: str) -> Image.Image:
    """A card image for networks without a preview file: a colour from the name, and its initials in a Unicode
    font (DejaVu Sans, found by name where the system has it; Pillow's own font is Latin-only and would draw boxes
    for e.g. Cyrillic, so without it the card has no initials and the caption names it)."""
    digest = hashlib.sha256(name.encode()).digest()
    image = Image.new("RGB", (256, 256), tuple(64 + b // 2 for b in digest[:3]))
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 96)
    except OSError:
        return image
    ImageDraw.Draw(image).text((128, 128), name[:2].upper(), fill="white", anchor="mm", font=font)
    return image


def toggle_tag(prompt: str, name: str, weight: float, kind: str = "hypernet") -> str:
    """A1111's card click: add ``<kind:name:weight>`` (``hypernet`` or ``lora``), or an embedding's bare name for
    ``kind="ti"``; a second click removes what the first added."""
    if kind == "ti":
        word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        if word.search(prompt):
            return re.sub(r"\s*,\s*(,\s*)+", ", ", word.sub("", prompt, count=1)).strip(" ,")
        return f"{prompt.rstrip(' ,')}, {name}" if prompt.strip() else name
    tag = re.compile(rf"\s*<{kind}:{re.escape(name)}(:[^>]*)?>")
    if tag.search(prompt):
        return tag.sub("", prompt).strip()
    return f"{prompt} <{kind}:{name}:{weight:g}>".strip()


def _seed_of(info: str) -> int:
    """The seed of the last generation (its infotext), for the reuse button; -1 when there is none."""
    match = re.search(r"\bSeed: (-?\d+)", info or "")
    return int(match.group(1)) if match else -1


def _pasted_fields(info: str) -> dict[str, Any]:
    """The txt2img/img2img fields an infotext sets (A1111's paste, through the same parser as PNG Info's button)."""
    if not info or not info.strip():
        return {}
    try:
        return settings_from_infotext(info.split("\n\n")[0])[0]
    except HypernetError:
        return {}


def _generation_status(job_no: int, job_count: int, step: int, steps: int) -> str:
    """A1111's wording: which batch of how many, and the step within it (never past the end)."""
    count = max(1, job_count)
    return f"Batch {min(job_no + 1, count)} of {count}, step {min(step, steps)}/{steps}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _progress_html(step: int, start: int, final: int, eta_s: float | None, it_per_s: float | None) -> str:
    """A progress bar with the step, speed and ETA (what A1111 shows above a running job)."""
    done, total = max(0, step - start), max(1, final - start)
    speed = f"{it_per_s:.2f} it/s" if it_per_s else "-"
    return (f'<progress value="{done}" max="{total}" style="width:100%"></progress>'
            f'<div class="hn-note">step {step}/{final} · {speed} · ETA {_duration(eta_s)}</div>')


def build_ui(state: ServerState) -> gr.Blocks:
    """The Blocks app; its handlers close over ``state`` (the UI keeps no module-level state)."""
    described: dict[str, tuple[float, dict[str, Any]]] = {}  # path -> (mtime, describe_file) cache

    def describe(path: Path) -> dict[str, Any]:
        mtime = path.stat().st_mtime
        hit = described.get(str(path))
        if hit is None or hit[0] != mtime:
            hit = described[str(path)] = (mtime, describe_file(path))
        return hit[1]

    def cards(search: str = "", sort: str = "Name") -> tuple[list[tuple[Image.Image | str, str]], list[str], str]:
        """Gallery items (preview, caption) for the discovered networks whose name contains ``search``, in ``sort``
        order; the names in that order, and a summary. Networks that cannot act on this model are flagged."""
        generator = state.model.generator
        fits = set(network_widths(generator.pipe, generator.info.text_widths))
        found = [(n, p) for n, p in generator.available().items() if (search or "").strip().lower() in n.lower()]
        if sort == "Date modified":
            found.sort(key=lambda item: -item[1].stat().st_mtime)
        items, names, rows = [], [], []
        for name, path in found:
            try:
                info = describe(path)
            except HypernetError as e:
                rows.append(f"| {name} | unreadable: {e} | | |")
                continue
            preview = next((str(path.with_name(path.stem + s)) for s in PREVIEW_SUFFIXES
                            if path.with_name(path.stem + s).is_file()), None)
            structure = "-".join(f"{x:g}" for x in info["layer_structure"])
            widths = "/".join(str(w) for w in info["widths"])
            caption = f"{name} · {widths} · {structure} {info['activation'] or 'linear'} · step {info['step']}"
            if not fits & set(info["widths"]):
                caption = f"⚠ not for this model · {caption}"
            items.append((preview or _placeholder_card(name), caption))
            names.append(name)
            rows.append(f"| {name} | {widths} | {structure} {info['activation'] or 'linear'} | {info['step']} |")
        table = "| name | widths | structure | steps |\n|---|---|---|---|\n" + "\n".join(rows) if rows else \
            f"No hypernetworks in {state.config.hypernetwork_dir} yet: create one in the Train tab."
        return items, names, table

    def generate(kind: str, fields: dict[str, Any]) -> Iterator[tuple[Any, str, str]]:
        """Run one UI generation through the API's code path, streaming the live preview while it samples."""
        model = M.StableDiffusionImg2ImgProcessingAPI if kind == "img2img" else M.StableDiffusionTxt2ImgProcessingAPI
        try:
            plan = plan_request(state, model(**fields), kind)
        except HypernetError as e:
            raise _user_error(e) from None
        job = state.jobs.submit(kind, lambda j: run_plan(state, plan, j))
        job.preview_wanted = True
        shown = None
        while not job.future.done():
            time.sleep(0.25)
            if job.sampling_steps:
                status = _generation_status(job.job_no, job.job_count, job.sampling_step, job.sampling_steps)
            else:
                status = f"waiting in the queue ({state.jobs.pending} ahead)" if state.jobs.current is not job else "starting"
            png = job.preview_png
            preview = [Image.open(io.BytesIO(png))] if png is not None and png is not shown else gr.skip()
            shown = png
            yield preview, gr.skip(), status
        try:
            outcome: Outcome = job.future.result()
        except HypernetError as e:
            raise _user_error(e) from None
        for image, text in zip(outcome.images, outcome.infotexts):
            image.info["parameters"] = text  # kept in the PNG the gallery serves for download
        info = "\n\n".join(outcome.infotexts)
        notes = [f"warning: {w}" for w in outcome.warnings]
        if outcome.interrupted:
            notes.append("interrupted")
        done = f"{len(outcome.images)} image(s) in {outcome.seconds:.1f}s" + ("; " + "; ".join(notes) if notes else "")
        yield outcome.images, info, done

    samplers, schedules = _sampler_names(), _schedule_labels()
    model = state.model.generator.defaults  # the loaded model's size, sampler, steps and CFG (A1111's when it has none)

    with gr.Blocks(title="hypernet") as ui:
        header = gr.Markdown(f"## hypernet · {state.model.checkpoint.title}")
        with gr.Row():
            checkpoint = gr.Dropdown([c.title for c in state.checkpoints], value=state.model.checkpoint.title,
                                     label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=3)
            checkpoint_refresh = gr.Button("Refresh", size="sm", elem_id="checkpoint_refresh", scale=0)
        with gr.Tabs() as main_tabs:
            # ---------------------------------------------------------------- txt2img / img2img
            tabs: dict[str, dict[str, Any]] = {}
            extra: dict[str, tuple[Any, ...]] = {}  # kind -> its extra-networks panel (toggle, panel, search, ...)
            for kind in ("txt2img", "img2img"):
                with gr.Tab(kind, id=kind):
                    c: dict[str, Any] = {}
                    with gr.Row():
                        with gr.Column(scale=3):
                            c["prompt"] = component(G, "prompt", lines=3, elem_id=f"{kind}_prompt", info=None,
                                                    placeholder="a castle <hypernet:name:0.8>")
                            c["negative_prompt"] = component(G, "negative_prompt", lines=2, info=None,
                                                             elem_id=f"{kind}_negative")
                        with gr.Column(scale=1, min_width=160):
                            c["go"] = gr.Button("Generate", variant="primary", elem_id=f"{kind}_generate")
                            with gr.Row():
                                c["interrupt"] = gr.Button("Interrupt", size="sm", elem_id=f"{kind}_interrupt")
                                c["skip"] = gr.Button("Skip", size="sm", elem_id=f"{kind}_skip")
                            extra_toggle = gr.Button("🎴 Extra networks", size="sm",
                                                     elem_id=f"{kind}_extra_networks_button")
                    # A1111's extra-networks panel under the prompt: hypernetwork, LoRA and embedding cards; a click toggles one
                    with gr.Column(visible=False, elem_id=f"{kind}_extra_networks") as extra_panel:
                        with gr.Row():
                            extra_search = gr.Textbox(label="Search", placeholder="part of a name", scale=3,
                                                      elem_id=f"{kind}_extra_networks_search")
                            extra_refresh = gr.Button("Refresh", size="sm", scale=0,
                                                      elem_id=f"{kind}_extra_networks_refresh")
                        extra_cards = gr.Gallery(label="Hypernetworks, LoRA, Textual Inversion", columns=8, fit_columns=False,
                                                 allow_preview=False, height="auto", object_fit="contain",
                                                 elem_id=f"{kind}_extra_networks_cards")
                    extra[kind] = (extra_toggle, extra_panel, extra_search, extra_refresh, extra_cards)
                    with gr.Row():
                        with gr.Column():
                            if kind == "img2img":
                                c["init_image"] = gr.Image(label="Image", type="pil", elem_id="img2img_image", height=256)
                                c["denoising_strength"] = component(G, "denoising_strength", elem_id="img2img_denoising")
                                c["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index",
                                                            label=G.surface("resize_mode").ui,
                                                            elem_id="img2img_resize_mode")
                            with gr.Row():
                                c["sampler_name"] = gr.Dropdown(samplers, value=model.sampler_name,
                                                                label=G.surface("sampler_name").ui, elem_id=f"{kind}_sampler")
                                c["scheduler"] = gr.Dropdown(schedules, value=G.model_fields["scheduler"].default,
                                                             label=G.surface("scheduler").ui, elem_id=f"{kind}_scheduler")
                            c["steps"] = component(G, "steps", value=model.steps, maximum=150, info=None, elem_id=f"{kind}_steps")
                            with gr.Row():
                                c["width"] = component(G, "width", value=model.width, minimum=64, maximum=2048, step=8, info=None,
                                                       elem_id=f"{kind}_width")
                                c["height"] = component(G, "height", value=model.height, minimum=64, maximum=2048, step=8, info=None,
                                                        elem_id=f"{kind}_height")
                            with gr.Row():
                                c["batch_size"] = component(G, "batch_size", maximum=8, info=None,
                                                            elem_id=f"{kind}_batch_size")
                                c["n_iter"] = component(G, "n_iter", info=None, elem_id=f"{kind}_n_iter")
                            with gr.Row():
                                c["cfg_scale"] = component(G, "cfg_scale", value=model.cfg_scale, minimum=1.0, maximum=30.0, step=0.5, info=None,
                                                           elem_id=f"{kind}_cfg")
                                c["seed"] = component(G, "seed", info=None, elem_id=f"{kind}_seed")
                                c["random_seed"] = gr.Button("🎲", size="sm", elem_id=f"{kind}_random_seed", scale=0,
                                                             min_width=40)
                                c["reuse_seed"] = gr.Button("♻️", size="sm", elem_id=f"{kind}_reuse_seed", scale=0,
                                                            min_width=40)
                            with gr.Accordion("Variation seed", open=False), gr.Row():
                                c["subseed"] = gr.Number(value=-1, precision=0, label="Variation seed",
                                                         elem_id=f"{kind}_subseed")
                                c["subseed_strength"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01,
                                                                  label="Variation strength", elem_id=f"{kind}_subseed_strength")
                            if kind == "txt2img":
                                with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
                                    c["enable_hr"] = gr.Checkbox(label="Hires. fix", elem_id="txt2img_enable_hr")
                                    with gr.Row():
                                        c["hr_upscaler"] = gr.Dropdown([*UPSCALERS, *list_esrgan(state.config.esrgan_dir)],
                                                                       value="Latent", label="Upscaler",
                                                                       elem_id="txt2img_hr_upscaler")
                                        c["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                                              elem_id="txt2img_hires_steps")
                                    with gr.Row():
                                        c["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01,
                                                                            label="Denoising strength",
                                                                            elem_id="txt2img_denoising_strength")
                                        c["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by",
                                                                  elem_id="txt2img_hr_scale")
                                    with gr.Row():  # A1111's choices; "Use same ..." is the first pass's
                                        c["hr_sampler_name"] = gr.Dropdown([SAME_SAMPLER, *samplers], value=SAME_SAMPLER,
                                                                           label="Hires sampling method",
                                                                           elem_id="hr_sampler")
                                        c["hr_scheduler"] = gr.Dropdown([SAME_SCHEDULER, *schedules],
                                                                        value=SAME_SCHEDULER, label="Hires schedule type",
                                                                        elem_id="hr_scheduler")
                                    c["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="hires_prompt",
                                                                placeholder="Leave empty to use the same prompt.")
                                    c["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2,
                                                                         elem_id="hires_neg_prompt",
                                                                         placeholder="Leave empty to use the same "
                                                                                     "negative prompt.")
                            c["script"] = XYZControls().inputs if kind == "txt2img" else []
                        with gr.Column():
                            c["gallery"] = gr.Gallery(label="Output", columns=2, format="png", elem_id=f"{kind}_gallery",
                                                      height=420, object_fit="contain")
                            c["status"] = gr.Markdown(elem_id=f"{kind}_status")
                            with gr.Row():
                                other = "txt2img" if kind == "img2img" else "img2img"
                                c["send"] = gr.Button(f"Send to {other}", size="sm", elem_id=f"{kind}_send_to_{other}")
                            c["info"] = gr.Textbox(label="Generation info", lines=4, elem_id=f"{kind}_info", buttons=["copy"])
                    tabs[kind] = c

            # ---------------------------------------------------------------- Hypernetworks
            with gr.Tab("Hypernetworks", id="hypernetworks") as hn_tab:
                with gr.Row():
                    insert_into = gr.Radio(["txt2img", "img2img"], value="txt2img", label="Clicking a card adds its tag to",
                                           elem_id="hn_target")
                    multiplier = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Multiplier", elem_id="hn_multiplier")
                    refresh = gr.Button("Refresh", elem_id="hn_refresh", size="sm")
                with gr.Row():
                    search = gr.Textbox(label="Search", placeholder="part of a name", elem_id="hn_search", scale=3)
                    sort = gr.Radio(["Name", "Date modified"], value="Name", label="Sort by", elem_id="hn_sort")
                card_names = gr.State([])
                gallery = gr.Gallery(label="Hypernetworks", columns=6, fit_columns=False, allow_preview=False,
                                     elem_id="hn_cards", height="auto", object_fit="contain")
                table = gr.Markdown(elem_id="hn_table")
                export_panel(state)

            network_tabs(state, tabs, _placeholder_card)  # Lora and Textual Inversion cards

            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train") as train_tab:
                with gr.Tab("Create hypernetwork", id="train_create"):
                    widths = network_widths(state.model.generator.pipe, state.model.generator.info.text_widths)
                    C = CreateSettings
                    create: dict[str, Any] = {}
                    create["name"] = component(C, "name", elem_id="create_name")
                    create["enable_sizes"] = component(C, "enable_sizes", value=", ".join(str(w) for w in widths),
                                                       elem_id="create_sizes")
                    with gr.Row():
                        create["layer_structure"] = component(C, "layer_structure", elem_id="create_layers")
                        create["activation_func"] = component(C, "activation_func", elem_id="create_activation")
                        create["weight_init"] = component(C, "weight_init", elem_id="create_init")
                    with gr.Row():
                        create["add_layer_norm"] = component(C, "add_layer_norm", elem_id="create_norm")
                        create["use_dropout"] = component(C, "use_dropout", elem_id="create_use_dropout")
                        create["dropout_structure"] = component(C, "dropout_structure", value="0, 0, 0",
                                                                elem_id="create_dropout")
                        create["overwrite_old"] = component(C, "overwrite_old", elem_id="create_overwrite")
                    with gr.Row():
                        create["activate_output"] = component(C, "activate_output", elem_id="create_activate_output")
                        create["seed"] = component(C, "seed", value=None, elem_id="create_seed")
                    create_button = gr.Button("Create hypernetwork", variant="primary", elem_id="create_button")
                    create_status = gr.Markdown(elem_id="create_status")
                train_parts = TrainingTabs(state, tabs["txt2img"])

            # ---------------------------------------------------------------- PNG Info
            with gr.Tab("PNG Info", id="pnginfo"):
                with gr.Row():
                    png_image = gr.Image(label="Image", type="filepath", elem_id="pnginfo_image", height=320)
                    with gr.Column():
                        png_text = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_text", buttons=["copy"])
                        png_to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                        png_parsed = gr.JSON(label="Parsed", elem_id="pnginfo_parsed")
                        png_to_img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")

            # ---------------------------------------------------------------- Settings
            with gr.Tab("Settings", id="settings"):
                with gr.Row():
                    set_hn = gr.Dropdown(["None"], value="None", label="Add hypernetwork to prompt",
                                         elem_id="setting_sd_hypernetwork", allow_custom_value=False)
                    set_mult = gr.Slider(0.0, 2.0, step=0.01, value=float(state.option("extra_networks_default_multiplier")),
                                         label="Default multiplier for extra networks",
                                         elem_id="setting_extra_networks_default_multiplier")
                    set_clip = gr.Slider(1, 12, step=1, value=int(state.option("CLIP_stop_at_last_layers")),
                                         label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers")
                set_apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
                set_status = gr.Markdown(elem_id="settings_result")

        # -------------------------------------------------------------------- events
        for kind, c in tabs.items():
            names = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height",
                     "batch_size", "n_iter", "cfg_scale", "seed", "subseed", "subseed_strength"] + (
                ["init_image", "denoising_strength", "resize_mode"] if kind == "img2img" else
                ["enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_sampler_name",
                 "hr_scheduler", "hr_prompt", "hr_negative_prompt"])

            def on_generate(*values: Any, kind: str = kind, names: list[str] = names) -> Iterator[tuple[Any, str, str]]:
                fields = dict(zip(names, values))
                if kind == "txt2img":
                    fields |= XYZControls.fields(list(values[len(names):]))
                for key in ("steps", "width", "height", "batch_size", "n_iter", "seed", "subseed", "hr_second_pass_steps"):
                    if key in fields:
                        fields[key] = int(fields[key] if fields[key] is not None else -1)
                for key, same in (("hr_sampler_name", SAME_SAMPLER), ("hr_scheduler", SAME_SCHEDULER)):
                    if fields.get(key) == same:
                        fields[key] = None
                init = fields.pop("init_image", None)
                if kind == "img2img":
                    if init is None:
                        raise gr.Error("Add an image to start from.", print_exception=False)

                    fields["init_images"] = [encode_png_b64(init)]
                yield from generate(kind, fields)

            c["go"].click(on_generate, [c[n] for n in names] + c["script"], [c["gallery"], c["info"], c["status"]],
                          concurrency_limit=None)
            c["interrupt"].click(state.jobs.interrupt, None, None, queue=False)
            c["skip"].click(state.jobs.skip, None, None, queue=False)
            c["random_seed"].click(lambda: -1, None, c["seed"], queue=False)
            c["reuse_seed"].click(_seed_of, c["info"], c["seed"], queue=False)

        pasted = ["prompt", "negative_prompt", "steps", "sampler_name", "cfg_scale", "seed", "width", "height"]

        def send(info: str, gallery_value: Any, to_img2img: bool) -> list[Any]:
            """A1111's "Send to": the parameters (and, to img2img, the first image) into the other tab."""
            values = _pasted_fields(info)
            out = [values.get(k, gr.skip()) for k in pasted]
            if to_img2img:
                first = (gallery_value or [None])[0]
                image = first[0] if isinstance(first, (list, tuple)) else first
                out.append(Image.open(image) if isinstance(image, str) else (image if image is not None else gr.skip()))
            return out + [gr.Tabs(selected="img2img" if to_img2img else "txt2img")]

        targets = {k: [tabs[k][n] for n in pasted] for k in tabs}
        tabs["txt2img"]["send"].click(lambda i, g: send(i, g, True), [tabs["txt2img"]["info"], tabs["txt2img"]["gallery"]],
                                      targets["img2img"] + [tabs["img2img"]["init_image"], main_tabs])
        tabs["img2img"]["send"].click(lambda i, g: send(i, g, False), [tabs["img2img"]["info"], tabs["img2img"]["gallery"]],
                                      targets["txt2img"] + [main_tabs])
        png_to_img.click(lambda i, path: send(i, [path] if path else None, True), [png_text, png_image],
                         targets["img2img"] + [tabs["img2img"]["init_image"], main_tabs])

        def settings_choices() -> Any:
            return gr.update(choices=["None", *state.model.generator.available()], value=state.option("sd_hypernetwork"))

        def apply_settings(hn: str, mult: float, clip: float) -> str:
            try:
                state.set_options({"sd_hypernetwork": hn or "None", "extra_networks_default_multiplier": mult,
                                   "CLIP_stop_at_last_layers": int(clip)})
            except HypernetError as e:
                return f"**Error:** {e}"
            return "Settings applied."

        ui.load(settings_choices, None, set_hn, show_progress="hidden")
        set_apply.click(apply_settings, [set_hn, set_mult, set_clip], set_status)

        def checkpoint_titles() -> Any:
            state.scan_checkpoints()
            return gr.update(choices=[c.title for c in state.checkpoints], value=state.model.checkpoint.title)

        def switch_checkpoint(title: str) -> tuple[Any, ...]:
            """Load the chosen checkpoint through the job queue (never during a generation), then take its defaults."""
            try:
                chosen = state.find_checkpoint(title)
                state.jobs.run("load-checkpoint", lambda job: state.switch_model(chosen))
            except HypernetError as e:
                raise _user_error(e) from None
            return (checkpoint_titles(), f"## hypernet · {state.model.checkpoint.title}", *model_values())

        checkpoint_refresh.click(checkpoint_titles, None, checkpoint, show_progress="hidden")
        ui.load(checkpoint_titles, None, checkpoint, show_progress="hidden")  # no overlay on the dropdown

        def show_cards(search: str, sort: str) -> tuple[Any, list[str], str]:
            items, names, summary = cards(search, sort)
            return items, names, summary

        def insert_tag(names: list[str], target: str, weight: float, txt_prompt: str, img_prompt: str,
                       evt: gr.SelectData) -> tuple[Any, Any]:
            name = names[evt.index] if 0 <= evt.index < len(names) else None
            if name is None:
                return gr.skip(), gr.skip()
            if target == "img2img":
                return gr.skip(), toggle_tag(img_prompt, name, weight)
            return toggle_tag(txt_prompt, name, weight), gr.skip()

        for trigger in (refresh.click, hn_tab.select, ui.load, search.submit, sort.change):
            trigger(show_cards, [search, sort], [gallery, card_names, table])

        for kind, (toggle, panel, panel_search, panel_refresh, panel_cards) in extra.items():
            shown, panel_names = gr.State(False), gr.State([])

            def panel_list(text: str, refresh: bool = False) -> tuple[Any, list[list[str]]]:
                """Hypernetwork, LoRA and embedding cards (A1111's panel has a tab for each; here one searchable
                gallery whose captions say the kind), with (kind, name) per card; ``refresh`` rescans the folders."""
                items, names, _ = cards(text)
                found = [(item, ["hypernet", name]) for item, name in zip(items, names)]
                needle = (text or "").strip().lower()
                for kind, (more, more_names, _note) in (("lora", lora_cards(state, _placeholder_card, refresh)),
                                                        ("ti", embedding_cards(state, _placeholder_card, refresh))):
                    label = "LoRA" if kind == "lora" else "Textual Inversion"
                    found += [((image, f"{label} · {caption}"), [kind, name])
                              for (image, caption), name in zip(more, more_names) if needle in name.lower()]
                return [item for item, _ in found], [key for _, key in found]

            def open_panel(visible: bool, text: str) -> tuple[Any, bool, Any, list[list[str]]]:
                items, names = panel_list(text) if not visible else ([], [])
                return (gr.Column(visible=not visible), not visible,
                        items if not visible else gr.skip(), names if not visible else gr.skip())

            def panel_click(names: list[list[str]], prompt: str, evt: gr.SelectData) -> Any:
                """A1111's card click: the tag (or the embedding's name) at the default multiplier, removed again
                by a second click."""
                if not 0 <= evt.index < len(names):
                    return gr.skip()
                kind, name = names[evt.index]
                return toggle_tag(prompt, name, float(state.option("extra_networks_default_multiplier")), kind)

            toggle.click(open_panel, [shown, panel_search], [panel, shown, panel_cards, panel_names], queue=False)
            panel_refresh.click(lambda text: panel_list(text, refresh=True), panel_search, [panel_cards, panel_names])
            panel_search.submit(panel_list, panel_search, [panel_cards, panel_names])
            panel_cards.select(panel_click, [panel_names, tabs[kind]["prompt"]], tabs[kind]["prompt"])
        for trigger in (train_tab.select, ui.load):  # networks made or copied in since the page was built
            trigger(train_parts.refresh, None, train_parts.hypernetwork, show_progress="hidden")
        ui.load(lambda: f"## hypernet · {state.model.checkpoint.title}", None, header)  # the model may have changed
        follow_model = [c[k] for c in tabs.values() for k in ("sampler_name", "steps", "width", "height", "cfg_scale")]

        def model_values() -> list[Any]:
            d = state.model.generator.defaults
            return [d.sampler_name, d.steps, d.width, d.height, d.cfg_scale] * len(tabs)

        # (not on page load: it would race a user who starts typing; a model switch from the UI updates them)
        checkpoint.input(switch_checkpoint, checkpoint, [checkpoint, header, *follow_model], show_progress="minimal")
        gallery.select(insert_tag, [card_names, insert_into, multiplier, tabs["txt2img"]["prompt"], tabs["img2img"]["prompt"]],
                       [tabs["txt2img"]["prompt"], tabs["img2img"]["prompt"]])

        def on_create(*values: Any) -> tuple[str, Any, list[str], str, Any]:
            body = dict(zip(create, values))  # field name -> value: CreateSettings reads the text lists itself
            search, sort = values[len(create):]
            try:
                path = create_hypernetwork(state, body)
            except HypernetError as e:  # in the status line: an error overlay would sit on every output until reload
                return f"**Error:** {e}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            items, names, summary = cards(search, sort)
            return f"Created {path}", items, names, summary, gr.update(choices=list(state.model.generator.available()))

        create_button.click(on_create, [*create.values(), search, sort],
                            [create_status, gallery, card_names, table, train_parts.hypernetwork])

        def on_png(path: str | None) -> tuple[str, dict[str, Any]]:
            if not path:
                return "", {}
            try:
                with Image.open(path) as image:
                    text, items = read_infotext(image)
            except OSError as e:
                raise gr.Error(f"not a readable image: {e}", print_exception=False) from None
            return text or "", parse_infotext(text) if text else {"note": "this image holds no generation parameters"}

        png_image.change(on_png, png_image, [png_text, png_parsed])

        pasted_names = [n for n in tabs["txt2img"]
                        if n not in ("go", "interrupt", "skip", "gallery", "status", "info", "script")]

        def send_to_txt2img(text: str) -> list[Any]:
            """A1111's "Send to txt2img": every field of the infotext that txt2img has; the rest is listed."""
            if not text:
                raise gr.Error("There are no generation parameters to send.", print_exception=False)
            try:
                values, ignored = settings_from_infotext(text)
                if "sampler_name" in values:  # an old combined name ("DPM++ 2M Karras") becomes both dropdowns
                    sampler, schedule = resolve_sampler(values["sampler_name"], values.get("scheduler") or "Automatic")
                    values["sampler_name"], values["scheduler"] = sampler.name, schedule.label
            except HypernetError as e:
                raise gr.Error(str(e), print_exception=False) from None
            note = f"Sent to txt2img; ignored: {', '.join(ignored)}" if ignored else "Sent to txt2img."
            return [gr.update(value=values[n]) if n in values else gr.update() for n in pasted_names] + [note]

        png_to_txt2img.click(send_to_txt2img, png_text,
                             [tabs["txt2img"][n] for n in pasted_names] + [tabs["txt2img"]["status"]])
    return ui


class TrainingTabs:
    """The Preprocess and Train sub-tabs; ``hypernetwork`` is the dropdown other tabs refresh after a create."""

    def __init__(self, state: ServerState, txt2img: dict[str, Any]) -> None:
        # the loaded model's training defaults (its native size; what its checkpoint records), else A1111's
        defaults = TrainSettings(**{name: value for name, value in state.model.generator.defaults.training().items()
                                    if name in TrainSettings.model_fields})
        data_dir, log_dir = state.config.data_dir, state.config.log_dir
        with gr.Tab("Preprocess images", id="train_preprocess"):
            gr.Markdown(f"Folders are relative to the data folder `{data_dir}`.", elem_classes="hn-note")
            with gr.Row():
                pre_src = gr.Textbox(label="Source directory", elem_id="pre_src")
                pre_dst = gr.Textbox(label="Destination directory", elem_id="pre_dst")
            P = PreprocessSettings
            pre: dict[str, Any] = {}
            with gr.Row():
                for name in ("width", "height"):
                    pre[name] = component(P, name, value=getattr(defaults, f"training_{name}"), maximum=2048, step=8,
                                          elem_id=f"pre_{name}")
                pre["existing_caption"] = component(P, "existing_caption", elem_id="pre_txt")
            with gr.Row():
                for name, elem_id in (("flip", "pre_flip"), ("split", "pre_split"), ("focal_crop", "pre_focal"),
                                      ("caption_blip", "pre_blip"), ("caption_tagger", "pre_tagger")):
                    pre[name] = component(P, name, elem_id=elem_id)
            with gr.Accordion("More options", open=False):
                for name in ui_fields(P):
                    if name not in pre:
                        pre[name] = component(P, name, elem_id=f"pre_{name}")
            pre_button = gr.Button("Preprocess", variant="primary", elem_id="pre_button")
            pre_status = gr.Markdown(elem_id="pre_status")

        with gr.Tab("Train", id="train_train"):
            gr.Markdown(f"Dataset folders are relative to `{data_dir}`, log folders to `{log_dir}`. Training runs "
                        "in the same queue as generation: images wait until it ends or is interrupted.",
                        elem_classes="hn-note")
            with gr.Row():
                # nothing preselected: the first network found may well not fit this model
                self.hypernetwork = gr.Dropdown(list(state.model.generator.available()), value=None, label="Hypernetwork",
                                                elem_id="train_hypernetwork", allow_custom_value=False)
                train_refresh = gr.Button("Refresh", size="sm", elem_id="train_refresh")
            T = TrainSettings
            train: dict[str, Any] = {}
            with gr.Row():
                train["learn_rate"] = component(T, "learn_rate", value=defaults.learn_rate, elem_id="train_lr")
                train["batch_size"] = component(T, "batch_size", value=defaults.batch_size, number=True, elem_id="train_batch_size")
                train["gradient_step"] = component(T, "gradient_step", value=defaults.gradient_step, number=True, elem_id="train_grad_step")
            with gr.Row():
                train["data_root"] = component(T, "data_root", value=defaults.data_root, elem_id="train_data")
                train["log_directory"] = component(T, "log_directory", value=".", elem_id="train_log")
                train["template_filename"] = gr.Dropdown(sorted(available_templates(None)),
                                                         value=defaults.template_filename,
                                                         label=T.surface("template_filename").ui,
                                                         elem_id="train_template")
            with gr.Row():
                train["training_width"] = component(T, "training_width", value=defaults.training_width, minimum=64, maximum=2048, step=8,
                                                    elem_id="train_width")
                train["training_height"] = component(T, "training_height", value=defaults.training_height, minimum=64, maximum=2048, step=8,
                                                     elem_id="train_height")
                train["varsize"] = component(T, "varsize", value=defaults.varsize, elem_id="train_varsize")
            with gr.Row():
                train["steps"] = component(T, "steps", value=defaults.steps, number=True, elem_id="train_steps")
                train["save_hypernetwork_every"] = component(T, "save_hypernetwork_every", value=defaults.save_hypernetwork_every, number=True,
                                                             elem_id="train_save_every")
                train["create_image_every"] = component(T, "create_image_every", value=defaults.create_image_every, number=True,
                                                        elem_id="train_image_every")
            with gr.Row():
                train["clip_grad_mode"] = component(T, "clip_grad_mode", value=defaults.clip_grad_mode, elem_id="train_clip_mode")
                train["clip_grad_value"] = component(T, "clip_grad_value", value=defaults.clip_grad_value, elem_id="train_clip_value")
                train["shuffle_tags"] = component(T, "shuffle_tags", value=defaults.shuffle_tags, elem_id="train_shuffle")
                train["tag_drop_out"] = component(T, "tag_drop_out", value=defaults.tag_drop_out, step=0.1, elem_id="train_dropout")
                train["latent_sampling_method"] = component(T, "latent_sampling_method", value=defaults.latent_sampling_method, elem_id="train_sampling")
                train["use_weight"] = component(T, "use_weight", value=defaults.use_weight, elem_id="train_use_weight")
            with gr.Accordion("Training health", open=False, elem_id="train_health_settings"):
                gr.Markdown("With snapshots on, every snapshot is measured: probe images against the start "
                            "(style effect, content fidelity, saturation, high-frequency energy, clipped colours) "
                            "and a validation loss on held-out images. The table below the chart shows them and marks "
                            "the snapshot to keep.", elem_classes="hn-note")
                with gr.Row():
                    train["validation_split"] = component(T, "validation_split", value=defaults.validation_split,
                                                          elem_id="train_validation_split")
                    train["health_probes"] = component(T, "health_probes", value=defaults.health_probes, maximum=16,
                                                       elem_id="train_health_probes")
                    train["stop_when_overcooked"] = component(T, "stop_when_overcooked",
                                                              value=defaults.stop_when_overcooked,
                                                              elem_id="train_stop_overcooked")
            from_txt2img = component(T, "preview_from_txt2img", value=defaults.preview_from_txt2img, elem_id="train_from_txt2img")
            with gr.Row():
                train_button = gr.Button("Train Hypernetwork", variant="primary", elem_id="train_button")
                interrupt = gr.Button("Interrupt", elem_id="train_interrupt")
            status = gr.Markdown(elem_id="train_status")
            progress = gr.HTML(elem_id="train_progress")
            with gr.Row():
                chart = gr.LinePlot(x="step", y="loss", color="series", title="Loss", elem_id="train_loss", height=260)
                preview = gr.Image(label="Latest preview", type="pil", elem_id="train_preview", height=260,
                                   interactive=False)
            health_warning = gr.Markdown(elem_id="train_health_note")
            health = gr.HTML(elem_id="train_health")
            # (losses shown, preview shown, status shown, superseded run, health shown)
            seen = gr.State((0, None, "", None, None))
            timer = gr.Timer(1.0)

        def on_preprocess(src: str, dst: str, *values: Any) -> str:
            body = {"process_src": src, "process_dst": dst}
            body |= {P.model_fields[name].alias or name: value for name, value in zip(pre, values)}
            try:
                report = state.jobs.run("preprocess", preprocess_job(state, body))
            except HypernetError as e:
                raise _user_error(e) from None
            skipped = f"; skipped {len(report.skipped)} file(s)" if report.skipped else ""
            return f"Preprocessing finished: {len(report.images)} image(s), {len(report.captions)} caption(s){skipped}."

        pre_button.click(on_preprocess, [pre_src, pre_dst, *pre.values()], pre_status)

        preview_keys = ("preview_prompt", "preview_negative_prompt", "preview_sampler_name", "preview_steps",
                        "preview_cfg_scale", "preview_seed", "preview_width", "preview_height")

        def on_train(name: str, use_txt2img: bool, *values: Any) -> tuple[str, str, str, str, Any]:
            body: dict[str, Any] = {"hypernetwork_name": name or "", "preview_from_txt2img": use_txt2img}
            body |= dict(zip(train, values))  # field name -> value; TrainSettings checks and converts them
            if use_txt2img:  # A1111's "Read parameters from txt2img": the txt2img tab's inputs
                body |= dict(zip(preview_keys, values[len(train):]))
            try:
                config = train_config(state, body)
            except HypernetError as e:
                raise _user_error(e) from None
            previous = id(state.last_training) if state.last_training is not None else None
            state.jobs.submit("train-hypernetwork", training_job(state, config))
            # the status shows this run from now on, not the previous run's last message
            return f"Training {config.name} queued...", "", "", "", (0, None, "", previous, None)

        txt_inputs = [txt2img[k] for k in ("prompt", "negative_prompt", "sampler_name", "steps", "cfg_scale", "seed",
                                           "width", "height")]
        train_button.click(on_train, [self.hypernetwork, from_txt2img, *train.values(), *txt_inputs],
                           [status, progress, health_warning, health, seen])
        interrupt.click(state.jobs.interrupt, None, None, queue=False)
        self.refresh = lambda: gr.update(choices=list(state.model.generator.available()))
        train_refresh.click(self.refresh, None, self.hypernetwork)

        def on_tick(shown: tuple[int, Any, str, Any, Any]) -> tuple[Any, ...]:
            record = state.last_training
            if record is None or id(record) == shown[3]:  # nothing yet, or the run a queued one replaces
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), shown
            live, losses, result = record.live, record.losses, record.result
            if result is not None:
                text = result.message
            elif record.error:
                text = f"Training failed: {record.error}"
            else:
                loss = f", loss {live['loss_avg']:.6f}" if live.get("loss_avg") is not None else ""
                text = live.get("message") or f"Training {live['name']}: step {live['step']} of {live['final_step']}{loss}"
            job = state.jobs.current
            png = job.preview_png if job is not None and job.name == "train-hypernetwork" else record.preview_png
            count = len(losses)
            chart_value = gr.skip()
            if count != shown[0]:
                steps_, values = [s for s, _ in losses[:count]], [v for _, v in losses[:count]]
                window, mean = moving_average(values)
                chart_value = pd.DataFrame({"step": steps_ * 2, "loss": values + mean,
                                            "series": ["loss"] * count + [f"moving average of {window}"] * count})
            png_id = id(png) if png is not None else None
            preview_value = Image.open(io.BytesIO(png)) if png is not None and png_id != shown[1] else gr.skip()
            status_value = text if text != shown[2] else gr.skip()
            bar = (_progress_html(live["step"], live.get("start_step", 0), live["final_step"], live.get("eta_s"),
                                  live.get("it_per_s")) if live.get("final_step") else "")
            stopped = result.stopped if result is not None else "error" if record.error else None
            rows = live.get("health") or []
            health_key = (id(record), len(rows), live.get("recommended_step"), live.get("overcooked"),
                          live.get("health_verdict"), stopped)
            note_value = table_value = gr.skip()
            if health_key != shown[4]:  # only when a measurement, the verdict or the run's end changed it
                note_value = health_note(live, stopped)
                table_value = health_table(rows, live.get("recommended_step"))
            return (chart_value, preview_value, status_value, bar, note_value, table_value,
                    (count, png_id, text, None, health_key))

        timer.tick(on_tick, seen, [chart, preview, status, progress, health_warning, health, seen],
                   show_progress="hidden")

