"""``hypernet serve``: the CLI command (registered by ``hypernet.cli`` with ``app.command()(serve)``).

Heavy imports (FastAPI, torch, Gradio) happen inside :func:`serve`, so other CLI commands stay fast.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hypernet.errors import HypernetError
from hypernet.settings.cli import field_default, field_option
from hypernet.settings.folders import Folders

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind_address(host: str, listen: bool) -> str:
    """``--listen`` means every interface (A1111); an explicit ``--host`` other than the default wins."""
    if listen and host in LOOPBACK:
        return "0.0.0.0"
    return host


def exposure_warning(host: str, auth: bool) -> str | None:
    """The loud warning for a server other machines can reach without a password, else None."""
    if host in LOOPBACK or auth:
        return None
    return (
        f"WARNING: hypernet is listening on {host} WITHOUT authentication. Anyone who can reach this machine can "
        "generate images, create, overwrite and train hypernetworks, and keep this machine busy. "
        "Pass --api-auth user:password, or drop --listen to serve 127.0.0.1 only."
    )


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once, as uvicorn will, and say so in one sentence if that cannot work."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise HypernetError(f"--port {port}: {host}:{port} is already in use; stop the other server or "
                                    "choose another port with --port.") from None
            raise HypernetError(f"--host {host} --port {port}: cannot listen there ({e.strerror}).") from None


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (A1111's default).")] = 7860,
    listen: Annotated[bool, typer.Option("--listen", help="Serve other machines too (0.0.0.0); use with --api-auth.")] = False,
    api_auth: Annotated[Optional[str], typer.Option("--api-auth", help="user:password[,user2:password2]: HTTP Basic auth for every route, UI included.")] = None,
    ckpt: Annotated[Optional[Path], typer.Option(help="Checkpoint to load (.safetensors/.ckpt or diffusers folder); default: the first in --models-dir, else hypernet's embedded toy model.")] = None,
    models_dir: Annotated[Path, typer.Option(help="Checkpoints offered by /sd-models and the model setting.")] = Path("models/Stable-diffusion"),
    hypernetwork_dir: Annotated[Path, field_option(Folders, "hypernetwork_dir")] = field_default(Folders, "hypernetwork_dir"),
    esrgan_dir: Annotated[Path, field_option(Folders, "esrgan_dir")] = field_default(Folders, "esrgan_dir"),
    lora_dir: Annotated[Path, field_option(Folders, "lora_dir")] = field_default(Folders, "lora_dir"),
    embeddings_dir: Annotated[Path, field_option(Folders, "embeddings_dir")] = field_default(Folders, "embeddings_dir"),
    data_dir: Annotated[Path, typer.Option(help="Training and preprocessing folders named by requests must lie inside this one.")] = Path("training_data"),
    log_dir: Annotated[Path, typer.Option(help="Training logs (A1111's log_directory) must lie inside this one.")] = Path("textual_inversion"),
    outputs_dir: Annotated[Path, typer.Option(help="Where save_images=true writes images.")] = Path("outputs"),
    nowebui: Annotated[bool, typer.Option("--nowebui", help="Serve the API only, without the web UI.")] = False,
    max_request_mb: Annotated[int, typer.Option(help="Largest request body accepted, in MiB.")] = 64,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu, mps...; default: CUDA when available.")] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 model weights (hypernetworks stay fp32).")] = "fp32",
    medvram: Annotated[bool, typer.Option("--medvram", help="Offload whole models to the CPU between uses (GPU).")] = False,
    lowvram: Annotated[bool, typer.Option("--lowvram", help="Offload layer by layer: least memory, slowest (GPU).")] = False,
) -> None:
    """Serve an AUTOMATIC1111-compatible API (/sdapi/v1) and a web UI for generating with and training hypernetworks."""
    from hypernet.server.security import parse_api_auth

    credentials = parse_api_auth(api_auth)
    bind = bind_address(host, listen)
    warning = exposure_warning(bind, bool(credentials))
    if warning:
        banner = "!" * 100
        print(f"\n{banner}\n{warning}\n{banner}\n", file=sys.stderr, flush=True)
    if not 0 <= port <= 65535:
        raise HypernetError(f"--port {port} must be between 0 and 65535.")
    if max_request_mb < 1:
        raise HypernetError(f"--max-request-mb {max_request_mb} must be at least 1.")
    if ckpt is not None and not ckpt.exists():
        raise HypernetError(f"--ckpt {ckpt}: no such checkpoint file or folder.")
    check_port_free(bind, port)  # before the model loads: a busy port is a sentence, not uvicorn's Errno 98

    import uvicorn

    from hypernet.server.app import create_app
    from hypernet.server.state import Limits, ServerConfig, ServerState

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hypernetwork_dir.mkdir(parents=True, exist_ok=True)
    lora_dir.mkdir(parents=True, exist_ok=True)  # A1111 creates models/Lora too
    config = ServerConfig(
        ckpt=ckpt,
        models_dir=models_dir,
        hypernetwork_dir=hypernetwork_dir,
        esrgan_dir=esrgan_dir,
        lora_dir=lora_dir,
        embeddings_dir=embeddings_dir,
        data_dir=data_dir,
        log_dir=log_dir,
        outputs_dir=outputs_dir,
        host=bind,
        port=port,
        api_auth=credentials,
        ui=not nowebui,
        limits=Limits(max_request_bytes=max_request_mb * 1024 * 1024),
        device=device,
        precision=precision,
        medvram=medvram,
        lowvram=lowvram,
    )
    state = ServerState.start(config)
    app = create_app(state)
    where = f"http://{'127.0.0.1' if bind == '0.0.0.0' else bind}:{port}"
    print(f"hypernet: serving {state.model.checkpoint.title} - API {where}/sdapi/v1"
          + ("" if nowebui else f", web UI {where}/"), flush=True)
    uvicorn.run(app, host=bind, port=port, log_level="info", timeout_graceful_shutdown=5)
