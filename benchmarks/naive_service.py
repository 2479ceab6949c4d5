"""The naive baseline: what users often write, one `model.predict` per request.

`bentoml serve benchmarks.naive_service:NaiveClassifier`. Loads the same stored model (CIFAR10_MODEL,
like the real service) with `keras.saving.load_model`, lets BentoML decode the multipart `image`
field into a PIL image, resizes it with Pillow and calls `model.predict(array[None])` in a plain
synchronous endpoint. No compiled function, no batching, no thread pool of its own.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
from PIL import Image

from contract.card import INPUT_SCALINGS, ModelCard
from contract.predictor import load_network
from service.schemas import Classification, Prediction
from service.settings import model_tag

MODEL = bentoml.models.BentoModel(model_tag())


@bentoml.service(name="cifar10_naive", workers=1, traffic={"timeout": 60})
class NaiveClassifier:
    model_ref = MODEL

    def __init__(self) -> None:
        import keras

        stored = self.model_ref
        card = ModelCard.from_metadata(dict(stored.info.metadata))
        path = Path(stored.path) / card.model_file
        if card.format == "keras":
            self.model = keras.saving.load_model(path, compile=False)
        else:  # Keras 2 files need tf-keras; same `.predict` API
            self.model = load_network(path, card.format)
        self.scale, self.offset = INPUT_SCALINGS[card.input_scaling]
        self.class_names = card.class_names
        self.tag = str(stored.tag)

    @bentoml.api(route="/classify")
    def classify(self, image: Image.Image, top_k: int = 3) -> Classification:
        array = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.uint8)
        x = array[None] if self.scale == 1.0 else array[None] * self.scale + self.offset
        probabilities = self.model.predict(x, verbose=0)[0]
        best = np.argsort(-probabilities)[:top_k]
        return Classification(
            label=self.class_names[best[0]],
            confidence=min(1.0, float(probabilities[best[0]])),
            top_k=[Prediction(label=self.class_names[i], probability=min(1.0, float(probabilities[i]))) for i in best],
            model=self.tag,
        )
