"""The CIFAR-10 classification service: `bentoml serve service.service:CIFAR10Classifier`.

Per worker: pick the device, load each served model once (`service.registry`), warm it up at every
batch size it will meet, then answer. Classification goes through each model's micro-batcher, so
concurrent requests share model calls. Beside the API methods: GET /metadata and the Open Inference
Protocol (`service.routes`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from contract.predictor import UntrustedModel, check_trust, read_card
from service.admission import Budget
from service.answers import classification, error_response, read_files, unavailable
from service.auth import ApiKeyMiddleware
from service.control import (CONTROL_DIR_ENV, ControlFolderError, SharedControl, Wanted, control_folder,
                             create_control_folder)
from service.batching import BatcherClosed, power_of_two_sizes
from service.device import Device, configure_device, keras_backend
from service.decoding import Decoder, FileError
from service.http import LimitsMiddleware
from service.inputs import ClassifyBatchInput, ClassifyInput
from service.memory import return_large_blocks_to_the_os
from service.raw_body import RawBodyMiddleware
from service.errors import ModelError, RequestError
from service.registry import ModelRegistry, ServedModel
from service.routes import build_app
from service.schemas import BatchingSettings, Classification, Limits, ModelMetadata
from service.settings import service_settings

logger = logging.getLogger("bentoml.service.cifar10")

TRAIN_HINT = "train one with: train-cifar --optimizer adam"
SHUTDOWN_DRAIN_S = 30.0  # longest wait for queued model calls at shutdown
ALL_WORKERS_SWITCH_S = 300.0  # longest wait, in a load or unload, for the other workers to follow


def declare_model(tag: str) -> bentoml.models.BentoModel:
    """The store entry as a BentoModel (so `bentoml build` packs it), checked at import so that
    `bentoml serve` and `bentoml build` fail with one line before any worker starts."""
    model = bentoml.models.BentoModel(tag)
    if model.stored is None:
        raise bentoml.exceptions.NotFound(
            f"model '{tag}' is not in the BentoML model store "
            f"({SETTINGS.bentoml_home}); {TRAIN_HINT}, or set CIFAR10_MODEL to a stored tag"
        )
    try:  # the card alone: nothing of the model file is deserialized before this check
        check_trust(str(model.stored.tag), read_card(str(model.stored.tag))[1], SETTINGS.trust_model_code)
    except UntrustedModel as error:
        raise bentoml.exceptions.BentoMLException(str(error)) from None
    return model


def shares_model_control() -> bool:
    return SETTINGS.model_control and SETTINGS.workers > 1


SETTINGS = service_settings()
MODELS = [declare_model(tag) for tag in SETTINGS.model_tags]
if shares_model_control() and bentoml.server_context.worker_index is None and CONTROL_DIR_ENV not in os.environ:
    create_control_folder()  # the server's main process: its workers inherit the folder's path

_METRICS: tuple[Any, Any] | None = None


def private_control_folder() -> Path:
    """The server's control folder; one line and no start if it is not private."""
    try:
        return control_folder()
    except ControlFolderError as error:
        raise bentoml.exceptions.BentoMLException(str(error)) from None


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


@bentoml.asgi_app(build_app(), path="/")
@bentoml.service(
    name="cifar10_classifier",
    workers=SETTINGS.workers,
    **({"resources": {"gpu": SETTINGS.gpus}} if SETTINGS.gpus else {}),
    traffic={"timeout": 60},
)
class CIFAR10Classifier:
    """Classify images into the ten CIFAR-10 classes with Keras models from the BentoML store."""

    model_ref = MODELS[0]  # the others are declared below the class

    def __init__(self) -> None:
        self.settings = SETTINGS
        return_large_blocks_to_the_os()
        self.device: Device = configure_device(bentoml.server_context.worker_index, SETTINGS.inference_threads)
        batch_sizes, self.images_counter = _metrics(SETTINGS.max_batch_size)
        self.registry = ModelRegistry(SETTINGS.max_batch_size, SETTINGS.max_latency_ms, SETTINGS.trust_model_code,
                                      batch_sizes.observe)
        self.decoder = Decoder(SETTINGS.decode_threads, SETTINGS.max_image_pixels, SETTINGS.large_image_pixels,
                               SETTINGS.max_large_images)
        self.images_in_flight = Budget(SETTINGS.max_inflight_images, "images")
        self._ready = False
        for model in MODELS:
            self.registry.add(self.registry.load(str(model.stored.tag)))
        self.control = (
            SharedControl(private_control_folder(), bentoml.server_context.worker_index or 1, SETTINGS.workers)
            if shares_model_control() else None
        )
        self._ready = True
        logger.info("serving %s on %s", ", ".join(m.tag for m in self.registry.models.values()), self.device)

    def __is_ready__(self) -> bool:
        """Ready once warmed up, and only while at least one model is served."""
        return self._ready and bool(self.registry.models)

    @bentoml.on_startup
    async def _follow_model_control(self) -> None:
        """Each worker applies the loads and unloads that another worker received."""
        if self.control is not None:
            self._follower = asyncio.get_running_loop().create_task(self.control.follow(self._apply))

    async def _apply(self, wanted: Wanted) -> None:
        for name, version in wanted.items():
            served = self.registry.models.get(name)
            if version is None and served is not None:
                await self.registry.unload(name)
            elif version is not None and (served is None or served.version != version):
                await self.registry.swap(name, version)

    async def load_model(self, name: str, version: str | None) -> ServedModel:
        """Load and switch to a version in this worker, then wait until every worker serves it."""
        served = await self.registry.swap(name, version)
        await self._publish(name, served.version)
        return served

    async def unload_model(self, name: str) -> None:
        await self.registry.unload(name)
        await self._publish(name, None)

    async def _publish(self, name: str, version: str | None) -> None:
        if self.control is None:
            return
        generation = self.control.publish(name, version)
        if not await self.control.wait_for_all(generation, ALL_WORKERS_SWITCH_S):
            raise ModelError(f"not every worker switched {name} within {ALL_WORKERS_SWITCH_S:.0f} s; see the log", 409)

    def describe(self, served: ServedModel) -> ModelMetadata:
        """What GET /metadata answers for one served model."""
        card = served.predictor.card
        return ModelMetadata(
            tag=served.tag,
            name=served.name,
            version=served.version,
            creation_time=served.creation_time,
            architecture=card.architecture,
            parameters=card.parameters,
            class_names=card.class_names,
            input_shape=card.input_shape,
            input_dtype=card.input_dtype,
            preprocessing=card.preprocessing,
            input_scaling=card.input_scaling,
            flip_tta=card.flip_tta,
            translate_tta=card.translate_tta,
            config=card.config,
            metrics=card.metrics.model_dump(exclude_none=True),
            per_class={name: scores.model_dump() for name, scores in card.per_class.items()},
            plots={plot: f"/models/{served.name}/versions/{served.version}/plots/{plot}" for plot in card.plots},
            training_time_s=card.training_time_s,
            data=card.data.model_dump() if card.data else {},
            framework_versions=card.framework_versions,
            labels=served.predictor.labels,
            backend=keras_backend(),
            device=str(self.device),
            device_type=self.device.type,
            batching=BatchingSettings(
                max_batch_size=SETTINGS.max_batch_size,
                max_latency_ms=SETTINGS.max_latency_ms,
                max_batch_files=SETTINGS.max_batch_files,
                workers=SETTINGS.workers,
            ),
            limits=Limits(max_body_bytes=SETTINGS.max_body_bytes, max_image_pixels=SETTINGS.max_image_pixels),
        )

    async def infer(self, model: str | None, version: str | None, *, files: list[bytes] | None = None,
                    images: np.ndarray | None = None) -> tuple[ServedModel, np.ndarray]:
        """Probabilities for encoded files (decoded here) or decoded images, holding their place in this
        worker's budget of images in flight from decoding to the answer (503 when it is full)."""
        with self.images_in_flight.hold(len(files) if files is not None else len(images)):
            self.registry.get(model, version)  # an unknown model or version: 404 before any decoding
            if files is not None:
                images = await self.decoder.decode(files)
            return await self.predict(images, model, version)

    async def predict(self, images: np.ndarray, model: str | None = None,
                      version: str | None = None) -> tuple[ServedModel, np.ndarray]:
        """Probabilities from the model served under that name now, and which version gave them.

        Picking the model and queueing the images happen with no await between them, so a swap
        cannot come in between: the whole request runs on the version it picked.
        """
        served = self.registry.get(model, version)
        probabilities = await served.predict(images)  # BatcherClosed once shutdown has begun
        self.images_counter.inc(len(images))
        return served, probabilities

    async def classify_files(self, files: list[bytes], top_k: int, model: str | None, indexed: bool = False) -> Any:
        """The answers for encoded image files, or the one error answer (`indexed`: a bad file's names
        its index, as /classify_batch answers)."""
        try:
            served, probabilities = await self.infer(model, None, files=files)
        except FileError as exc:
            return error_response(exc, exc.index if indexed else None)
        except RequestError as exc:
            return error_response(exc)
        except BatcherClosed as exc:
            return unavailable(exc)
        return [classification(row, served.predictor.class_names, top_k, served.tag) for row in probabilities]

    async def classify_bytes(self, data: bytes, top_k: int, model: str | None) -> Any:
        """/classify with the image as the raw body (`service.raw_body`): decoded in memory, same answers."""
        answer = await self.classify_files([data], top_k, model)
        return JSONResponse(answer[0].model_dump(mode="json")) if isinstance(answer, list) else answer

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, image: Path, top_k: int = 3, model: str | None = None) -> Classification:
        """Classify one uploaded image (multipart field `image`); the file's bytes decide its format.

        The image may also be the whole body (Content-Type image/* or application/octet-stream, `top_k`
        and `model` in the query string): that cheaper path is answered by `service.raw_body`."""
        answer = await self.classify_files(await read_files([image]), top_k, model)
        return answer[0] if isinstance(answer, list) else answer

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchInput)
    async def classify_batch(self, images: list[Path], top_k: int = 3, model: str | None = None) -> list[Classification]:
        """Classify several images (multipart field `images`, repeated); answers keep their order."""
        return await self.classify_files(await read_files(images), top_k, model, indexed=True)

    @bentoml.api(route="/metadata")
    def metadata(self) -> ModelMetadata:
        """The default model and how it was trained (also answered by GET /metadata[?model=name])."""
        try:
            return self.describe(self.registry.get())
        except ModelError as exc:  # no model served (all unloaded)
            return error_response(exc)

    @bentoml.on_shutdown
    async def _shutdown(self) -> None:
        """Runs after the server stopped accepting and its open requests ended; queued work still finishes."""
        await self.registry.close(timeout=SHUTDOWN_DRAIN_S)
        self.decoder.close()


CIFAR10Classifier.models.extend(MODELS[1:])  # every served model is recorded (and packed) by `bentoml build`
# The first added is the outermost: a request without the key is refused before its body is read.
CIFAR10Classifier.add_asgi_middleware(ApiKeyMiddleware, api_key=SETTINGS.api_key, max_drain_bytes=SETTINGS.max_body_bytes)
CIFAR10Classifier.add_asgi_middleware(LimitsMiddleware, max_body_bytes=SETTINGS.max_body_bytes,
                                       max_inflight_bytes=SETTINGS.max_inflight_bytes)
CIFAR10Classifier.add_asgi_middleware(RawBodyMiddleware, classify=lambda: bentoml.get_current_service().classify_bytes)
