"""The one way through the service: encoded files or decoded images in, answers out.

Every entry point (the BentoML API methods, the raw-body path, GET /metadata, the v2 routes) calls a
`Classifier` it was given: it holds the worker's place in the budget of images in flight, decodes,
queues the images on the micro-batcher of the model served now, and builds the answer. It raises
`service.errors` exceptions; the entry points never catch them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from contract.calibration import Calibrated
from service.inference.intake import Budget, Decoder
from service.inference.device import Device, keras_backend
from service.inference.registry import ModelRegistry, ServedModel
from service.schemas import BatchingSettings, Classification, Limits, ModelMetadata, Prediction
from service.settings import Settings


@dataclass
class Classifier:
    settings: Settings
    registry: ModelRegistry
    decoder: Decoder
    device: Device
    images_in_flight: Budget
    count_images: Callable[[int], object] = lambda count: None

    async def infer(self, model: str | None, version: str | None = None, *, files: list[bytes] | None = None,
                    images: np.ndarray | None = None, field: str | None = None,
                    indexed: bool = False) -> tuple[ServedModel, Calibrated]:
        """Calibrated probabilities (and OOD scores and flags) for encoded files (decoded here; a bad one
        names `field`) or decoded images, and the model version that gave them."""
        with self.images_in_flight.hold(len(files) if files is not None else len(images)):
            self.registry.get(model, version)  # an unknown model or version: 404 before any decoding
            if files is not None:
                images = await self.decoder.decode(files, field, indexed)
            # picking the model and queueing the images happen with no await between them, so a swap
            # cannot come in between: the whole request runs on the version it picked
            served = self.registry.get(model, version)
            outputs = await served.predict(images)
        self.count_images(len(images))
        return served, outputs

    async def classify(self, files: list[bytes], top_k: int, model: str | None,
                       field: str | None = None) -> list[Classification]:
        """/classify and /classify_batch (with `field`: a bad file names its field and index)."""
        served, outputs = await self.infer(model, files=files, field=field, indexed=field is not None)
        names = served.predictor.class_names
        if outputs.scores is None:
            return [classification(row, names, top_k, served.tag) for row in outputs.probabilities]
        return [classification(row, names, top_k, served.tag, bool(flag), float(score))
                for row, score, flag in zip(outputs.probabilities, outputs.scores, outputs.in_distribution)]

    def describe(self, name: str | None = None) -> ModelMetadata:
        """GET /metadata: the served model's card, as stored, and how this worker serves it."""
        served = self.registry.get(name)
        card = served.predictor.card
        plots = {plot: f"/models/{served.name}/versions/{served.version}/plots/{plot}" for plot in card.plots}
        settings = self.settings
        return ModelMetadata(
            **{**dict(card), "plots": plots},
            tag=served.tag, name=served.name, version=served.version, creation_time=served.creation_time,
            labels=served.predictor.labels, backend=keras_backend(), device=str(self.device),
            device_type=self.device.type,
            batching=BatchingSettings(max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms,
                                      max_batch_files=settings.max_batch_files, workers=settings.workers),
            limits=Limits(max_body_bytes=settings.max_body_bytes, max_image_pixels=settings.max_image_pixels,
                          large_image_pixels=settings.large_image_pixels, max_large_images=settings.max_large_images,
                          max_inflight_bytes=settings.max_inflight_bytes,
                          max_inflight_images=settings.max_inflight_images),
            calibrated=served.calibrated, ood_threshold=served.threshold,
        )

    @property
    def ready(self) -> bool:
        """Readiness: at least one model is served (a worker that unloaded them all is not ready)."""
        return bool(self.registry.models)


def classification(probabilities: np.ndarray, class_names: list[str], top_k: int, model: str,
                   in_distribution: bool | None = None, score: float | None = None) -> Classification:
    """The best class, its probability and the k best, renormalised in float64 so they sum to 1."""
    p = probabilities.astype(np.float64)
    p = p / p.sum()
    best = np.argsort(-p, kind="stable")[:top_k]
    return Classification(
        label=class_names[best[0]],
        confidence=float(p[best[0]]),
        top_k=[Prediction(label=class_names[i], probability=float(p[i])) for i in best],
        model=model,
        in_distribution=in_distribution,
        in_distribution_score=score,
    )
