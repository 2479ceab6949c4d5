"""Typed clients (sync and async) for the CIFAR-10 service, built on httpx.

They answer with the service's own pydantic models, so a schema change shows up on both sides. Each endpoint
is written once, as a `Call` (the httpx request and how to read its answer); the two clients only send it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar, Union

import httpx
from PIL import Image
from pydantic import TypeAdapter

from service.schemas import Classification, ModelMetadata, ModelState

ImageInput = Union[str, Path, bytes, Image.Image]
DEFAULT_URL = "http://localhost:3000"
_BATCH = TypeAdapter(list[Classification])
_STATES = TypeAdapter(list[ModelState])
T = TypeVar("T")


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


def _reraise(error: httpx.HTTPError) -> NoReturn:
    raise error


@dataclass(frozen=True)
class Call(Generic[T]):
    """One endpoint call, written once for both clients: the request to send and how to read its answer.

    `options` are `build_request`'s keywords (params, content, files, data, json, headers, timeout);
    `unreachable` answers when the server cannot be reached (default: the httpx error is raised).
    """

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    options: dict[str, Any] = field(default_factory=dict)
    unreachable: Callable[[httpx.HTTPError], T] = _reraise

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(self.method, self.path, **self.options)


def _answer(validate: Callable[[bytes], T]) -> Callable[[httpx.Response], T]:
    """Read a success as the service's own type; an error answer raises ServiceError."""
    return lambda response: validate(_check(response).content)


def classify_call(image: ImageInput, top_k: int = 3, model: str | None = None) -> Call[Classification]:
    options = {"content": image_file(image)[1], "params": _fields(top_k, model), "headers": RAW_BODY}
    return Call("POST", "/classify", _answer(Classification.model_validate_json), options)


def classify_batch_call(images: Sequence[ImageInput], top_k: int = 3, model: str | None = None) -> Call[list[Classification]]:
    options = {"files": _batch_files(images), "data": _fields(top_k, model)}
    return Call("POST", "/classify_batch", _answer(_BATCH.validate_json), options)


def metadata_call(model: str | None = None) -> Call[ModelMetadata]:
    options = {"params": {"model": model} if model else None}
    return Call("GET", "/metadata", _answer(ModelMetadata.model_validate_json), options)


def models_call() -> Call[list[ModelState]]:
    return Call("GET", "/v2/repository/index", _answer(_STATES.validate_json))


def load_call(name: str, version: str | None = None) -> Call[ModelState]:
    options = {"json": _load_body(version), "timeout": None}  # a swap waits for every worker
    return Call("POST", f"/v2/repository/models/{name}/load", _answer(ModelState.model_validate_json), options)


def unload_call(name: str) -> Call[ModelState]:
    options = {"timeout": None}
    return Call("POST", f"/v2/repository/models/{name}/unload", _answer(ModelState.model_validate_json), options)


def ready_call() -> Call[bool]:
    return Call("GET", "/readyz", lambda response: response.status_code == 200, unreachable=lambda error: False)


class _Base:
    """What both clients hold: the base URL and one httpx client with the timeout and the API key header."""

    _client_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(self, url: str | None = None, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.url = (url or default_url()).rstrip("/")
        self._http = self._client_class(base_url=self.url, timeout=timeout, headers=auth_headers(api_key))


class CIFAR10Client(_Base):
    """Blocking client: `CIFAR10Client().classify("cat.jpg").label`.

    `api_key` is sent as `Authorization: Bearer <key>` (default: $CIFAR10_API_KEY, if set).
    """

    _client_class = httpx.Client
    _http: httpx.Client

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.send(call.request(self._http))
        except httpx.HTTPError as error:
            return call.unreachable(error)
        return call.read(response)

    def classify(self, image: ImageInput, top_k: int = 3, model: str | None = None) -> Classification:
        """`model`: a served model's name (default: the server's first). The image is sent as the raw body."""
        return self._send(classify_call(image, top_k, model))

    def classify_batch(self, images: Sequence[ImageInput], top_k: int = 3, model: str | None = None) -> list[Classification]:
        return self._send(classify_batch_call(images, top_k, model))

    def metadata(self, model: str | None = None) -> ModelMetadata:
        return self._send(metadata_call(model))

    def models(self) -> list[ModelState]:
        """The served models (and unloaded ones), from the v2 model repository index."""
        return self._send(models_call())

    def load(self, name: str, version: str | None = None) -> ModelState:
        """Switch `name` to its newest stored version (or `version`) with no downtime; needs
        CIFAR10_MODEL_CONTROL=1 on the server. Returns once every worker serves it."""
        return self._send(load_call(name, version))

    def unload(self, name: str) -> ModelState:
        return self._send(unload_call(name))

    def ready(self) -> bool:
        """True when the server answers /readyz with 200; False when it is down or still loading."""
        return self._send(ready_call())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CIFAR10Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCIFAR10Client(_Base):
    """The asyncio twin of CIFAR10Client: same methods, awaited."""

    _client_class = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.send(call.request(self._http))
        except httpx.HTTPError as error:
            return call.unreachable(error)
        return call.read(response)

    async def classify(self, image: ImageInput, top_k: int = 3, model: str | None = None) -> Classification:
        return await self._send(classify_call(image, top_k, model))

    async def classify_batch(
        self, images: Sequence[ImageInput], top_k: int = 3, model: str | None = None
    ) -> list[Classification]:
        return await self._send(classify_batch_call(images, top_k, model))

    async def metadata(self, model: str | None = None) -> ModelMetadata:
        return await self._send(metadata_call(model))

    async def models(self) -> list[ModelState]:
        return await self._send(models_call())

    async def load(self, name: str, version: str | None = None) -> ModelState:
        return await self._send(load_call(name, version))

    async def unload(self, name: str) -> ModelState:
        return await self._send(unload_call(name))

    async def ready(self) -> bool:
        return await self._send(ready_call())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCIFAR10Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
