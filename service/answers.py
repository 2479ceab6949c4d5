"""Turning decoded uploads and model output into HTTP answers; shared by the service and the ceiling
benchmark, so both do exactly the same work around the model call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from starlette.responses import JSONResponse

from service.schemas import Classification, Prediction


def error_response(exc: Exception, index: int | None = None) -> Any:
    """A 4xx (or 503) JSON answer for an error with a `status_code` (a bad image, an unknown model, a
    full worker, with its `headers`); BentoML passes a returned Response through unchanged."""
    body: dict[str, Any] = {"error": str(exc) if index is None else f"images[{index}]: {exc}"}
    if index is not None:
        body["index"] = index
    return JSONResponse(body, status_code=getattr(exc, "status_code", 400), headers=getattr(exc, "headers", None))


def unavailable(exc: Exception) -> Any:
    """503 while the worker shuts down (a request that slipped in after the drain began)."""
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def read_files(paths: list[Path]) -> list[bytes]:
    """Uploaded files (BentoML's temporary copies) read in a thread: the event loop stays free."""
    return await asyncio.to_thread(lambda: [Path(path).read_bytes() for path in paths])


def classification(probabilities: np.ndarray, class_names: list[str], top_k: int, model: str) -> Classification:
    """The best class, its probability and the k best, renormalised in float64 so they sum to 1."""
    p = probabilities.astype(np.float64)
    p = p / p.sum()
    best = np.argsort(-p, kind="stable")[:top_k]
    return Classification(
        label=class_names[best[0]],
        confidence=float(p[best[0]]),
        top_k=[Prediction(label=class_names[i], probability=float(p[i])) for i in best],
        model=model,
    )
