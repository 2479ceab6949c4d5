"""Plain HTTP routes beside BentoML's API methods (which are POST only): GET /metadata and the Open
Inference Protocol (KServe v2) with Triton's model repository extension.

Mounted on the service with `@bentoml.asgi_app`; each handler reaches this worker's service
instance through `bentoml.get_current_service()`.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from contract.images import ImageError
from service import v2
from service.batching import BatcherClosed
from service.errors import ModelError, ProtocolError, RequestError
from service.ui import UI_ROUTES
from service.v2_openapi import OPENAPI

SERVER_NAME = "cifar-serve"
PLATFORMS = {"keras": "keras", "tf-keras-h5": "tf_keras_h5", "tf-keras-savedmodel": "tensorflow_savedmodel"}


def server_version() -> str:
    try:
        return version("cifar-serve")
    except PackageNotFoundError:  # a built bento carries the source, not the installed package
        return "unknown"


def error(message: str, status_code: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


async def get_metadata(request: Request) -> JSONResponse:
    """GET /metadata[?model=name]: the served model (default: the first) and how it was trained."""
    service = bentoml.get_current_service()
    try:
        served = service.registry.get(request.query_params.get("model") or None)
    except ModelError as exc:
        return error(str(exc), exc.status_code)
    return JSONResponse(service.describe(served).model_dump(mode="json"))


async def server_metadata(_: Request) -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": v2.EXTENSIONS})


async def live(_: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(_: Request) -> JSONResponse:
    is_ready = bool(bentoml.get_current_service().__is_ready__())
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def served_model(request: Request) -> Any:
    """The model named in the path, at the path's version if it names one (ModelError otherwise)."""
    params = request.path_params
    return bentoml.get_current_service().registry.get(params["name"], params.get("version"))


async def model_metadata(request: Request) -> JSONResponse:
    try:
        served = served_model(request)
    except ModelError as exc:
        return error(str(exc), exc.status_code)
    return JSONResponse({
        "name": served.name,
        "versions": [served.version],
        "platform": PLATFORMS[served.predictor.card.format],
        "inputs": [
            {"name": v2.IMAGES_INPUT, "datatype": "UINT8", "shape": [-1, 32, 32, 3]},
            {"name": v2.FILES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": v2.OUTPUT, "datatype": "FP32", "shape": [-1, len(served.predictor.class_names)]}],
    })


async def model_ready(request: Request) -> JSONResponse:
    try:
        served = served_model(request)
    except ModelError as exc:
        return error(str(exc), exc.status_code)
    return JSONResponse({"name": served.name, "version": served.version, "ready": True})


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer: UINT8 pixels or BYTES image files in."""
    service = bentoml.get_current_service()
    body = await request.body()
    try:
        parsed = await v2.read_infer_request(body, request.headers.get(v2.HEADER_LENGTH), service.settings.max_batch_files)
        served, probabilities = await service.infer(request.path_params["name"], request.path_params.get("version"),
                                                    files=parsed.files, images=parsed.images)
    except RequestError as exc:
        return error(str(exc), exc.status_code, getattr(exc, "headers", None))
    except ImageError as exc:
        return error(f"{v2.FILES_INPUT}: {exc}", exc.status_code)
    except BatcherClosed as exc:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
    content, headers = v2.infer_response(served.name, served.version, parsed, probabilities,
                                         served.predictor.class_names)
    return Response(content, media_type="application/json", headers=headers)


async def repository_index(_: Request) -> JSONResponse:
    registry = bentoml.get_current_service().registry
    index = [{"name": m.name, "version": m.version, "state": "READY"} for m in registry.models.values()]
    index += [{"name": name, "state": "UNAVAILABLE", "reason": "unloaded"} for name in sorted(registry.unloaded)]
    return JSONResponse(index)


async def load_parameters(request: Request) -> dict[str, Any]:
    """The optional JSON body of a load or unload request: {"parameters": {...}}."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        parameters = json.loads(body).get("parameters") or {}
    except (ValueError, AttributeError, RecursionError):
        raise ProtocolError("the body must be empty or a JSON object with 'parameters'") from None
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    return parameters


async def load_model(request: Request) -> JSONResponse:
    """Load the newest stored version of {name}, or `parameters.version`, warm it, then switch to it."""
    service = bentoml.get_current_service()
    if not service.settings.model_control:
        return error("model control is off: start the server with CIFAR10_MODEL_CONTROL=1", 403)
    try:
        parameters = await load_parameters(request)
        if "config" in parameters or any(key.startswith("file:") for key in parameters):
            raise ProtocolError("config and file overrides are not supported: store the model with train-cifar")
        wanted = parameters.get("version")
        if wanted is not None and not isinstance(wanted, str):
            raise ProtocolError("'version' must be a string")
        served = await service.load_model(request.path_params["name"], wanted)
    except RequestError as exc:
        return error(str(exc), exc.status_code)
    return JSONResponse({"name": served.name, "version": served.version, "state": "READY"})


async def unload_model(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    if not service.settings.model_control:
        return error("model control is off: start the server with CIFAR10_MODEL_CONTROL=1", 403)
    try:
        await load_parameters(request)
        await service.unload_model(request.path_params["name"])
    except RequestError as exc:
        return error(str(exc), exc.status_code)
    return JSONResponse({"name": request.path_params["name"], "state": "UNAVAILABLE"})


async def plot(request: Request) -> Response:
    """A PNG stored in the served model's entry (training curves, confusion matrix), at a stable URL."""
    try:
        served = served_model(request)
    except ModelError as exc:
        return error(str(exc), exc.status_code)
    name = request.path_params["plot"]
    if name not in served.predictor.card.plots:  # only listed files: no path from the URL reaches the disk
        return error(f"model {served.tag} has no plot {name!r}; it has {served.predictor.card.plots}", 404)
    return FileResponse(served.predictor.path / name, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


async def openapi(_: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
ROUTES = [
    Route("/metadata", get_metadata, methods=["GET"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/openapi.json", openapi, methods=["GET"]),
    Route("/v2/repository/index", repository_index, methods=["GET", "POST"]),
    Route("/v2/repository/models/{name}/load", load_model, methods=["POST"]),
    Route("/v2/repository/models/{name}/unload", unload_model, methods=["POST"]),
    *(Route(prefix, model_metadata, methods=["GET"]) for prefix in (MODEL, VERSION)),
    *(Route(f"{prefix}/ready", model_ready, methods=["GET"]) for prefix in (MODEL, VERSION)),
    *(Route(f"{prefix}/infer", infer, methods=["POST"]) for prefix in (MODEL, VERSION)),
    Route("/models/{name}/plots/{plot}", plot, methods=["GET"]),
    Route("/models/{name}/versions/{version}/plots/{plot}", plot, methods=["GET"]),
    *UI_ROUTES,
]


def build_app() -> Starlette:
    app = Starlette(routes=ROUTES)
    app.add_exception_handler(405, lambda request, exc: error(f"{request.method} is not allowed here", 405))
    app.add_exception_handler(404, lambda request, exc: error(f"no route {request.url.path}", 404))
    return app
