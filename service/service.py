"""The CIFAR-10 classification service: `bentoml serve service.service:CIFAR10Classifier`.

Per worker: pick the device, load the stored model once through `training.store.load_predictor`,
warm it up at every batch size it will meet, then answer. All classification goes through one
micro-batcher, so concurrent requests share model calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.auth import ApiKeyMiddleware
from service.batching import BatcherClosed, MicroBatcher, power_of_two_sizes
from service.device import Device, configure_device, gpu_count
from service.http import LimitsMiddleware
from service.images import ImageError, decode_image
from service.inputs import ClassifyBatchInput, ClassifyInput
from service.schemas import (
    BatchingSettings,
    Classification,
    Limits,
    ModelMetadata,
    Prediction,
)
from service.settings import Settings
from training.store import Predictor, load_predictor

logger = logging.getLogger("bentoml.service.cifar10")

SETTINGS = Settings.from_env()
GPUS = gpu_count()
WORKERS = int(os.environ.get("CIFAR10_WORKERS") or max(1, GPUS))  # one worker per GPU
TRAIN_HINT = "train one with: train-cifar --optimizer adam"
SHUTDOWN_DRAIN_S = 30.0  # longest wait for queued model calls at shutdown

MODEL = bentoml.models.BentoModel(SETTINGS.model_tag)
if MODEL.stored is None:  # fail at import: `bentoml serve` and `bentoml build` then print one line
    raise bentoml.exceptions.NotFound(
        f"model '{SETTINGS.model_tag}' is not in the BentoML model store "
        f"({os.environ.get('BENTOML_HOME', '~/bentoml')}); {TRAIN_HINT}, or set CIFAR10_MODEL to a stored tag"
    )

def error_response(exc: ImageError, index: int | None = None) -> Any:
    """A 4xx JSON answer; BentoML passes a returned Response through unchanged."""
    body: dict[str, Any] = {"error": str(exc) if index is None else f"images[{index}]: {exc}"}
    if index is not None:
        body["index"] = index
    return JSONResponse(body, status_code=exc.status_code)


def unavailable(exc: Exception) -> Any:
    """503 while the worker shuts down (a request that slipped in after the drain began)."""
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


_METRICS: tuple[Any, Any] | None = None


def _metrics(max_batch_size: int) -> tuple[Any, Any]:
    """Created per worker after BentoML set PROMETHEUS_MULTIPROC_DIR, so they reach /metrics."""
    import prometheus_client

    global _METRICS
    if _METRICS is None:
        _METRICS = (
            prometheus_client.Histogram(
                "cifar10_inference_batch_size",
                "Images per model call (after micro-batching)",
                buckets=[float(size) for size in power_of_two_sizes(max_batch_size)],
            ),
            prometheus_client.Counter("cifar10_images", "Images classified"),
        )
    return _METRICS


async def get_metadata(_: Request) -> JSONResponse:
    """GET /metadata, so plain `curl host/metadata` works (BentoML API routes are POST only)."""
    instance: CIFAR10Classifier = bentoml.get_current_service()
    return JSONResponse(instance.model_metadata.model_dump(mode="json"))


metadata_app = Starlette(routes=[Route("/metadata", get_metadata, methods=["GET"])])


@bentoml.asgi_app(metadata_app, path="/")
@bentoml.service(
    name="cifar10_classifier",
    workers=WORKERS,
    **({"resources": {"gpu": GPUS}} if GPUS else {}),
    traffic={"timeout": 60},
)
class CIFAR10Classifier:
    """Classify images into the ten CIFAR-10 classes with a Keras model from the BentoML store."""

    model_ref = MODEL

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.device: Device = configure_device(bentoml.server_context.worker_index)
        stored = self.model_ref  # resolves the local store entry (BentoModel descriptor)
        self.predictor: Predictor = load_predictor(str(stored.tag))
        self.class_names = np.array(self.predictor.class_names)
        batch_sizes, images = _metrics(SETTINGS.max_batch_size)
        self.images_counter = images
        self.batcher = MicroBatcher(
            self.predictor.predict, SETTINGS.max_batch_size, SETTINGS.max_latency_ms, batch_sizes.observe
        )
        self.decode_pool = ThreadPoolExecutor(SETTINGS.decode_threads, thread_name_prefix="cifar10-decode")
        self.model_metadata = self._build_metadata(stored.info.creation_time)
        self._ready = False
        self._warm_up()
        self._ready = True
        logger.info("serving %s on %s", self.predictor.tag, self.device)

    def _warm_up(self) -> None:
        """One call at every batch size the batcher can form (1 to max_batch_size): no real request
        pays for tracing, and the CPU kernels' per-shape caches are full before the memory baseline."""
        for size in range(1, SETTINGS.max_batch_size + 1):
            self.predictor.predict(np.zeros((size, 32, 32, 3), dtype=np.uint8))

    def __is_ready__(self) -> bool:
        return self._ready

    def _build_metadata(self, creation_time: Any) -> ModelMetadata:
        meta = self.predictor.metadata
        name, version = self.predictor.tag.split(":", 1)
        return ModelMetadata(
            tag=self.predictor.tag,
            name=name,
            version=version,
            creation_time=creation_time,
            architecture=meta.get("architecture"),
            parameters=meta.get("parameters"),
            class_names=self.predictor.class_names,
            input_shape=meta.get("input_shape", [32, 32, 3]),
            input_dtype=meta.get("input_dtype", "uint8"),
            preprocessing=meta.get("preprocessing"),
            input_scaling=meta.get("input_scaling"),
            flip_tta=bool(meta.get("flip_tta", False)),
            translate_tta=bool(meta.get("translate_tta", False)),
            config=meta.get("config", {}),
            metrics=meta.get("metrics", {}),
            training_time_s=meta.get("training_time_s"),
            data=meta.get("data", {}),
            framework_versions={k: str(v) for k, v in meta.get("framework_versions", {}).items()},
            labels=self.predictor.labels,
            device=str(self.device),
            device_type=self.device.type,
            batching=BatchingSettings(
                max_batch_size=SETTINGS.max_batch_size,
                max_latency_ms=SETTINGS.max_latency_ms,
                max_batch_files=SETTINGS.max_batch_files,
                workers=WORKERS,
            ),
            limits=Limits(max_body_bytes=SETTINGS.max_body_bytes, max_image_pixels=SETTINGS.max_image_pixels),
        )

    async def _decode(self, path: Path) -> np.ndarray:
        """Pillow work runs in a thread pool: the event loop must stay free for other requests."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decode_pool, self._decode_file, path)

    def _decode_file(self, path: Path) -> np.ndarray:
        return decode_image(Path(path).read_bytes(), SETTINGS.max_image_pixels)

    async def _classify(self, images: np.ndarray, top_k: int) -> list[Classification]:
        probabilities = await self.batcher.predict(images)  # BatcherClosed once shutdown has begun
        self.images_counter.inc(len(images))
        return [self._answer(row, top_k) for row in probabilities]

    def _answer(self, probabilities: np.ndarray, top_k: int) -> Classification:
        p = probabilities.astype(np.float64)
        p = p / p.sum()
        best = np.argsort(-p, kind="stable")[:top_k]
        return Classification(
            label=str(self.class_names[best[0]]),
            confidence=float(p[best[0]]),
            top_k=[Prediction(label=str(self.class_names[i]), probability=float(p[i])) for i in best],
            model=self.predictor.tag,
        )

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, image: Path, top_k: int = 3) -> Classification:
        """Classify one uploaded image (multipart field `image`); the file's bytes decide its format."""
        try:
            array = await self._decode(image)
        except ImageError as exc:
            return error_response(exc)
        try:
            return (await self._classify(array[None], top_k))[0]
        except BatcherClosed as exc:
            return unavailable(exc)

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchInput)
    async def classify_batch(self, images: list[Path], top_k: int = 3) -> list[Classification]:
        """Classify several images (multipart field `images`, repeated); answers keep their order."""
        decoded = await asyncio.gather(*(self._decode(path) for path in images), return_exceptions=True)
        for index, result in enumerate(decoded):
            if isinstance(result, ImageError):
                return error_response(result, index)
            if isinstance(result, BaseException):
                raise result
        try:
            return await self._classify(np.stack(decoded), top_k)
        except BatcherClosed as exc:
            return unavailable(exc)

    @bentoml.api(route="/metadata")
    def metadata(self) -> ModelMetadata:
        """The served model and how it was trained (also answered by GET /metadata)."""
        return self.model_metadata

    @bentoml.on_shutdown
    async def _shutdown(self) -> None:
        """Runs after the server stopped accepting and its open requests ended; queued work still finishes."""
        await self.batcher.close(timeout=SHUTDOWN_DRAIN_S)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)


# The first added is the outermost: a request without the key is refused before its body is read.
CIFAR10Classifier.add_asgi_middleware(ApiKeyMiddleware, api_key=SETTINGS.api_key, max_drain_bytes=SETTINGS.max_body_bytes)
CIFAR10Classifier.add_asgi_middleware(LimitsMiddleware, max_body_bytes=SETTINGS.max_body_bytes)
