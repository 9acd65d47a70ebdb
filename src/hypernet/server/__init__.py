"""``hypernet serve``: an AUTOMATIC1111-compatible HTTP API (``/sdapi/v1``) and a Gradio web UI in one process.

Names are imported on first use, so that ``hypernet.server.command`` (imported by the CLI for every command)
does not pull in FastAPI, torch and Gradio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "hypernet.server.app",
    "Limits": "hypernet.server.state",
    "ServerConfig": "hypernet.server.state",
    "ServerState": "hypernet.server.state",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hypernet.server' has no attribute {name!r}")
