"""What each layer in front of a request costs in Python, timed alone: BentoML's ASGI middleware (OpenTelemetry as
BentoML sets it up, its timeout, request context and access log) around a Starlette route that reads a body the size
of a v2 request and answers, and our image decode (`contract/images.py`) per file.

    python benchmarks/middleware_cost.py [--calls 5000] [--repeats 3] [--images ../shared/data/cifar10-jpeg.tar.gz]

Every figure is µs per request (or per image) on this machine, one call after another on one event loop: the
Python a layer adds, not a throughput. docs/performance.md uses it for "Tracing off leaves the request path".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.harness import machine  # noqa: E402
from benchmarks.images import load_images  # noqa: E402

BODY = b"x" * 3200  # a v2 infer of one 32x32x3 uint8 image in binary is about this size
PATH = "/v2/models/m/infer"


def layers() -> dict[str, list[Any]]:
    """Each layer alone, as BentoML builds it (_bentoml_impl/server/app.py), and none."""
    import logging

    from _bentoml_impl.server.app import ContextMiddleware
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import ServiceContext
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    logging.getLogger("bentoml.access").disabled = True  # the access log's own work, not its output
    return {
        "no middleware, per request": [],
        "OpenTelemetry (tracing off), per request": [Middleware(
            OpenTelemetryMiddleware, excluded_urls=BentoMLContainer.tracing_excluded_urls.get(),
            default_span_details=None, server_request_hook=None, client_request_hook=None,
            tracer_provider=BentoMLContainer.tracer_provider.get())],
        "timeout, per request": [Middleware(TimeoutMiddleware, timeout=60)],
        "request context, per request": [Middleware(ContextMiddleware, context=ServiceContext())],
        "access log, per request": [Middleware(AccessLogMiddleware, has_request_content_length=True,
                                  has_request_content_type=True, has_response_content_length=True,
                                  has_response_content_type=True, skip_paths=[])],
    }


def app_with(middleware: list[Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok": 1}', media_type="application/json")

    return Starlette(routes=[Route(PATH, infer, methods=["POST"])], middleware=middleware)


async def call(app: Any) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:3000"), (b"content-type", b"application/octet-stream"),
                         (b"content-length", str(len(BODY)).encode())],
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 3000)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)


async def time_layers(calls: int, repeats: int) -> dict[str, list[float]]:
    """µs per request for each layer, `repeats` times, the layers taking turns."""
    apps = {name: app_with(middleware) for name, middleware in layers().items()}
    for app in apps.values():  # warm-up
        for _ in range(min(500, calls)):
            await call(app)
    timings: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(repeats):
        for name, app in apps.items():
            started = time.perf_counter()
            for _ in range(calls):
                await call(app)
            timings[name].append(1e6 * (time.perf_counter() - started) / calls)
    return timings


def time_decode(files: list[bytes], repeats: int) -> list[float]:
    """µs per file to open (header checks) and decode it, as the service does."""
    from contract.images import decode_image

    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for data in files:
            decode_image(data)
        timings.append(1e6 * (time.perf_counter() - started) / len(files))
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="requests per layer and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", help="image folder or .tar(.gz) whose files to decode (default: no decode row)")
    parser.add_argument("--num-images", type=int, default=500)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    rows = asyncio.run(time_layers(args.calls, args.repeats))
    if args.images:
        named, described = load_images(Path(args.images), args.num_images)
        print(f"images: {described}")
        rows["decode (contract/images.py), per file"] = time_decode([data for _, data in named], args.repeats)
    for name, values in rows.items():
        print(f"{name:42s} {min(values):8.1f} - {max(values):8.1f} µs")


if __name__ == "__main__":
    main()
