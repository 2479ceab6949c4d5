"""The Starlette app beside BentoML's API methods (which are POST only): GET /metadata, the stored
plots, the Open Inference Protocol (`service.v2`) and the page (`service.ui`).

Handlers read the worker's `Classifier` from `request.app.state`, which the service fills at start-up;
they raise `service.errors` exceptions, which the app's one handler answers.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from service.errors import USER_ERRORS, ModelError, handle_request_error
from service.ui.routes import UI_ROUTES
from service.v2.routes import ROUTES as V2_ROUTES
from service.v2.routes import classifier_of, served_model


async def get_metadata(request: Request) -> JSONResponse:
    """GET /metadata[?model=name]: the served model (default: the first) and how it was trained."""
    metadata = classifier_of(request).describe(request.query_params.get("model") or None)
    return JSONResponse(metadata.model_dump(mode="json"))


async def plot(request: Request) -> Response:
    """A PNG stored in the served model's entry (training curves, confusion matrix), at a stable URL."""
    served = served_model(request)
    name = request.path_params["plot"]
    if name not in served.predictor.card.plots:  # only listed files: no path from the URL reaches the disk
        raise ModelError(f"model {served.tag} has no plot {name!r}; it has {served.predictor.card.plots}")
    return FileResponse(served.predictor.path / name, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


ROUTES = [
    Route("/metadata", get_metadata, methods=["GET"]),
    Route("/models/{name}/plots/{plot}", plot, methods=["GET"]),
    Route("/models/{name}/versions/{version}/plots/{plot}", plot, methods=["GET"]),
    *V2_ROUTES,
    *UI_ROUTES,
]


def build_app() -> Starlette:
    """The app, with its state (`classifier`, `model_control`) to be filled by the service at start-up."""
    # Starlette's own 404/405 answers (plain text) are turned into the JSON error shape by
    # service.http.limits, with BentoML's router's: one mechanism for both routers
    return Starlette(routes=ROUTES, exception_handlers={error: handle_request_error for error in USER_ERRORS})
