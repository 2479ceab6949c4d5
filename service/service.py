"""The CIFAR-10 classification service: `bentoml serve service.service:CIFAR10Classifier`.

Per worker: pick the device, load each served model once (`service.inference.registry`), warm it up
at every batch size it will meet, then put the worker's `Classifier` (`service.classifier`, the one way
through) where every entry point finds it: the app's state, read by its routes (`service.http`,
`service.v2`, `service.ui`) and by the raw-body middleware. The API methods below call it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import bentoml

from contract.predictor import UntrustedModel, check_trust, read_card
from service.classifier import Classifier
from service.errors import answers_errors
from service.http.auth import ApiKeyMiddleware
from service.http.inputs import ClassifyBatchInput, ClassifyInput, read_files
from service.http.limits import LimitsMiddleware
from service.http.raw_body import RawBodyMiddleware
from service.http.routes import build_app
from service.inference.batching import power_of_two_sizes
from service.inference.control import (CONTROL_DIR_ENV, ControlFolderError, ModelControl, SharedControl,
                                       control_folder, create_control_folder)
from service.inference.intake import Budget, Decoder
from service.inference.device import configure_device
from service.inference.memory import freeze_start_up_objects, return_large_blocks_to_the_os
from service.inference.registry import ModelRegistry
from service.schemas import Classification, ModelMetadata
from service.settings import service_settings
from service.tracing import service_tracing

logger = logging.getLogger("bentoml.service.cifar10")

TRAIN_HINT = "train one with: train-cifar --optimizer adam"
SHUTDOWN_DRAIN_S = 30.0  # longest wait for queued model calls at shutdown


def declare_model(tag: str) -> tuple[bentoml.models.BentoModel, Any]:
    """The store entry as a BentoModel (so `bentoml build` packs it) and its card, checked at import so
    that `bentoml serve` and `bentoml build` fail with one line before any worker starts."""
    model = bentoml.models.BentoModel(tag)
    if model.stored is None:
        raise bentoml.exceptions.NotFound(
            f"model '{tag}' is not in the BentoML model store "
            f"({SETTINGS.bentoml_home}); {TRAIN_HINT}, or set CIFAR10_MODEL to a stored tag"
        )
    entry = read_card(str(model.stored.tag))  # the card alone: nothing of the model file is deserialized yet
    try:
        check_trust(str(model.stored.tag), entry[1], SETTINGS.trust_model_code)
    except UntrustedModel as error:
        raise bentoml.exceptions.BentoMLException(str(error)) from None
    return model, entry


def shares_model_control() -> bool:
    return SETTINGS.model_control and SETTINGS.workers > 1


def private_control_folder() -> Path:
    """The server's control folder; one line and no start if it is not private."""
    try:
        return control_folder()
    except ControlFolderError as error:
        raise bentoml.exceptions.BentoMLException(str(error)) from None


SETTINGS = service_settings()
DECLARED = [declare_model(tag) for tag in SETTINGS.model_tags]
if shares_model_control() and bentoml.server_context.worker_index is None and CONTROL_DIR_ENV not in os.environ:
    create_control_folder()  # the server's main process: its workers inherit the folder's path
APP = build_app()
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


def start_classifier() -> Classifier:
    """This worker's device, models (loaded and warmed up) and decoder."""
    device = configure_device(bentoml.server_context.worker_index, SETTINGS.inference_threads)
    batch_sizes, images_counter = _metrics(SETTINGS.max_batch_size)
    registry = ModelRegistry(SETTINGS.max_batch_size, SETTINGS.max_latency_ms, SETTINGS.trust_model_code,
                             batch_sizes.observe, SETTINGS.ood_threshold)
    for model, entry in DECLARED:
        registry.add(registry.load(str(model.stored.tag), entry))
    return Classifier(SETTINGS, registry, Decoder.from_settings(SETTINGS), device,
                      Budget(SETTINGS.max_inflight_images, "images"), images_counter.inc)


@bentoml.asgi_app(APP, path="/")
@bentoml.service(
    name="cifar10_classifier",
    workers=SETTINGS.workers,
    **({"resources": {"gpu": SETTINGS.gpus}} if SETTINGS.gpus else {}),
    traffic={"timeout": 60},
    **service_tracing(),
)
class CIFAR10Classifier:
    """Classify images into the ten CIFAR-10 classes with Keras models from the BentoML store."""

    model_ref = DECLARED[0][0]  # the others are declared below the class

    def __init__(self) -> None:
        return_large_blocks_to_the_os()
        self.classifier = start_classifier()
        shared = (SharedControl(private_control_folder(), bentoml.server_context.worker_index or 1, SETTINGS.workers)
                  if shares_model_control() else None)
        self.model_control = ModelControl(self.classifier.registry, shared)
        APP.state.classifier = self.classifier
        APP.state.model_control = self.model_control if SETTINGS.model_control else None
        frozen = freeze_start_up_objects()  # no full garbage collection rescans start-up's objects
        logger.info("serving %s on %s (%d start-up objects frozen for the garbage collector)",
                    ", ".join(self.classifier.registry.models), self.classifier.device, frozen)

    def __is_ready__(self) -> bool:
        """Ready (after the warm-up in __init__) while at least one model is served."""
        return self.classifier.ready

    @bentoml.on_startup
    async def _follow_model_control(self) -> None:
        """Each worker applies the loads and unloads that another worker received."""
        self._follower = asyncio.get_running_loop().create_task(self.model_control.follow())

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    @answers_errors
    async def classify(self, image: Path, top_k: int = 3, model: str | None = None) -> Classification:
        """Classify one uploaded image (multipart field `image`); the file's bytes decide its format.

        The image may also be the whole body (Content-Type image/* or application/octet-stream, `top_k`
        and `model` in the query string): `service.http.raw_body` passes it to the same classifier."""
        return (await self.classifier.classify(await read_files([image]), top_k, model))[0]

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchInput)
    @answers_errors
    async def classify_batch(self, images: list[Path], top_k: int = 3, model: str | None = None) -> list[Classification]:
        """Classify several images (multipart field `images`, repeated); answers keep their order."""
        return await self.classifier.classify(await read_files(images), top_k, model, field="images")

    @bentoml.api(route="/metadata")
    @answers_errors
    async def metadata(self) -> ModelMetadata:
        """The default model and how it was trained (also answered by GET /metadata[?model=name])."""
        return self.classifier.describe()

    @bentoml.on_shutdown
    async def _shutdown(self) -> None:
        """Runs after the server stopped accepting and its open requests ended; queued work still finishes."""
        await self.classifier.registry.close(timeout=SHUTDOWN_DRAIN_S)
        self.classifier.decoder.close()


CIFAR10Classifier.models.extend(model for model, _ in DECLARED[1:])  # every served model is packed by `bentoml build`
# The first added is the outermost: a request without the key is refused before its body is read.
CIFAR10Classifier.add_asgi_middleware(ApiKeyMiddleware, api_key=SETTINGS.api_key, max_drain_bytes=SETTINGS.max_body_bytes)
CIFAR10Classifier.add_asgi_middleware(LimitsMiddleware, max_body_bytes=SETTINGS.max_body_bytes,
                                      max_inflight_bytes=SETTINGS.max_inflight_bytes)
CIFAR10Classifier.add_asgi_middleware(RawBodyMiddleware, state=APP.state)
