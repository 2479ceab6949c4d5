"""Typed clients (sync and async) for the CIFAR-10 service, built on httpx.

They answer with the service's own pydantic models, so a schema change shows up on both sides.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import httpx
from PIL import Image
from pydantic import TypeAdapter

from service.schemas import Classification, ModelMetadata, ModelState

ImageInput = Union[str, Path, bytes, Image.Image]
DEFAULT_URL = "http://localhost:3000"
_BATCH = TypeAdapter(list[Classification])
_STATES = TypeAdapter(list[ModelState])


def default_url() -> str:
    return os.environ.get("CIFAR10_URL") or DEFAULT_URL


def default_api_key() -> str | None:
    return os.environ.get("CIFAR10_API_KEY", "").strip() or None


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header for a key (None: $CIFAR10_API_KEY; '' or unset: no header)."""
    key = default_api_key() if api_key is None else api_key.strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class ServiceError(Exception):
    """The server answered with an error; `message` is its one-line reason."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


def image_file(image: ImageInput, name: str = "image") -> tuple[str, bytes, str]:
    """(filename, bytes, content type) for a path, raw bytes or a PIL image; the server sniffs the bytes."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return f"{name}.png", buffer.getvalue(), "image/png"
    if isinstance(image, (bytes, bytearray)):
        return name, bytes(image), "application/octet-stream"
    path = Path(image)
    return path.name, path.read_bytes(), "application/octet-stream"


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoML wraps some errors in a list
    message = body.get("error") if isinstance(body, dict) else None
    raise ServiceError(response.status_code, str(message or response.text.strip() or response.reason_phrase))


def _batch_files(images: Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", image_file(image, f"image{i}")) for i, image in enumerate(images)]


def _fields(top_k: int, model: str | None) -> dict[str, str]:
    return {"top_k": str(top_k), **({"model": model} if model else {})}


RAW_BODY = {"Content-Type": "application/octet-stream"}  # the cheap /classify path: no multipart, no temp file


def _load_body(version: str | None) -> dict[str, Any]:
    return {"parameters": {"version": version}} if version else {}


class CIFAR10Client:
    """Blocking client: `CIFAR10Client().classify("cat.jpg").label`.

    `api_key` is sent as `Authorization: Bearer <key>` (default: $CIFAR10_API_KEY, if set).
    """

    def __init__(self, url: str | None = None, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.url = (url or default_url()).rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=auth_headers(api_key))

    def classify(self, image: ImageInput, top_k: int = 3, model: str | None = None) -> Classification:
        """`model`: a served model's name (default: the server's first). The image is sent as the raw body."""
        content = image_file(image)[1]
        response = _check(self._http.post("/classify", content=content, params=_fields(top_k, model), headers=RAW_BODY))
        return Classification.model_validate_json(response.content)

    def classify_batch(self, images: Sequence[ImageInput], top_k: int = 3, model: str | None = None) -> list[Classification]:
        response = _check(self._http.post("/classify_batch", files=_batch_files(images), data=_fields(top_k, model)))
        return _BATCH.validate_json(response.content)

    def metadata(self, model: str | None = None) -> ModelMetadata:
        params = {"model": model} if model else None
        return ModelMetadata.model_validate_json(_check(self._http.get("/metadata", params=params)).content)

    def models(self) -> list[ModelState]:
        """The served models (and unloaded ones), from the v2 model repository index."""
        return _STATES.validate_json(_check(self._http.get("/v2/repository/index")).content)

    def load(self, name: str, version: str | None = None) -> ModelState:
        """Switch `name` to its newest stored version (or `version`) with no downtime; needs
        CIFAR10_MODEL_CONTROL=1 on the server. Returns once every worker serves it."""
        response = self._http.post(f"/v2/repository/models/{name}/load", json=_load_body(version), timeout=None)
        return ModelState.model_validate_json(_check(response).content)

    def unload(self, name: str) -> ModelState:
        response = self._http.post(f"/v2/repository/models/{name}/unload", timeout=None)
        return ModelState.model_validate_json(_check(response).content)

    def ready(self) -> bool:
        """True when the server answers /readyz with 200; False when it is down or still loading."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CIFAR10Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCIFAR10Client:
    """The asyncio twin of CIFAR10Client: same methods, awaited."""

    def __init__(self, url: str | None = None, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.url = (url or default_url()).rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=auth_headers(api_key))

    async def classify(self, image: ImageInput, top_k: int = 3, model: str | None = None) -> Classification:
        content = image_file(image)[1]
        response = await self._http.post("/classify", content=content, params=_fields(top_k, model), headers=RAW_BODY)
        return Classification.model_validate_json(_check(response).content)

    async def classify_batch(
        self, images: Sequence[ImageInput], top_k: int = 3, model: str | None = None
    ) -> list[Classification]:
        files = _batch_files(images)
        response = _check(await self._http.post("/classify_batch", files=files, data=_fields(top_k, model)))
        return _BATCH.validate_json(response.content)

    async def metadata(self, model: str | None = None) -> ModelMetadata:
        params = {"model": model} if model else None
        return ModelMetadata.model_validate_json(_check(await self._http.get("/metadata", params=params)).content)

    async def models(self) -> list[ModelState]:
        return _STATES.validate_json(_check(await self._http.get("/v2/repository/index")).content)

    async def load(self, name: str, version: str | None = None) -> ModelState:
        response = await self._http.post(f"/v2/repository/models/{name}/load", json=_load_body(version), timeout=None)
        return ModelState.model_validate_json(_check(response).content)

    async def unload(self, name: str) -> ModelState:
        response = await self._http.post(f"/v2/repository/models/{name}/unload", timeout=None)
        return ModelState.model_validate_json(_check(response).content)

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCIFAR10Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
