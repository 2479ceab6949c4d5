"""POST /classify with the image as the whole request body (`Content-Type: image/*` or
`application/octet-stream`, `top_k` and `model` in the query string): the cheap path, with no multipart
parsing and no temporary file; the bytes are decoded in memory.

Pure ASGI middleware, added inside the body-size limit, so these requests keep the same limits,
API key check, metrics and access log as the multipart ones, and get the same answers and errors.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.datastructures import State
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import USER_ERRORS, RequestError, error_response
from service.schemas import TOP_K_MAX

RAW_TYPES = ("application/octet-stream",)


def is_raw_upload(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != "/classify":
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.decode("latin-1").split(";")[0].strip().lower()
            return media_type.startswith("image/") or media_type in RAW_TYPES
    return False


def query_options(scope: Scope) -> tuple[int, str | None]:
    """`top_k` (1-10, default 3) and `model` from the query string (a 400 with a one-line reason)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(query) - {"top_k", "model"})
    if unknown:
        raise RequestError(f"unknown query parameter {unknown[0]!r}: use top_k and model")
    raw_k = query.get("top_k", ["3"])[-1]
    if not raw_k.strip().isdigit() or not 1 <= int(raw_k) <= TOP_K_MAX:
        raise RequestError(f"top_k: expected an integer from 1 to {TOP_K_MAX}, got {raw_k!r}")
    model = query.get("model", [""])[-1].strip() or None
    return int(raw_k), model


async def read_body(receive: Receive) -> bytes | None:
    """The whole body (the limits middleware outside has already bounded it); None if the client left."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


class RawBodyMiddleware:
    """Answers raw-body /classify requests itself, through the worker's classifier (`state.classifier`,
    filled by the service at start-up, as for the app's routes); passes the rest on."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_raw_upload(scope):
            await self.app(scope, receive, send)
            return
        try:
            top_k, model = query_options(scope)
            data = await read_body(receive)
            if data is None:
                return
            answers = await self.state.classifier.classify([data], top_k, model)
            response: Response = JSONResponse(answers[0].model_dump(mode="json"))
        except USER_ERRORS as error:
            response = error_response(error)
        await response(scope, receive, send)
