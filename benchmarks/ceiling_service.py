"""The HTTP ceiling: the real service's HTTP stack with the model call taken out.

`bentoml serve benchmarks.ceiling_service:CeilingClassifier`. Same input spec (multipart field
`image`, `top_k`), same middleware, same decoding in the same kind of thread pool, same answer
building and response schema as `service.service:CIFAR10Classifier`; instead of the micro-batcher
and the model it answers from one fixed probability vector. Its throughput is the most the real
service could reach on this machine with a free model.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import bentoml
import numpy as np

from service.images import ImageError
from service.inputs import ClassifyInput
from service.schemas import Classification
from service.service import SETTINGS, WORKERS, CIFAR10Classifier, error_response
from training.store import CIFAR10_CLASSES

REAL = CIFAR10Classifier.inner  # the real service's class: its decode and answer methods are reused as-is
FIXED_PROBABILITIES = np.linspace(1.0, 0.1, len(CIFAR10_CLASSES), dtype=np.float32)


@bentoml.service(name="cifar10_ceiling", workers=WORKERS, traffic={"timeout": 60})  # as many as the service
class CeilingClassifier:
    """/classify decodes the upload like the real service and answers without a model."""

    _decode = REAL._decode
    _decode_file = REAL._decode_file
    _answer = REAL._answer

    def __init__(self) -> None:
        self.class_names = np.array(CIFAR10_CLASSES)
        self.predictor = SimpleNamespace(tag=SETTINGS.model_tag)  # _answer reads .tag only
        self.decode_pool = ThreadPoolExecutor(SETTINGS.decode_threads, thread_name_prefix="cifar10-decode")

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, image: Path, top_k: int = 3) -> Classification:
        """Decode the upload (as the real service does), then a fixed answer instead of the model."""
        try:
            await self._decode(image)
        except ImageError as exc:
            return error_response(exc)
        return self._answer(FIXED_PROBABILITIES, top_k)

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)


# The real service's own ASGI middleware (body limits, and whatever else it adds), in the same order.
for middleware, options in CIFAR10Classifier.middlewares:
    CeilingClassifier.add_asgi_middleware(middleware, **options)
