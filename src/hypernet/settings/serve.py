"""``hypernet serve``'s own options: where it listens, who may connect, what it loads, which folders requests may use.

They are the server's command line, never a request's: every field is off the HTTP API and the web UI. The
command's options, the README's table and the defaults of an in-process server (``ServerConfig``) are derived from
this model, as for the other families.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from hypernet.defaults import MODEL_PRECISIONS
from hypernet.settings.base import On
from hypernet.settings.folders import MAX_PATH as PATH, Folders

COMMAND_LINE = "the server's command line decides it, never a request"


def _flag(*flags: str) -> On:
    return On(cli=flags or None, ui=None, api=False, why=COMMAND_LINE)


class ServeSettings(Folders):
    """What ``hypernet serve`` is started with: the folders of :class:`Folders`, then the server's own options."""

    host: Annotated[str, Field(min_length=1, max_length=255, description="Address to listen on; by default only "
                               "this machine can connect."), _flag()] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="Port (A1111's default)."), _flag()] = 7860
    listen: Annotated[bool, Field(description="Listen on every interface (0.0.0.0), as A1111's --listen. Without "
                                  "--api-auth this prints a loud warning: anyone who can reach the machine could "
                                  "generate, create and train."), _flag("--listen")] = False
    api_auth: Annotated[Optional[str], Field(max_length=PATH, description="user:pass[,user2:pass2]: HTTP Basic auth "
                                             "on every route: the API, the web UI and its files, /docs."),
                        _flag("--api-auth")] = None
    ckpt: Annotated[Optional[str], Field(max_length=PATH, description="Checkpoint to load (.safetensors/.ckpt or a "
                                         "diffusers folder); default: the first in --models-dir, else hypernet's "
                                         "embedded toy model."), _flag()] = None
    models_dir: Annotated[str, Field(max_length=PATH, description="Checkpoints listed by /sd-models; setting "
                                     "sd_model_checkpoint switches between them."), _flag()] = "models/Stable-diffusion"
    data_dir: Annotated[str, Field(max_length=PATH, description="Training and preprocessing folders named in "
                                   "requests must be inside it."), _flag()] = "training_data"
    log_dir: Annotated[str, Field(max_length=PATH, description="Training log folders (A1111's log_directory) named "
                                  "in requests must be inside it."), _flag()] = "textual_inversion"
    outputs_dir: Annotated[str, Field(max_length=PATH, description="Where requests with \"save_images\": true save "
                                      "images."), _flag()] = "outputs"
    nowebui: Annotated[bool, Field(description="Serve the API only, without the web UI."), _flag("--nowebui")] = False
    max_request_mb: Annotated[int, Field(ge=1, le=65536, description="Largest request body, in MiB: larger ones are "
                                         "refused with HTTP 413."), _flag()] = 64
    device: Annotated[Optional[str], Field(max_length=100, description="cuda, cuda:1, cpu, mps...; default: CUDA "
                                           "when available."), _flag()] = None
    precision: Annotated[Literal[MODEL_PRECISIONS], Field(  # type: ignore[valid-type]
        description="Model weights' precision (hypernetworks stay fp32)."), _flag()] = "fp32"
    medvram: Annotated[bool, Field(description="Offload whole models to the CPU between uses (GPU)."),
                       _flag("--medvram")] = False
    lowvram: Annotated[bool, Field(description="Offload layer by layer: least memory, slowest (GPU)."),
                       _flag("--lowvram")] = False
