"""ASGI middleware: a request-body size limit (413), a budget of body bytes in flight per worker (503),
work dropped when its client hangs up, and one-line messages for BentoML's 400s.

Pure ASGI so it works with `Service.add_asgi_middleware`; it sits inside BentoML's metrics and
access-log middleware, so rejected requests are still counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Overloaded
from service.inference.intake import Budget

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
    """Reject bodies over `max_body_bytes` (413), hold every body against the worker's budget of bytes in
    flight until it is answered (503 with Retry-After past it), stop work for clients that hang up, and
    rewrite validation 400s."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_inflight_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # never below one body: a single request that fits the body limit must be able to run alone
        self.in_flight = Budget(max(max_inflight_bytes or DRAIN_FACTOR * max_body_bytes, max_body_bytes),
                                "bytes of request bodies")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _plain_errors_as_json(send, scope)
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            drain_budget = declared if declared <= DRAIN_FACTOR * self.max_body_bytes else 0
            await refuse(receive, send, drain_budget, 413, f"{self.too_large} (Content-Length {declared})")
            return
        held = [0]  # bytes taken from the budget so far, given back once the request is answered
        try:
            body = await self.read_body(receive, send, declared, held)
            if body is not None:
                await run_until_disconnect(self.app, scope, receive, body,
                                           _rewrite_validation_errors(send, scope["path"]))
        finally:
            self.in_flight.give_back(held[0])

    @property
    def too_large(self) -> str:
        return f"request body is over the limit of {self.max_body_bytes} bytes"

    async def read_body(self, receive: Receive, send: Send, declared: int | None, held: list[int]) -> bytes | None:
        """The whole body, held against the budget (its declared length at once, else as it arrives);
        None once it has been answered here (413, 503) or the client left."""
        body = bytearray()
        try:
            if declared:
                self.in_flight.take(declared)
                held[0] = declared
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > self.max_body_bytes:
                    await refuse(receive, send, DRAIN_FACTOR * self.max_body_bytes - len(body), 413, self.too_large)
                    return None
                if len(body) > held[0]:
                    self.in_flight.take(len(body) - held[0])
                    held[0] = len(body)
                if not message.get("more_body", False):
                    return bytes(body)
        except Overloaded as exc:
            # answered before the rest of the body is read: uvicorn then discards it in its parser, far cheaper
            # than draining it through every ASGI layer, which kept the event loop busy under a flood
            await refuse(receive, send, 0, 503, str(exc), exc.headers)
            return None


async def refuse(receive: Receive, send: Send, drain_budget: int, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
    """Read (and drop) what is left of the body, up to a budget, so the client sees the answer."""
    await drain(receive, drain_budget)
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send_json(send, status, {"error": message}, extra)


async def run_until_disconnect(app: ASGIApp, scope: Scope, receive: Receive, body: bytes, send: Send) -> None:
    """Run the app on a body already read, and cancel it if the client hangs up first: its decoding
    and model work is dropped (queued images never reach the model) instead of computed for no one."""
    disconnected = asyncio.Event()

    async def replay() -> Message:  # the body once, then (as ASGI says) a disconnect when it comes
        nonlocal body
        if body is not None:
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    work = asyncio.ensure_future(app(scope, replay, send))
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work


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


PLAIN_ERRORS = {404: "no route {path}", 405: "{method} is not allowed here"}


def _plain_errors_as_json(send: Send, scope: Scope) -> Send:
    """BentoML's own router answers an unknown path (`/ui/../classify` too) or method in plain text:
    the same JSON error shape as every other answer instead."""
    held: Message | None = None  # the start of a plain-text answer being replaced

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] in PLAIN_ERRORS:
            if dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"text/plain"):
                held = message
                return
        if held is None:
            await send(message)
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            text = PLAIN_ERRORS[held["status"]].format(path=scope["path"], method=scope["method"])
            kept = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
            await send_json(send, held["status"], {"error": text}, kept)  # 405 keeps its Allow header

    return wrapped


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
