"""A1111's ``/sdapi/v1`` routes on a :class:`ServerState`: the same paths, bodies and quirks clients rely on.

Where we knowingly differ from A1111 (user errors are 4xx with a sentence saying what to send, image URLs are
not fetched, training joins the one-job-at-a-time queue), the README section says so.
"""

import logging
import os
from typing import Any

import torch
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hypernet.engine.hires import IMAGE_UPSCALERS, LATENT_MODES
from hypernet.engine.infotext import parse_infotext, read_infotext
from hypernet.engine.upscalers import list_esrgan
from hypernet.errors import HypernetError
from hypernet.sampling import SAMPLERS, SCHEDULES
from hypernet.server import export, extra_networks, hypernetworks
from hypernet.server.generation import plan_request, respond, run_plan
from hypernet.server.jobs import ClientGone, JobCancelled, wait_for_job
from hypernet.server.models import M
from hypernet.server.security import ApiError, decode_image, error_body
from hypernet.server.state import ServerState
from hypernet.settings import SettingsError, sentence

REQUEST_MODELS = (M.StableDiffusionTxt2ImgProcessingAPI, M.StableDiffusionImg2ImgProcessingAPI, M.PNGInfoRequest)

log = logging.getLogger("hypernet.server")


def install_error_handlers(app: FastAPI) -> None:
    """A1111's error body for every failure; user errors keep their 4xx, anything else is a logged 500."""

    @app.exception_handler(HypernetError)
    async def _user_error(request: Request, exc: HypernetError) -> JSONResponse:
        if isinstance(exc, ApiError):  # A1111 raises HTTPException for these
            return JSONResponse(error_body("HTTPException", str(exc), status=exc.status), status_code=exc.status)
        if isinstance(exc, SettingsError):
            return JSONResponse(error_body("HTTPException", str(exc), status=exc.status), status_code=exc.status)
        return JSONResponse(error_body(type(exc).__name__, str(exc), status=400), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A refused field: the settings model's one sentence, in A1111's error body (never pydantic's list)."""
        errors = list(exc.errors())
        name = next((str(p) for p in errors[0].get("loc", ()) if p not in ("body", "query", "path")), "") if errors else ""
        model = next((m for m in REQUEST_MODELS if name in m.model_fields), None)
        _, text = sentence(errors, model) if errors else ("", "the request body is not valid JSON.")
        if errors and errors[0].get("type") in ("json_invalid", "model_attributes_type", "dict_type"):
            text = "the request body must be a JSON object."
        return JSONResponse(error_body("HTTPException", text, status=422), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("HTTPException", str(exc.detail), status=exc.status_code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body(type(exc).__name__, "", str(exc)), status_code=500)


def build_router(state: ServerState) -> APIRouter:
    """Every ``/sdapi/v1`` route, bound to ``state`` (no globals: several servers can share a process)."""
    api = APIRouter(prefix="/sdapi/v1")

    async def generate(request: Request, body: Any, kind: str) -> Any:
        plan = await run_in_threadpool(plan_request, state, body, kind)
        job = state.jobs.submit(kind, lambda job: run_plan(state, plan, job), task_id=plan.values["force_task_id"])
        try:
            outcome = await wait_for_job(request, state.jobs, job)
        except ClientGone:
            return Response(status_code=499)
        except JobCancelled:
            raise ApiError(503, "the server is shutting down") from None
        return await run_in_threadpool(respond, state, plan, outcome)

    @api.post("/txt2img", response_model=M.TextToImageResponse)
    async def txt2img(request: Request, body: M.StableDiffusionTxt2ImgProcessingAPI) -> Any:
        """Generate from a prompt; ``<hypernet:NAME:WEIGHT>`` tags apply hypernetworks."""
        return await generate(request, body, "txt2img")

    @api.post("/img2img", response_model=M.ImageToImageResponse)
    async def img2img(request: Request, body: M.StableDiffusionImg2ImgProcessingAPI) -> Any:
        """Generate from ``init_images[0]`` (base64) and a prompt."""
        return await generate(request, body, "img2img")

    # ------------------------------------------------------------------ hypernetworks
    @api.get("/hypernetworks", response_model=list[M.HypernetworkItem])
    def list_hypernetworks() -> Any:
        """A1111's discovery of the hypernetwork folder, re-scanned on every call."""
        return [{"name": name, "path": str(path)} for name, path in state.model.generator.available().items()]

    @api.post("/refresh-hypernetworks")
    def refresh_hypernetworks() -> None:
        """Ours (A1111 has none): the list is re-scanned on every call anyway; kept for scripts that ask."""
        state.model.generator.available()
        return None

    hypernetworks.add_routes(api, state)
    export.add_routes(api, state)

    # ------------------------------------------------------------------ settings and control
    @api.get("/options")
    def get_options() -> dict[str, Any]:
        return state.options()

    @api.post("/options")
    async def set_options(request: Request, body: dict[str, Any]) -> None:
        """Store settings (``null`` reply, as A1111); a new ``sd_model_checkpoint`` loads through the job queue."""
        changes = dict(body)
        wanted = changes.pop("sd_model_checkpoint", None)
        checkpoint = state.find_checkpoint(str(wanted)) if wanted else None
        state.validate_options(changes)  # all-or-nothing: check before switching anything
        if checkpoint is not None and checkpoint.path.resolve() != state.model.checkpoint.path.resolve():
            job = state.jobs.submit("load-checkpoint", lambda job: state.switch_model(checkpoint))
            try:
                await wait_for_job(request, state.jobs, job)
            except ClientGone:
                return None
        state.set_options(changes)
        return None

    @api.get("/progress", response_model=M.ProgressResponse)
    def progress(skip_current_image: bool = False) -> Any:
        """The running job (idle: progress 0, job_count 0); asking for the image turns live previews on. Ours:
        ``training`` follows a training run, and says how the last one ended once the server is idle again."""
        body = state.jobs.snapshot(want_image=not skip_current_image)
        if body.get("training") is None:
            body["training"] = hypernetworks.training_summary(state.last_training)
        return body

    @api.post("/interrupt")
    def interrupt() -> dict[str, Any]:
        state.jobs.interrupt()
        return {}

    @api.post("/skip")
    def skip() -> None:
        state.jobs.skip()
        return None

    @api.post("/unload-checkpoint")
    async def unload_checkpoint(request: Request) -> dict[str, Any]:
        """A1111's: free the GPU; the next generation (or reload-checkpoint) brings the model back."""
        await wait_for_job(request, state.jobs, state.jobs.submit("unload-checkpoint", lambda job: state.unload()))
        return {}

    @api.post("/reload-checkpoint")
    async def reload_checkpoint(request: Request) -> dict[str, Any]:
        await wait_for_job(request, state.jobs, state.jobs.submit("reload-checkpoint", lambda job: state.reload()))
        return {}

    @api.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return state.config.flags()

    # ------------------------------------------------------------------ models and samplers
    @api.get("/sd-models", response_model=list[M.SDModelItem])
    def sd_models() -> Any:
        return [c.as_api() for c in state.checkpoints]

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        state.scan_checkpoints()
        return None

    @api.get("/samplers", response_model=list[M.SamplerItem])
    def samplers() -> Any:
        return [s.as_api() for s in SAMPLERS]

    @api.get("/schedulers", response_model=list[M.SchedulerItem])
    def schedulers() -> Any:
        return [s.as_api() for s in SCHEDULES]

    # ------------------------------------------------------------------ images
    @api.post("/png-info", response_model=M.PNGInfoResponse)
    def png_info(body: M.PNGInfoRequest) -> Any:
        """The infotext an image carries, its other text entries, and the infotext parsed (A1111 1.7+)."""
        image = decode_image(body.image, "image")
        text, items = read_infotext(image)
        items = {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in items.items()}
        return {"info": text or "", "items": items, "parameters": parse_infotext(text) if text else {}}

    # ------------------------------------------------------------------ honest lists of what we do not have
    @api.get("/scripts", response_model=M.ScriptsList)
    def scripts() -> Any:
        """A1111's built-in X/Y/Z plot (``script_name: "x/y/z plot"``) on txt2img; no other scripts."""
        return {"txt2img": ["x/y/z plot"], "img2img": []}

    @api.get("/script-info")
    def script_info() -> list[Any]:
        return []

    extra_networks.add_routes(api, state)  # /loras, /embeddings and their refresh calls

    @api.get("/upscalers")
    def upscalers() -> Any:
        return [*({"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                  for name in IMAGE_UPSCALERS),
                *({"name": name, "model_name": "ESRGAN", "model_path": str(path), "model_url": None, "scale": 4}
                  for name, path in list_esrgan(state.config.esrgan_dir).items())]

    @api.get("/latent-upscale-modes")
    def latent_upscale_modes() -> Any:
        return [{"name": name} for name in LATENT_MODES]

    for path in ("/face-restorers", "/prompt-styles", "/sd-vae", "/realesrgan-models", "/extensions"):
        api.add_api_route(path, _empty_list, methods=["GET"], name=path.strip("/"))
    for path in ("/refresh-vae",):
        api.add_api_route(path, _nothing, methods=["POST"], name=path.strip("/"))

    @api.get("/memory", response_model=M.MemoryResponse)
    def memory() -> Any:
        return {"ram": _ram(), "cuda": _cuda()}

    @api.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    def not_found(rest: str) -> None:
        raise StarletteHTTPException(404, "Not Found")

    return api


def build_internal_router(state: ServerState) -> APIRouter:
    """A1111's ``/internal`` routes its web UI polls, which clients also use: ping and per-task progress."""
    internal = APIRouter(prefix="/internal")

    @internal.get("/ping")
    def ping() -> dict[str, Any]:
        return {}

    @internal.post("/progress", response_model=M.TaskProgressResponse)
    def task_progress(body: M.TaskProgressRequest) -> Any:
        """One task's progress by its ``id_task`` (``force_task_id`` of a generation, ``id_task`` of training)."""
        return state.jobs.task(body.id_task, want_image=bool(body.live_preview))

    return internal


def _empty_list() -> list[Any]:
    return []


def _nothing() -> None:
    return None


def _ram() -> dict[str, Any]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * page
        return {"free": free, "used": rss, "total": total}
    except (OSError, ValueError, IndexError) as e:
        return {"error": str(e)}


def _cuda() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    pick = lambda kind: {"current": stats.get(f"{kind}_bytes.all.current", 0), "peak": stats.get(f"{kind}_bytes.all.peak", 0)}  # noqa: E731
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pick("active"),
        "allocated": pick("allocated"),
        "reserved": pick("reserved"),
        "inactive": pick("inactive_split"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
