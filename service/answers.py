"""Turning decoded uploads and model output into HTTP answers; shared by the service and the ceiling
benchmark, so both do exactly the same work around the model call."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from starlette.responses import JSONResponse

from contract.images import decode_image
from service.schemas import Classification, Prediction


def error_response(exc: Exception, index: int | None = None) -> Any:
    """A 4xx JSON answer for an error with a `status_code` (a bad image, an unknown model);
    BentoML passes a returned Response through unchanged."""
    body: dict[str, Any] = {"error": str(exc) if index is None else f"images[{index}]: {exc}"}
    if index is not None:
        body["index"] = index
    return JSONResponse(body, status_code=getattr(exc, "status_code", 400))


def unavailable(exc: Exception) -> Any:
    """503 while the worker shuts down (a request that slipped in after the drain began)."""
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


def read_and_decode(path: Path, max_pixels: int) -> np.ndarray:
    return decode_image(Path(path).read_bytes(), max_pixels)


async def decode_upload(pool: Executor, path: Path, max_pixels: int) -> np.ndarray:
    """Pillow work runs in a thread pool: the event loop must stay free for other requests."""
    return await asyncio.get_running_loop().run_in_executor(pool, read_and_decode, path, max_pixels)


async def decode_bytes(pool: Executor, data: bytes, max_pixels: int) -> np.ndarray:
    """`decode_upload` for bytes already in memory (the raw-body and v2 paths)."""
    return await asyncio.get_running_loop().run_in_executor(pool, decode_image, data, max_pixels)


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
