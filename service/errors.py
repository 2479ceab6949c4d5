"""Errors a client's request causes, and the one place that turns them into the one JSON answer.

Anything below the routes raises: `RequestError` (or a subclass) carries its status and headers,
`contract.images.ImageError` its status, a bad file in a batch its index. `error_response` is the
only code that writes `{"error": ...}`; the Starlette app's exception handler, the `answers_errors`
decorator of the BentoML API methods and the raw-body middleware all call it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

from contract.images import ImageError

RETRY_AFTER_S = 1


class RequestError(Exception):
    """A request the service refuses; answered as `{"error": message}` with `status_code`."""

    default_status = 400
    headers: dict[str, str] | None = None

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code or self.default_status


class ModelError(RequestError):
    """A model that cannot be used as asked: unknown, not loaded, not loadable."""

    default_status = 404


class ProtocolError(RequestError):
    """A malformed Open Inference Protocol request."""


class Unavailable(RequestError):
    """The worker cannot take this now (full, or shutting down): retry shortly, here or elsewhere."""

    default_status = 503
    headers = {"Retry-After": str(RETRY_AFTER_S)}


class Overloaded(Unavailable):
    """The worker holds as much work as its budgets allow."""


USER_ERRORS = (RequestError, ImageError)  # everything a client can cause; anything else is the server's


def error_response(exc: Exception) -> JSONResponse:
    """The one error answer: `{"error": "<one line>"}`, with `index` for a bad file in a batch."""
    body: dict[str, Any] = {"error": " ".join(str(exc).split())}
    index = getattr(exc, "index", None)
    if index is not None:
        body["index"] = index
    return JSONResponse(body, status_code=getattr(exc, "status_code", 400), headers=getattr(exc, "headers", None))


async def handle_request_error(_: Request, exc: Exception) -> JSONResponse:
    """The Starlette app's exception handler for `USER_ERRORS`."""
    return error_response(exc)


Params = ParamSpec("Params")
Answer = TypeVar("Answer")


def answers_errors(method: Callable[Params, Awaitable[Answer]]) -> Callable[Params, Awaitable[Answer]]:
    """For a BentoML API method: a user error becomes `error_response` (BentoML would log a traceback
    and answer 500, or a list); BentoML passes a returned Response through unchanged."""

    @functools.wraps(method)
    async def wrapped(*args: Params.args, **kwargs: Params.kwargs) -> Answer:
        try:
            return await method(*args, **kwargs)
        except USER_ERRORS as exc:
            return error_response(exc)  # type: ignore[return-value]

    return wrapped
