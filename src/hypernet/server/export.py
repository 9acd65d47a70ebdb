"""``POST /sdapi/v1/hypernet/export-lora`` and ``/hypernet/bake`` (hypernet's own, not A1111's): the loaded model's
hypernetworks as a LoRA in the LoRA folder, or folded into a checkpoint in the models folder. Both run in the job
queue, so they wait for generations and training to finish and never change the weights under them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from hypernet.errors import HypernetError
from hypernet.export import FitOptions, bake, export_lora, resolve_networks
from hypernet.export.fit import DEFAULT_PROMPTS
from hypernet.server.jobs import wait_for_job
from hypernet.server.security import ApiError, check_plain_name
from hypernet.server.state import ServerState
from hypernet.settings import SettingsModel
from hypernet.settings.limits import MAX_PROMPT_CHARS


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
NetworkSpec = Annotated[str, Field(max_length=300)]


class ExportLoraRequest(SettingsModel):
    """Finite numbers and bounded texts, as every request (:class:`~hypernet.settings.SettingsModel`)."""

    hypernetworks: list[NetworkSpec] = Field(min_length=1, max_length=16, description="NAME or NAME:MULTIPLIER, applied in order.")
    multiplier: float = Field(1.0, ge=-10, le=10, description="Multiplier for names without one.")
    rank: int | None = Field(None, ge=1, le=4096, description="LoRA rank; null: exact deltas at full rank.")
    format: Literal["kohya", "diffusers"] = "kohya"
    include_bias: bool = Field(True, description="kohya: write the value bias as diff/diff_b (A1111, ComfyUI).")
    check: int = Field(0, ge=0, le=8, description="Prompts to generate both ways to measure the image difference.")
    prompts: list[Prompt] | None = Field(None, max_length=64, description="Prompts for fitting non-linear networks.")
    output_name: str | None = Field(None, max_length=200, description="File name (no folders) in the LoRA folder.")


class BakeRequest(SettingsModel):
    hypernetworks: list[NetworkSpec] = Field(min_length=1, max_length=16)
    approximate: bool = Field(False, description="Bake non-linear networks as their best linear fit.")
    check: int = Field(0, ge=0, le=8)
    prompts: list[Prompt] | None = Field(None, max_length=64)
    output_name: str | None = Field(None, max_length=200, description="File name (no folders) in the models folder.")


def target_path(folder: Path, wanted: str | None, fallback: str) -> Path:
    name = check_plain_name(wanted, "output_name") if wanted else fallback
    return folder / (name if name.lower().endswith(".safetensors") else f"{name}.safetensors")


def fit_options(state: ServerState, prompts: list[str] | None) -> tuple[list[str], FitOptions]:
    pipe = state.model.generator.pipe
    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    chosen = [p for p in (prompts or DEFAULT_PROMPTS) if p.strip()]
    if not chosen:
        raise HypernetError("prompts must hold at least one non-empty prompt.")
    return chosen, FitOptions(prompts=chosen, width=side, height=side)


def add_routes(api: APIRouter, state: ServerState) -> None:
    """The export endpoints, bound to ``state``."""

    def networks(specs: list[str], default: float = 1.0) -> list[Any]:
        for spec in specs:
            check_plain_name(spec, "hypernetworks")
        return resolve_networks(specs, state.config.hypernetwork_dir, default, allow_paths=False)

    @api.post("/hypernet/export-lora")
    async def export(request: Request, body: ExportLoraRequest) -> dict[str, Any]:
        entries = await run_in_threadpool(networks, body.hypernetworks, body.multiplier)
        target = target_path(Path(state.config.lora_dir), body.output_name, "+".join(net.name for net, _ in entries))
        prompts, fit = fit_options(state, body.prompts)

        def run(job: Any) -> Any:
            job.textinfo = f"Exporting {target.name}"
            return export_lora(state.model.generator, entries, target, rank=body.rank, format=body.format,
                               include_bias=body.include_bias, fit=fit, check_prompts=prompts[: body.check])

        report = await wait_for_job(request, state.jobs, state.jobs.submit("export-lora", run), abandon=False)
        return report.to_dict()

    @api.post("/hypernet/bake")
    async def bake_route(request: Request, body: BakeRequest) -> dict[str, Any]:
        checkpoint = state.model.checkpoint.path
        if not Path(checkpoint).is_file():
            raise ApiError(422, f"the loaded model {checkpoint} is not a single-file checkpoint, so it cannot be baked.")
        entries = await run_in_threadpool(networks, body.hypernetworks)
        fallback = f"{Path(checkpoint).stem}+{'+'.join(net.name for net, _ in entries)}"
        target = target_path(Path(state.config.models_dir), body.output_name, fallback)
        prompts, fit = fit_options(state, body.prompts)

        def run(job: Any) -> Any:
            job.textinfo = f"Baking {target.name}"
            return bake(state.model.generator, checkpoint, entries, target, approximate=body.approximate, fit=fit,
                        check_prompts=prompts[: body.check])

        report = await wait_for_job(request, state.jobs, state.jobs.submit("bake", run), abandon=False)
        state.scan_checkpoints()  # /sd-models lists the new checkpoint at once
        return report.to_dict()

