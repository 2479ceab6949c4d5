"""ASGI middleware: a request-body size limit (413) and one-line messages for BentoML's 400s.

Pure ASGI so it works with `Service.add_asgi_middleware`; it sits inside BentoML's metrics and
access-log middleware, so rejected requests are still counted.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_METHODS = {"POST", "PUT", "PATCH"}
DRAIN_FACTOR = 4  # read (and drop) up to this many times the limit so the client sees the 413


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    all_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    all_headers += headers or []
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": data})


class LimitsMiddleware:
    """Reject bodies over `max_body_bytes` (declared or streamed) and rewrite validation 400s."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        too_large = f"request body is over the limit of {self.max_body_bytes} bytes"
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            if declared <= DRAIN_FACTOR * self.max_body_bytes:
                await drain(receive, declared)
            await send_json(send, 413, {"error": f"{too_large} (Content-Length {declared})"})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await drain(receive, DRAIN_FACTOR * self.max_body_bytes - len(body))
                await send_json(send, 413, {"error": too_large})
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), _rewrite_validation_errors(send, scope["path"]))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def drain(receive: Receive, budget: int) -> None:
    """Read the rest of the body (up to budget bytes) so the client is not cut off mid-upload."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _rewrite_validation_errors(send: Send, path: str = "") -> Send:
    """Turn BentoML's '1 validation error for Input' into 'top_k: Input should be <= 10'."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] == 400:
            held = message
            return
        if held is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        data = _one_line_validation(b"".join(chunks), path)
        headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return wrapped


def _one_line_validation(data: bytes, path: str = "") -> bytes:
    try:
        body = json.loads(data)
    except ValueError:
        return data
    if not isinstance(body, dict) or not isinstance(body.get("detail"), list):
        return data
    body["error"] = validation_message(body["detail"], path) or body.get("error", "invalid request")
    return json.dumps(body).encode()


UPLOAD_PATHS = ("/classify", "/classify_batch")


def validation_message(errors: list[dict[str, Any]], path: str = "/classify") -> str:
    """One line from pydantic error dicts: 'field: what is wrong; other: ...'."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            if path.rstrip("/") in UPLOAD_PATHS:
                parts.append("expected a multipart/form-data body (e.g. curl -F image=@cat.jpg)")
            else:
                parts.append("expected an empty body or a JSON object")
            continue
        loc = ".".join(str(p) for p in error.get("loc", ()))
        msg = str(error.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
