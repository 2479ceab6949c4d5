"""The HTTP ceiling: the real service's HTTP stack with the model call taken out.

`bentoml serve benchmarks.ceiling_service:CeilingClassifier`. Same input spec (multipart field
`image`, `top_k`), same middleware (the raw-body path included), same decoder with the same limits,
same answer building and response schema as `service.service:CIFAR10Classifier`; instead of the
micro-batcher and the model it answers from one fixed probability vector. Its throughput is the most
the real service could reach on this machine with a free model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np

from contract.card import CIFAR10_CLASSES
from service.classifier import classification
from service.errors import answers_errors
from service.http.inputs import ClassifyInput, read_files
from service.inference.intake import Decoder
from service.schemas import Classification
from service.service import APP, SETTINGS, CIFAR10Classifier

FIXED_PROBABILITIES = np.linspace(1.0, 0.1, len(CIFAR10_CLASSES), dtype=np.float32)


@dataclass
class FixedAnswers:
    """The classifier's `classify`, with the decoding and without the model."""

    decoder: Decoder

    async def classify(self, files: list[bytes], top_k: int, model: str | None) -> list[Classification]:
        await self.decoder.decode(files)
        return [classification(FIXED_PROBABILITIES, CIFAR10_CLASSES, top_k, SETTINGS.model_tag) for _ in files]


@bentoml.service(name="cifar10_ceiling", workers=SETTINGS.workers, traffic={"timeout": 60})  # as many as the service
class CeilingClassifier:
    """/classify decodes the upload like the real service and answers without a model."""

    def __init__(self) -> None:
        self.answers = FixedAnswers(Decoder.from_settings(SETTINGS))
        APP.state.classifier = self.answers  # what the raw-body middleware calls

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    @answers_errors
    async def classify(self, image: Path, top_k: int = 3, model: str | None = None) -> Classification:
        """Decode the upload (as the real service does), then a fixed answer instead of the model."""
        return (await self.answers.classify(await read_files([image]), top_k, model))[0]

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.answers.decoder.close()


# The real service's own ASGI middleware (body limits, raw body, and whatever else it adds), in the same order.
for middleware, options in CIFAR10Classifier.middlewares:
    CeilingClassifier.add_asgi_middleware(middleware, **options)
