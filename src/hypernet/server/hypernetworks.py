"""``create/hypernetwork``, ``train/hypernetwork`` and ``preprocess``: A1111's untyped keyword-argument bodies.

A1111 passes these JSON objects straight on as keyword arguments; we read the same keys, answer in the same
``{"info": "..."}`` sentences (including the "train embedding" wording clients match on), and confine every
name and folder to the configured directories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from hypernet.engine.attention import attention_widths
from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork
from hypernet.prepare import PreprocessOptions, preprocess
from hypernet.server.jobs import Job, wait_for_job
from hypernet.server.security import ApiError, check_plain_name, confine
from hypernet.server.state import KEPT_RUNS, OPTION_DEFAULTS, ServerState, TrainingRecord
from hypernet.settings import CreateSettings, SettingsError
from hypernet.settings.base import field_names
from hypernet.settings.train import SERVER_DECIDES, TrainSettings
from hypernet.train import AlreadyTrained, TrainConfig, train_hypernetwork
from hypernet.train.dataset import available_templates

log = logging.getLogger("hypernet.server")


def create_hypernetwork(state: ServerState, body: dict[str, Any]) -> Path:
    """A1111's "Create hypernetwork" with its keyword arguments; returns the written ``.pt`` file."""
    check_plain_name(str(body.get("name") or ""), "name")  # paths are a 403 before anything else
    settings = CreateSettings.parse(body)
    # Within the hard caps, the loaded model bounds the widths: a module wider than its widest attention context is
    # never used, only stored (A1111's default widths all fit SD1, SD2 and SDXL).
    widest = max(attention_widths(state.model.generator.pipe.unet), default=0)
    unused = [w for w in settings.enable_sizes if w > widest]
    if widest and unused:
        raise SettingsError(f"enable_sizes has {', '.join(map(str, unused))}; the loaded model's attention layers "
                            f"take contexts at most {widest} wide, so such modules would never be used.",
                            "enable_sizes")
    path = Path(state.config.hypernetwork_dir) / f"{settings.name}.pt"
    if path.exists() and not settings.overwrite_old:
        raise HypernetError(f"file {path} already exists")
    net = Hypernetwork.create(**settings.network_arguments())
    net.save(path)
    return path


def preprocess_job(state: ServerState, body: dict[str, Any]) -> Callable[[Job], Any]:
    """A1111's v1.6 ``preprocess`` keyword arguments -> a job; both folders must lie inside ``--data-dir``."""
    src = confine(state.config.data_dir, body.get("process_src"), "process_src")
    dst = confine(state.config.data_dir, body.get("process_dst"), "process_dst")
    options = PreprocessOptions.from_a1111(body)
    options.workers = 1  # no worker processes: forking a threaded server process is unsafe

    def run(job: Job) -> Any:
        job.textinfo = f"Preprocessing {src} -> {dst}"

        def progress(done: int, total: int) -> None:
            job.sampling_step, job.sampling_steps = done, total

        return preprocess(src, dst, options, progress=progress, should_stop=lambda: job.interrupted)

    return run


# What a request may set: the fields TrainSettings marks for the API (A1111's train_hypernetwork parameters and a
# few of ours). Paths and devices come from the server's configuration only; A1111's settings from /options.
TRAIN_KEYS = frozenset(field_names(TrainSettings, "api"))
SERVER_ONLY_KEYS = frozenset(k for k in TrainSettings.model_fields if TrainSettings.surface(k).why == SERVER_DECIDES)


def train_config(state: ServerState, body: dict[str, Any]) -> Any:
    """A1111's ``train_hypernetwork`` body -> a checked TrainConfig whose every path lies in a configured folder."""
    refused = sorted(SERVER_ONLY_KEYS & body.keys())
    if refused:
        raise ApiError(403, f"{', '.join(refused)} cannot be set over HTTP; the server's configuration decides them.")
    values = {k: v for k, v in body.items() if k in TRAIN_KEYS}
    if "preview_sampler_name" not in values and isinstance(body.get("preview_sampler_index"), str):
        values["preview_sampler_name"] = body["preview_sampler_index"]  # A1111 before 1.7
    check_plain_name(str(values.get("hypernetwork_name") or ""), "hypernetwork_name")
    template = str(values.get("template_filename") or TrainConfig.model_fields["template_filename"].default)
    check_plain_name(template, "template_filename")
    templates = available_templates(None)
    if template not in templates:
        raise HypernetError(f"template_filename {template!r} is unknown; expected one of: {', '.join(sorted(templates))}.")
    values["data_root"] = str(confine(state.config.data_dir, values.get("data_root"), "data_root"))
    values["log_directory"] = str(confine(state.config.log_dir, values.get("log_directory") or ".", "log_directory"))
    settings = {key: state.option(key) for key in TrainConfig.field_names() if key in OPTION_DEFAULTS}
    # every field set (A1111's defaults where the body is silent): the HTTP API does not take the model's defaults
    config = TrainConfig.parse(TrainConfig().model_dump() | settings | values | {
        "clip_skip": int(state.option("CLIP_stop_at_last_layers")), "hypernetwork_dir": str(state.config.hypernetwork_dir)})
    config.check()
    limits = state.config.limits
    if config.steps > limits.max_train_steps:
        raise ApiError(422, f"steps is {config.steps}; this server allows at most {limits.max_train_steps}.")
    if not config.varsize and config.training_width * config.training_height > limits.max_pixels:
        raise ApiError(422, f"training size {config.training_width}x{config.training_height} is above this server's "
                            f"limit of {limits.max_pixels} pixels.")
    if config.batch_size > limits.max_batch_size:
        raise ApiError(422, f"batch_size is {config.batch_size}; this server allows at most {limits.max_batch_size}.")
    return config


def training_job(state: ServerState, config: Any) -> Callable[[Job], Any]:
    """Train on the loaded model inside the job queue; progress, loss history and the last preview go on the job."""
    def run(job: Job) -> Any:
        state.reload()
        generator = state.model.generator
        losses: list[tuple[int, float]] = []
        live: dict[str, Any] = {"name": config.name, "phase": "preparing", "step": 0, "final_step": config.steps,
                                "start_step": 0, "loss": None, "loss_avg": None, "learn_rate": None, "message": "",
                                "health": [], "health_verdict": ""}
        job.extra.update(training=live, losses=losses)
        job.textinfo = f"Initializing hypernetwork training of {config.name}..."
        shown_preview: list[str | None] = [None]

        def progress(p: Any) -> None:
            live.update(phase=p.phase, step=p.step, final_step=p.final_step, start_step=p.start_step, loss=p.loss,
                        loss_avg=p.loss_avg, learn_rate=p.learn_rate, message=p.message, last_saved=p.last_saved,
                        last_preview=p.last_preview, eta_s=p.eta_s, it_per_s=p.it_per_s,
                        recommended_step=p.recommended_step, overcooked=p.overcooked,
                        validation_loss=p.validation_loss, health_verdict=p.health_verdict)
            if len(p.health) != len(live["health"]):  # a new measurement (rows are only ever added)
                live["health"] = [h.row() for h in p.health]
            if p.loss is not None and (not losses or losses[-1][0] != p.step):
                losses.append((p.step, p.loss))
            job.job_no, job.job_count = p.step, max(p.final_step, 1)
            loss = f", loss {p.loss_avg:.6f}" if p.loss_avg is not None else ""
            job.textinfo = p.message or f"Training {config.name}: step {p.step}/{p.final_step}{loss}"
            if p.last_preview and p.last_preview != shown_preview[0]:
                shown_preview[0] = p.last_preview
                job.preview_png = Path(p.last_preview).read_bytes()

        record = state.last_training = TrainingRecord(config.name, live, losses)
        state.remember_training(job.id, record)
        try:
            result = train_hypernetwork(config, pipe=generator.pipe, info=generator.info, progress=progress,
                                        should_stop=lambda: job.interrupted)
        except Exception as e:
            record.error = str(e)
            raise
        finally:
            record.preview_png = job.preview_png
        record.result = result
        return result

    return run


def training_summary(record: TrainingRecord | None) -> dict[str, Any] | None:
    """The last run's outcome for ``/progress`` once it is over, so that ``?async=true`` clients learn how it ended."""
    if record is None or (record.result is None and record.error is None):
        return None
    summary = dict(record.live)
    result = record.result
    if result is not None:
        summary |= {"phase": "done", "step": result.step, "stopped": result.stopped, "message": result.message,
                    "filename": result.filename, "log_directory": result.log_directory} | health_fields(result)
    else:
        summary |= {"phase": "failed", "stopped": "error", "message": record.error}
    return summary


def train_info(state: ServerState, config: Any, result: Any = None, error: Exception | None = None) -> dict[str, Any]:
    """A1111's answer ("train embedding complete: filename: F error: E", its copy-paste wording) plus our details."""
    if isinstance(error, AlreadyTrained):  # A1111 returns the file untouched and no error
        path = state.model.generator.available().get(config.name, "")
        return {"info": f"train embedding complete: filename: {path} error: None", "message": str(error)}
    if error is not None:
        return {"info": f"train embedding complete: filename:  error: {error}", "message": str(error)}
    failed = result.message if result.stopped == "diverged" else None
    return {
        "info": f"train embedding complete: filename: {result.filename or ''} error: {failed}",
        "message": result.message,
        "stopped": result.stopped,
        "step": result.step,
        "log_directory": result.log_directory,
        "last_preview": result.last_preview,
        "warnings": result.warnings,
    } | health_fields(result)


def health_fields(result: Any) -> dict[str, Any]:
    """A finished run's training health: the snapshot to keep, whether training went past it, every measurement."""
    return {"recommended_step": result.recommended_step, "recommended_snapshot": result.recommended_snapshot,
            "overcooked": result.overcooked, "health": [h.row() for h in result.health]}


def add_routes(api: APIRouter, state: ServerState) -> None:
    """The hypernetwork endpoints that take A1111's keyword-argument bodies."""

    @api.post("/create/hypernetwork")
    def create(body: dict[str, Any]) -> dict[str, str]:
        """200 with ``create hypernetwork error: ...`` for invalid values, as A1111; paths outside are a 403."""
        try:
            path = create_hypernetwork(state, body)
        except (ApiError, SettingsError):
            raise  # refused values: a 4xx with A1111's error body
        except HypernetError as e:
            return {"info": f"create hypernetwork error: {e}"}
        return {"info": f"create hypernetwork filename: {path}"}

    @api.post("/preprocess")
    async def preprocess(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """A1111 v1.6's preprocess (removed in A1111 1.7): 200 with ``preprocess complete`` or ``preprocess error``."""
        try:
            run = preprocess_job(state, body)
            job = state.jobs.submit("preprocess", run)
            report = await wait_for_job(request, state.jobs, job, abandon=False)  # files: finish even if they leave
        except (ApiError, SettingsError):
            raise  # refused values: a 4xx with A1111's error body, before any work
        except HypernetError as e:
            return {"info": f"preprocess error: {e}"}
        return {"info": "preprocess complete", "images": len(report.images), "captions": len(report.captions),
                "skipped": [f"{s.path.name}: {s.reason}" for s in report.skipped], "warnings": report.warnings,
                "interrupted": report.interrupted}

    @api.get("/train/hypernetwork/{id_task}")
    def training_task(id_task: str) -> dict[str, Any]:
        """Ours: how one training task stands or ended (``?async=true`` answers name the task id), so that two
        queued runs never read each other's outcome."""
        record = state.training_runs.get(id_task)
        if record is None:
            raise ApiError(404, f"no training task {id_task!r} (the {KEPT_RUNS} most recent are kept).")
        return training_summary(record) or dict(record.live)

    @api.post("/train/hypernetwork")
    async def train(request: Request, body: dict[str, Any], run_async: bool = Query(False, alias="async")) -> dict[str, Any]:
        """Synchronous like A1111 (the answer comes when training ends); ``?async=true`` answers at once and
        ``/progress`` follows the run. Training joins the job queue, so generations wait for it to finish."""
        try:
            config = await run_in_threadpool(train_config, state, body)
        except (ApiError, SettingsError):
            raise  # refused values: a 4xx with A1111's error body, before any work
        except HypernetError as e:
            return train_info(state, None, error=e)
        job = state.jobs.submit("train-hypernetwork", training_job(state, config), task_id=str(body.get("id_task") or "") or None)
        if run_async:
            state.remember_training(job.id, TrainingRecord(config.name, {"name": config.name, "phase": "queued",
                                                                         "step": 0, "final_step": config.steps}))
            return {"info": f"train hypernetwork started: {config.name}", "task_id": job.id}
        try:
            result = await wait_for_job(request, state.jobs, job, abandon=False)  # a client timeout must not stop it
        except HypernetError as e:
            return train_info(state, config, error=e)
        except Exception as e:  # raised after the final save: name the file and what broke
            log.exception("training %s failed", config.name)
            saved = state.model.generator.available().get(config.name, "")
            return {"info": f"train embedding complete: filename: {saved} error: {e}", "message": str(e)}
        return train_info(state, config, result)
