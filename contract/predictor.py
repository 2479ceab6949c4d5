"""A stored model ready for inference: uint8 (n, 32, 32, 3) in, class probabilities out.

Used by the service, by training's evaluation and by import, so a model is scored exactly as it is
served. TensorFlow, Keras and BentoML are imported when a model is loaded, not at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contract.card import INPUT_SCALINGS, INPUT_SHAPE, ModelCard

Predict = Callable[[np.ndarray], np.ndarray]


def short_reason(error: Exception, limit: int = 120) -> str:
    """The first line of an error (why a model could not load or import), cut to fit in a one-line message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class UntrustedModel(Exception):
    """An entry whose loading could run code from the model file, without the operator's consent."""


@dataclass
class Predictor:
    tag: str
    card: ModelCard
    labels: dict[str, str]
    predict: Predict
    path: Path  # the store entry's folder (the model file, the plots)
    creation_time: Any = None

    @property
    def class_names(self) -> list[str]:
        return list(self.card.class_names)


def load_network(path: Path, model_format: str) -> Any:
    """Load a network file. Only Keras 3 files load in safe mode; the legacy formats can run code
    (HDF5 Lambda layers, SavedModel graph ops), so callers check trust before they get here."""
    if model_format == "keras":
        import keras

        return keras.saving.load_model(path, compile=False, safe_mode=True)
    import tf_keras

    return tf_keras.models.load_model(path, compile=False, safe_mode=True)


def tta_forward(network: Any, input_scaling: str, flip_tta: bool, translate_tta: bool) -> Callable[[Any], Any]:
    """uint8 images -> probabilities, written with `keras.ops` so it runs under any Keras backend.

    `flip_tta` averages the image and its mirror; `translate_tta` also averages (with equal weight to
    those two) the mirrored pair shifted one pixel up-left and one down-right, as airbench evaluates.
    """
    from keras import ops

    scale, offset = INPUT_SCALINGS[input_scaling]

    def mirrored(x: Any) -> Any:
        probabilities = ops.cast(network(x, training=False), "float32")
        if flip_tta:
            flipped = ops.cast(network(ops.flip(x, axis=2), training=False), "float32")
            probabilities = (probabilities + flipped) / 2.0
        return probabilities

    def forward(images: Any) -> Any:
        x = images if input_scaling == "uint8" else ops.cast(images, "float32") * scale + offset
        probabilities = mirrored(x)
        if translate_tta:
            padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
            shifted = (mirrored(padded[:, :-2, :-2]) + mirrored(padded[:, 2:, 2:])) / 2.0
            probabilities = (probabilities + shifted) / 2.0
        return probabilities

    return forward


def compile_inference(network: Any, input_scaling: str, flip_tta: bool, translate_tta: bool = False) -> Predict:
    """The forward pass compiled once for the running Keras backend, uint8 (n, 32, 32, 3) in: a
    `tf.function` with a fixed signature on TensorFlow, `jax.jit` on JAX (batches padded to powers of
    two, so a few shapes are compiled, not one per batch size)."""
    import keras

    forward = tta_forward(network, input_scaling, flip_tta, translate_tta)
    if keras.backend.backend() == "jax":
        return jax_predict(forward)
    import tensorflow as tf

    traced = tf.function(forward, input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.uint8)], reduce_retracing=True)

    def predict(images: np.ndarray) -> np.ndarray:
        return traced(tf.constant(images, dtype=tf.uint8)).numpy()

    return predict


def jax_predict(forward: Callable[[Any], Any]) -> Predict:
    import jax

    jitted = jax.jit(forward)

    def predict(images: np.ndarray) -> np.ndarray:
        count = len(images)
        padded = 1 << max(0, count - 1).bit_length()  # the next power of two
        if padded != count:
            images = np.concatenate([images, np.zeros((padded - count, *images.shape[1:]), images.dtype)])
        return np.asarray(jitted(np.asarray(images, dtype=np.uint8)))[:count]

    return predict


def batched(predict: Predict, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Probabilities for any number of images, in fixed-size model calls."""
    return np.concatenate([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def read_card(tag: str) -> tuple[Any, ModelCard]:
    """The store entry `name:version` (or `name:latest`) and its card; bentoml's NotFound if absent."""
    import bentoml

    ref = bentoml.models.get(tag)
    return ref, ModelCard.from_metadata(dict(ref.info.metadata))


def check_trust(tag: str, card: ModelCard, trust_model_code: bool) -> None:
    """Refuse, before anything is deserialized, an entry that could run code, unless trusted."""
    if card.needs_trust and not trust_model_code:
        why = "was imported with --trust-model-code" if card.trusted_code else f"is a legacy {card.format} file"
        raise UntrustedModel(
            f"model '{tag}' {why}, and loading it can run code from the file; "
            "set CIFAR10_TRUST_MODEL_CODE=1 to serve it anyway"
        )


def load_predictor(tag: str, trust_model_code: bool = False, entry: tuple[Any, ModelCard] | None = None) -> Predictor:
    """Load a store entry for inference, with the test-time augmentation its card names; `entry` is
    the store entry and card when the caller has read them already (the card is read once)."""
    ref, card = entry or read_card(tag)
    check_trust(str(ref.tag), card, trust_model_code)
    network = load_network(Path(ref.path) / card.model_file, card.format)
    predict = compile_inference(network, card.input_scaling, card.flip_tta, card.translate_tta)
    return Predictor(tag=str(ref.tag), card=card, labels=dict(ref.info.labels), predict=predict,
                     path=Path(ref.path), creation_time=ref.info.creation_time)
