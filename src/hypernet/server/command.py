"""``hypernet serve``: the CLI command (registered by ``hypernet.cli`` with ``app.command()(serve)``), its options
derived from :class:`~hypernet.settings.serve.ServeSettings`.

Heavy imports (FastAPI, torch, Gradio) happen inside :func:`_serve`, so other CLI commands stay fast.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from pathlib import Path

from hypernet.errors import HypernetError
from hypernet.settings.cli import command
from hypernet.settings.serve import ServeSettings

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


def _serve(settings: ServeSettings) -> None:
    """Serve an AUTOMATIC1111-compatible API (/sdapi/v1) and a web UI for generating with and training hypernetworks."""
    from hypernet.server.security import parse_api_auth

    credentials = parse_api_auth(settings.api_auth)
    bind, port = bind_address(settings.host, settings.listen), settings.port
    warning = exposure_warning(bind, bool(credentials))
    if warning:
        banner = "!" * 100
        print(f"\n{banner}\n{warning}\n{banner}\n", file=sys.stderr, flush=True)
    ckpt = Path(settings.ckpt) if settings.ckpt is not None else None
    if ckpt is not None and not ckpt.exists():
        raise HypernetError(f"--ckpt {ckpt}: no such checkpoint file or folder.")
    check_port_free(bind, port)  # before the model loads: a busy port is a sentence, not uvicorn's Errno 98

    import uvicorn

    from hypernet.server.app import create_app
    from hypernet.server.state import Limits, ServerConfig, ServerState

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hypernetwork_dir, lora_dir = Path(settings.hypernetwork_dir), Path(settings.lora_dir)
    hypernetwork_dir.mkdir(parents=True, exist_ok=True)
    lora_dir.mkdir(parents=True, exist_ok=True)  # A1111 creates models/Lora too
    config = ServerConfig(
        ckpt=ckpt,
        models_dir=Path(settings.models_dir),
        hypernetwork_dir=hypernetwork_dir,
        esrgan_dir=Path(settings.esrgan_dir),
        lora_dir=lora_dir,
        embeddings_dir=Path(settings.embeddings_dir),
        data_dir=Path(settings.data_dir),
        log_dir=Path(settings.log_dir),
        outputs_dir=Path(settings.outputs_dir),
        host=bind,
        port=port,
        api_auth=credentials,
        ui=not settings.nowebui,
        limits=Limits(max_request_bytes=settings.max_request_mb * 1024 * 1024),
        device=settings.device,
        precision=settings.precision,
        medvram=settings.medvram,
        lowvram=settings.lowvram,
    )
    state = ServerState.start(config)
    app = create_app(state)
    where = f"http://{'127.0.0.1' if bind == '0.0.0.0' else bind}:{port}"
    print(f"hypernet: serving {state.model.checkpoint.title} - API {where}/sdapi/v1"
          + ("" if settings.nowebui else f", web UI {where}/"), flush=True)
    uvicorn.run(app, host=bind, port=port, log_level="info", timeout_graceful_shutdown=5)


serve = command(ServeSettings, _serve)  # every option from ServeSettings (its Folders included)
