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

from hypernet.defaults import DEFAULT_WIDTHS
from hypernet.errors import HypernetError
from hypernet.network import Hypernetwork, parse_numbers, sanitize_name
from hypernet.server.jobs import Job, wait_for_job
from hypernet.server.security import ApiError, check_plain_name, confine
from hypernet.server.state import OPTION_DEFAULTS, ServerState, TrainingRecord

log = logging.getLogger("hypernet.server")

def create_hypernetwork(state: ServerState, body: dict[str, Any]) -> Path:
    """A1111's "Create hypernetwork" with its keyword arguments; returns the written ``.pt`` file."""
    name = check_plain_name(str(body.get("name") or ""), "name")
    clean = sanitize_name(name)
    if not clean.strip("."):
        raise ApiError(403, f"name {name!r} must be a plain name, not a path.")
    try:
        sizes = [int(s) for s in body.get("enable_sizes") or DEFAULT_WIDTHS]
    except (TypeError, ValueError):
        raise HypernetError(f"enable_sizes {body.get('enable_sizes')!r} must be integers, e.g. [768, 320, 640, 1280].") from None
    layers = parse_numbers(body.get("layer_structure") or "1, 2, 1", "layer_structure")
    dropout_text = body.get("dropout_structure")
    if body.get("use_dropout") and isinstance(dropout_text, str) and dropout_text.strip():
        dropout = parse_numbers(dropout_text, "dropout_structure")
        if len(dropout) < len(layers):
            raise HypernetError(f"dropout_structure {dropout_text!r} needs one value per layer_structure entry ({len(layers)}).")
        dropout = dropout[: len(layers)]
    else:
        dropout = [0.0] * len(layers)  # A1111: a list, or use_dropout off, means no dropout
    folder = Path(state.config.hypernetwork_dir)
    path = folder / f"{clean}.pt"
    if path.exists() and not body.get("overwrite_old"):
        raise HypernetError(f"file {path} already exists")
    net = Hypernetwork.create(
        clean,
        sizes,
        layer_structure=layers,
        activation_func=body.get("activation_func") or "linear",
        weight_init=body.get("weight_init") or "Normal",
        add_layer_norm=bool(body.get("add_layer_norm")),
        dropout_structure=dropout,
    )
    net.save(path)
    return path


def preprocess_job(state: ServerState, body: dict[str, Any]) -> Callable[[Job], Any]:
    """A1111's v1.6 ``preprocess`` keyword arguments -> a job; both folders must lie inside ``--data-dir``."""
    from hypernet.prepare import PreprocessOptions, preprocess

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


# A1111's train_hypernetwork parameters (id_task aside) plus the few of ours a request may set. Paths and devices
# come from the server's configuration only.
TRAIN_KEYS = frozenset({
    "hypernetwork_name", "learn_rate", "batch_size", "gradient_step", "data_root", "log_directory", "training_width",
    "training_height", "varsize", "steps", "clip_grad_mode", "clip_grad_value", "shuffle_tags", "tag_drop_out",
    "latent_sampling_method", "use_weight", "create_image_every", "save_hypernetwork_every", "template_filename",
    "preview_from_txt2img", "preview_prompt", "preview_negative_prompt", "preview_steps", "preview_sampler_name",
    "preview_cfg_scale", "preview_seed", "preview_width", "preview_height",
    "seed", "precision", "gradient_checkpointing", "max_bad_steps", "validation_split", "health_probes", "stop_when_overcooked",
})
SERVER_ONLY_KEYS = frozenset({"model", "vae", "hypernetwork_dir", "templates_dir", "resume_from", "device"})


def train_config(state: ServerState, body: dict[str, Any]) -> Any:
    """A1111's ``train_hypernetwork`` body -> a checked TrainConfig whose every path lies in a configured folder."""
    from hypernet.train import TrainConfig
    from hypernet.train.dataset import available_templates

    refused = sorted(SERVER_ONLY_KEYS & body.keys())
    if refused:
        raise ApiError(403, f"{', '.join(refused)} cannot be set over HTTP; the server's configuration decides them.")
    values = {k: v for k, v in body.items() if k in TRAIN_KEYS}
    if "preview_sampler_name" not in values and isinstance(body.get("preview_sampler_index"), str):
        values["preview_sampler_name"] = body["preview_sampler_index"]  # A1111 before 1.7
    check_plain_name(str(values.get("hypernetwork_name") or ""), "hypernetwork_name")
    template = str(values.get("template_filename") or TrainConfig.template_filename)
    check_plain_name(template, "template_filename")
    templates = available_templates(None)
    if template not in templates:
        raise HypernetError(f"template_filename {template!r} is unknown; expected one of: {', '.join(sorted(templates))}.")
    values["data_root"] = str(confine(state.config.data_dir, values.get("data_root"), "data_root"))
    values["log_directory"] = str(confine(state.config.log_dir, values.get("log_directory") or ".", "log_directory"))
    settings = {key: state.option(key) for key in TrainConfig.field_names() if key in OPTION_DEFAULTS}
    config = TrainConfig(**settings, **values, clip_skip=int(state.option("CLIP_stop_at_last_layers")),
                         hypernetwork_dir=str(state.config.hypernetwork_dir))
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
    from hypernet.train import train_hypernetwork

    def run(job: Job) -> Any:
        generator = state.model.generator
        losses: list[tuple[int, float]] = []
        live: dict[str, Any] = {"name": config.name, "phase": "preparing", "step": 0, "final_step": config.steps,
                                "start_step": 0, "loss": None, "loss_avg": None, "learn_rate": None, "message": ""}
        job.extra.update(training=live, losses=losses)
        job.textinfo = f"Initializing hypernetwork training of {config.name}..."
        shown_preview: list[str | None] = [None]

        def progress(p: Any) -> None:
            live.update(phase=p.phase, step=p.step, final_step=p.final_step, start_step=p.start_step, loss=p.loss,
                        loss_avg=p.loss_avg, learn_rate=p.learn_rate, message=p.message, last_saved=p.last_saved,
                        last_preview=p.last_preview, recommended_step=p.recommended_step, overcooked=p.overcooked,
                        validation_loss=p.validation_loss)
            if p.loss is not None and (not losses or losses[-1][0] != p.step):
                losses.append((p.step, p.loss))
            job.job_no, job.job_count = p.step, max(p.final_step, 1)
            loss = f", loss {p.loss_avg:.6f}" if p.loss_avg is not None else ""
            job.textinfo = p.message or f"Training {config.name}: step {p.step}/{p.final_step}{loss}"
            if p.last_preview and p.last_preview != shown_preview[0]:
                shown_preview[0] = p.last_preview
                job.preview_png = Path(p.last_preview).read_bytes()

        record = state.last_training = TrainingRecord(config.name, live, losses)
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
    from hypernet.train import AlreadyTrained

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
        except ApiError:
            raise
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
        except ApiError:
            raise
        except HypernetError as e:
            return {"info": f"preprocess error: {e}"}
        return {"info": "preprocess complete", "images": len(report.images), "captions": len(report.captions),
                "skipped": [f"{s.path.name}: {s.reason}" for s in report.skipped], "warnings": report.warnings,
                "interrupted": report.interrupted}

    @api.post("/train/hypernetwork")
    async def train(request: Request, body: dict[str, Any], run_async: bool = Query(False, alias="async")) -> dict[str, Any]:
        """Synchronous like A1111 (the answer comes when training ends); ``?async=true`` answers at once and
        ``/progress`` follows the run. Training joins the job queue, so generations wait for it to finish."""
        try:
            config = await run_in_threadpool(train_config, state, body)
        except ApiError:
            raise
        except HypernetError as e:
            return train_info(state, None, error=e)
        job = state.jobs.submit("train-hypernetwork", training_job(state, config), task_id=str(body.get("id_task") or "") or None)
        if run_async:
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
