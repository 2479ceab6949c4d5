"""The Open Inference Protocol (KServe v2) routes, with Triton's model repository extension.

Each handler reads what it needs from `request.app.state` (the worker's `Classifier`, its
`ModelControl` when model control is on), filled by the service at start-up. Errors are raised and
answered by the app's one handler (`service.errors`).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.classifier import Classifier
from service.errors import ProtocolError, RequestError
from service.inference.control import ModelControl
from service.inference.registry import ServedModel
from service.v2 import protocol
from service.v2.openapi import OPENAPI

SERVER_NAME = "cifar-serve"
PLATFORMS = {"keras": "keras", "tf-keras-h5": "tf_keras_h5", "tf-keras-savedmodel": "tensorflow_savedmodel"}


def server_version() -> str:
    try:
        return version("cifar-serve")
    except PackageNotFoundError:  # a built bento carries the source, not the installed package
        return "unknown"


def classifier_of(request: Request) -> Classifier:
    return request.app.state.classifier


def served_model(request: Request) -> ServedModel:
    """The model named in the path, at the path's version if it names one (ModelError otherwise)."""
    params = request.path_params
    return classifier_of(request).registry.get(params["name"], params.get("version"))


async def server_metadata(_: Request) -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": protocol.EXTENSIONS})


async def live(_: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    """Ready while at least one model is served, as /readyz."""
    is_ready = getattr(request.app.state, "classifier", None) is not None and classifier_of(request).ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def model_metadata(request: Request) -> JSONResponse:
    served = served_model(request)
    return JSONResponse({
        "name": served.name,
        "versions": [served.version],
        "platform": PLATFORMS[served.predictor.card.format],
        "inputs": [
            {"name": protocol.IMAGES_INPUT, "datatype": "UINT8", "shape": [-1, 32, 32, 3]},
            {"name": protocol.FILES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": protocol.output_metadata(len(served.predictor.class_names), served.calibrated),
    })


async def model_ready(request: Request) -> JSONResponse:
    served = served_model(request)
    return JSONResponse({"name": served.name, "version": served.version, "ready": True})


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer: parse, classify, encode; UINT8 pixels or BYTES
    image files in."""
    classifier = classifier_of(request)
    parsed = await protocol.read_infer_request(await request.body(), request.headers.get(protocol.HEADER_LENGTH),
                                               classifier.settings.max_batch_files)
    served, outputs = await classifier.infer(request.path_params["name"], request.path_params.get("version"),
                                             files=parsed.files, images=parsed.images, field=protocol.FILES_INPUT)
    content, headers = protocol.infer_response(served.name, served.version, parsed, outputs,
                                               served.predictor.class_names)
    return Response(content, media_type="application/json", headers=headers)


async def repository_index(request: Request) -> JSONResponse:
    registry = classifier_of(request).registry
    index = [{"name": m.name, "version": m.version, "state": "READY"} for m in registry.models.values()]
    index += [{"name": name, "state": "UNAVAILABLE", "reason": "unloaded"} for name in sorted(registry.unloaded)]
    return JSONResponse(index)


def model_control_of(request: Request) -> ModelControl:
    control = getattr(request.app.state, "model_control", None)
    if control is None:
        raise RequestError("model control is off: start the server with CIFAR10_MODEL_CONTROL=1", 403)
    return control


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
    control = model_control_of(request)
    parameters = await load_parameters(request)
    if "config" in parameters or any(key.startswith("file:") for key in parameters):
        raise ProtocolError("config and file overrides are not supported: store the model with train-cifar")
    wanted = parameters.get("version")
    if wanted is not None and not isinstance(wanted, str):
        raise ProtocolError("'version' must be a string")
    served = await control.load(request.path_params["name"], wanted)
    return JSONResponse({"name": served.name, "version": served.version, "state": "READY"})


async def unload_model(request: Request) -> JSONResponse:
    control = model_control_of(request)
    await load_parameters(request)
    await control.unload(request.path_params["name"])
    return JSONResponse({"name": request.path_params["name"], "state": "UNAVAILABLE"})


async def openapi(_: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
ROUTES = [
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
]
