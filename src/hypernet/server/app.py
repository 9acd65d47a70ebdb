"""``create_app(state)``: the A1111 API and the web UI in one FastAPI app, behind one auth and size guard."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from hypernet import __version__
from hypernet.server.api import build_internal_router, build_router, install_error_handlers
from hypernet.server.security import GuardMiddleware
from hypernet.server.state import ServerState


def create_app(state: ServerState) -> FastAPI:
    """Build the app around a loaded :class:`ServerState`; the UI is mounted at ``/`` unless ``config.ui`` is off."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()  # stop the worker: interrupt a running job, cancel queued ones

    app = FastAPIOffline(title="hypernet", version=__version__, lifespan=lifespan,  # /docs without a CDN
                         description="AUTOMATIC1111-compatible API for Stable Diffusion with hypernetworks.")
    app.state.hypernet = state
    install_error_handlers(app)
    app.include_router(build_router(state))
    app.include_router(build_internal_router(state))
    if state.config.ui:
        from hypernet.server.ui import mount_ui  # gradio (seconds to import) loads only when the web UI is on

        mount_ui(app, state)
    app.add_middleware(GuardMiddleware, credentials=state.config.api_auth,
                       max_body=state.config.limits.max_request_bytes)
    return app


class BackgroundServer:
    """uvicorn serving ``app`` from a thread on ``host`` (port 0 = a free one), for tests, benchmarks and demos.

    ``with BackgroundServer(app) as server:`` waits until it accepts connections; ``server.url`` is its base URL.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 60.0) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                     timeout_graceful_shutdown=5))
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, name="hypernet-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
