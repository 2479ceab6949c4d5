"""The HTTP ceiling: the real service's HTTP stack with the model call taken out.

`bentoml serve benchmarks.ceiling_service:CeilingClassifier`. Same input spec (multipart field
`image`, `top_k`), same middleware, same decoding in the same kind of thread pool, same answer
building (`service.answers`) and response schema as `service.service:CIFAR10Classifier`; instead of the micro-batcher
and the model it answers from one fixed probability vector. Its throughput is the most the real
service could reach on this machine with a free model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from contract.card import CIFAR10_CLASSES
from contract.images import ImageError
from service.answers import classification, error_response, read_files
from service.decoding import Decoder
from service.errors import RequestError
from service.inputs import ClassifyInput
from service.schemas import Classification
from service.service import SETTINGS, CIFAR10Classifier

FIXED_PROBABILITIES = np.linspace(1.0, 0.1, len(CIFAR10_CLASSES), dtype=np.float32)


@bentoml.service(name="cifar10_ceiling", workers=SETTINGS.workers, traffic={"timeout": 60})  # as many as the service
class CeilingClassifier:
    """/classify decodes the upload like the real service and answers without a model."""

    def __init__(self) -> None:
        self.decoder = Decoder(SETTINGS.decode_threads, SETTINGS.max_image_pixels, SETTINGS.large_image_pixels,
                               SETTINGS.max_large_images)

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, image: Path, top_k: int = 3, model: str | None = None) -> Classification:
        """Decode the upload (as the real service does), then a fixed answer instead of the model."""
        try:
            await self.decoder.decode(await read_files([image]))
        except (ImageError, RequestError) as exc:
            return error_response(exc)
        return classification(FIXED_PROBABILITIES, CIFAR10_CLASSES, top_k, SETTINGS.model_tag)

    async def classify_bytes(self, data: bytes, top_k: int, model: str | None) -> Any:
        """The raw-body path (`service.raw_body`, among the middleware copied below), without a model."""
        try:
            await self.decoder.decode([data])
        except (ImageError, RequestError) as exc:
            return error_response(exc)
        answer = classification(FIXED_PROBABILITIES, CIFAR10_CLASSES, top_k, SETTINGS.model_tag)
        return JSONResponse(answer.model_dump(mode="json"))

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.decoder.close()


# The real service's own ASGI middleware (body limits, and whatever else it adds), in the same order.
for middleware, options in CIFAR10Classifier.middlewares:
    CeilingClassifier.add_asgi_middleware(middleware, **options)
