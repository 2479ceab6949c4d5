"""What every peer server shares: its settings (one pydantic model, passed as environment variables so a
peer's own worker processes read them too), the stored model run exactly as our service runs it, and our
image decoder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from contract.images import decode_image

PREFIX = "CIFAR_PEER_"
MODEL_NAME = "cifar10"  # the v2 model name every peer serves
FILES_MODEL_NAME = "cifar10_files"  # PyTriton's second model: one image file per row (BYTES)
IMAGES_INPUT, FILES_INPUT, OUTPUT = "images", "image_files", "probabilities"  # as our service's v2 names


class PeerSettings(BaseModel):
    port: int
    workers: int = 1
    max_batch_size: int = 64
    max_latency_ms: int = 2  # our CIFAR10_MAX_LATENCY_MS
    model_file: str  # the .keras file in the BentoML store entry
    input_scaling: str = "uint8"
    flip_tta: bool = False
    translate_tta: bool = False
    temperature: float = 1.0  # the card's calibration: our service answers calibrated probabilities
    inference_threads: int = 1  # TensorFlow's intra-op threads per model call, as our service sets them

    def to_env(self) -> dict[str, str]:
        return {f"{PREFIX}{key.upper()}": str(value) for key, value in self.model_dump().items()}

    @classmethod
    def from_env(cls) -> PeerSettings:
        return cls(**{key[len(PREFIX):].lower(): value for key, value in os.environ.items() if key.startswith(PREFIX)})


def load_predict(settings: PeerSettings) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (n, 32, 32, 3) -> probabilities: our service's compiled forward pass, on our thread count, warmed,
    then the card's temperature as our service applies it (contract.calibration)."""
    import tensorflow as tf

    from contract.calibration import calibrate
    from contract.predictor import compile_inference, load_network

    tf.config.threading.set_intra_op_parallelism_threads(settings.inference_threads)
    network = load_network(Path(settings.model_file), "keras")
    predict = compile_inference(network, settings.input_scaling, settings.flip_tta, settings.translate_tta)
    for size in (1, settings.max_batch_size):
        predict(np.zeros((size, 32, 32, 3), np.uint8))
    if settings.temperature == 1.0:
        return predict
    return lambda images: calibrate(predict(images), settings.temperature).astype(np.float32)


def decode_files(files: list[bytes]) -> np.ndarray:
    """Image files -> (n, 32, 32, 3) uint8 with our decoder (the same Pillow path and resizing as ours)."""
    return np.stack([decode_image(data) for data in files])
