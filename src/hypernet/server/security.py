"""Request-level safety: Basic auth on every route, a body size limit, folder confinement and image decoding.

The middleware is plain ASGI (not Starlette's BaseHTTPMiddleware) so that it covers the mounted web UI, its
websockets and streams too, and so that a client's disconnect still reaches the route that waits on a job.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hypernet.errors import HypernetError
from hypernet.settings.images import open_image


class ApiError(HypernetError):
    """A user error with its HTTP status (HypernetError alone answers 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_body(error: str, detail: str, errors: str = "", status: int | None = None) -> dict[str, str]:
    """A1111's error body for every failure: ``errors`` is ``str(exception)``, which for an HTTPException reads
    ``"422: <detail>"``."""
    return {"error": error, "detail": detail, "body": "",
            "errors": errors or (f"{status}: {detail}" if status is not None else detail)}


def parse_api_auth(text: str | None) -> tuple[tuple[str, str], ...]:
    """``user:pass[,user2:pass2]`` (A1111's ``--api-auth``) -> credential pairs."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise HypernetError(f"--api-auth {item.strip()!r} must look like user:password (several: u1:p1,u2:p2).")
        pairs.append((user, password))
    return tuple(pairs)


class GuardMiddleware:
    """Basic auth (when credentials are configured), the request body limit and A1111's X-Process-Time header."""

    def __init__(self, app: ASGIApp, *, credentials: Sequence[tuple[str, str]], max_body: int) -> None:
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials]
        self.max_body = max_body

    def _authorized(self, scope: Scope) -> bool:
        if not self.credentials:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for u, p in self.credentials:  # compare with every pair: no early exit that times the match
            ok |= secrets.compare_digest(user, u) & secrets.compare_digest(password, p)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _send_json(send, 401, error_body("HTTPException", "Incorrect username or password", status=401),
                             [(b"www-authenticate", b'Basic realm="hypernet"')])
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, _too_large(self.max_body))
            return
        started, received = time.perf_counter(), 0
        too_large = response_started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # stop reading; whatever the app answers becomes a 413
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                if response_started:
                    return
                response_started = True
                if too_large:
                    await _send_json(send, 413, _too_large(self.max_body))
                    return
                headers = list(message.get("headers", []))
                headers.append((b"x-process-time", f"{time.perf_counter() - started:.4f}".encode()))
                message = {**message, "headers": headers}
            elif too_large:
                return  # the app's own body for a request it could not read whole
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not response_started:
            await _send_json(send, 413, _too_large(self.max_body))


def _too_large(limit: int) -> dict[str, str]:
    return error_body("HTTPException", f"request body too large: the limit is {limit} bytes", status=413)


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def confine(root: Path, requested: str | os.PathLike[str] | None, what: str) -> Path:
    """``requested`` resolved inside ``root`` (relative paths are relative to it); anything outside is a 403.

    Symlinks are resolved first, so a link inside the folder that points out of it is refused too.
    """
    if requested is None or not str(requested).strip():
        raise ApiError(422, f"{what} is empty; expected a folder inside {root}.")
    if "\0" in str(requested):
        raise ApiError(422, f"{what} contains a NUL character.")
    base = Path(root).resolve()
    path = Path(requested).expanduser()
    resolved = (path if path.is_absolute() else base / path).resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise ApiError(403, f"{what} {str(requested)!r} is outside the allowed folder {base}.")
    return resolved


def check_plain_name(name: str, what: str) -> str:
    """A file name without folders: no separators, no ``..``, not empty."""
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, f"{what} is empty.")
    if "/" in name or "\\" in name or "\0" in name or name.strip() in (".", ".."):
        raise ApiError(403, f"{what} {name!r} must be a plain name, not a path.")
    return name


def decode_image(data: Any, field: str) -> Image.Image:
    """A base64 image (a ``data:image/...;base64,`` prefix is allowed) -> PIL image; anything else is a 422."""
    if not isinstance(data, str) or not data:
        raise ApiError(422, f"{field}: expected a base64-encoded image.")
    if data.startswith(("http://", "https://")):
        raise ApiError(422, f"{field}: image URLs are not fetched by this server; send the image as base64.")
    if data.startswith("data:"):
        data = data.split(";", 1)[1].split(",", 1)[1] if ";" in data and "," in data else ""
    data = "".join(data.split())  # line-wrapped base64 (as the base64 tool writes it) is fine
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field}: not valid base64 data.") from None
    try:
        Image.open(io.BytesIO(raw)).close()  # reads the header only
    except Image.DecompressionBombError:
        pass  # readable, and too large: open_image says so
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(422, f"{field}: the base64 data is not a readable image (PNG, JPEG, WebP...).") from None
    try:
        return open_image(raw, field)  # checks the pixel count from the header before decoding
    except HypernetError as e:
        raise ApiError(422, str(e)) from None


def encode_png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
