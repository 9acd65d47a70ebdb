"""The web UI's export controls, built inside the Hypernetworks tab: the same functions and job queue as the
``/hypernet/export-lora`` and ``/hypernet/bake`` endpoints."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from hypernet.errors import HypernetError
from hypernet.export import bake, export_lora, resolve_networks
from hypernet.server.export import fit_options, target_path
from hypernet.server.state import ServerState


def export_panel(state: ServerState) -> None:
    """The web UI's export controls (built inside the Hypernetworks tab): a LoRA for A1111/ComfyUI/diffusers, or a
    checkpoint with the network baked in; both go through the job queue like the HTTP endpoints."""

    def names() -> list[str]:
        return sorted(state.model.generator.available())

    def run(kind: str, name: str | None, multiplier: float, rank: float, format: str, approximate: bool) -> str:
        if not name:
            raise gr.Error("Choose a hypernetwork to export.", print_exception=False)
        try:
            entries = resolve_networks([f"{name}:{multiplier:g}"], state.config.hypernetwork_dir, allow_paths=False)
            _, fit = fit_options(state, None)
            if kind == "lora":
                target = target_path(Path(state.config.lora_dir), None, name)
                job = state.jobs.submit("export-lora", lambda job: export_lora(
                    state.model.generator, entries, target, rank=int(rank) or None, format=format, fit=fit))  # type: ignore[arg-type]
            else:
                checkpoint = Path(state.model.checkpoint.path)
                target = target_path(Path(state.config.models_dir), None, f"{checkpoint.stem}+{name}")
                job = state.jobs.submit("bake", lambda job: bake(state.model.generator, checkpoint, entries, target,
                                                                 approximate=approximate, fit=fit))
            report = job.future.result()
        except HypernetError as e:
            raise gr.Error(str(e), print_exception=False) from None
        if kind == "bake":
            state.scan_checkpoints()
        worst = max((float(row["error"]) for row in report.layers), default=0.0)
        return (f"Wrote `{report.path}` ({report.method}, {len(report.layers) // 2} attention layers, largest layer "
                f"error {worst:.2e}). {report.notes[0]}")

    with gr.Accordion("Export as LoRA / bake into the checkpoint", open=False):
        with gr.Row():
            network = gr.Dropdown(names(), label="Hypernetwork", elem_id="export_network")
            multiplier = gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Multiplier", elem_id="export_multiplier")
            rank = gr.Number(0, precision=0, minimum=0, label="LoRA rank (0 = exact)", elem_id="export_rank")
            format = gr.Radio(["kohya", "diffusers"], value="kohya", label="LoRA format", elem_id="export_format")
            approximate = gr.Checkbox(label="Bake non-linear networks approximately", elem_id="export_approximate")
        with gr.Row():
            lora_button = gr.Button("Export as LoRA", elem_id="export_lora_button")
            bake_button = gr.Button("Bake into checkpoint", elem_id="export_bake_button")
        status = gr.Markdown(elem_id="export_status")
    inputs = [network, multiplier, rank, format, approximate]
    lora_button.click(lambda *v: run("lora", *v), inputs, status)
    bake_button.click(lambda *v: run("bake", *v), inputs, status)
    network.focus(lambda: gr.update(choices=names()), None, network)
