"""A stored model ready for inference: uint8 (n, 32, 32, 3) in, class probabilities or logits out.

Used by the service, by training's evaluation and by import, so a model is scored exactly as it is
served. TensorFlow, Keras and BentoML are imported when a model is loaded, not at import.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contract.calibration import as_outputs
from contract.card import INPUT_SCALINGS, INPUT_SHAPE, ModelCard

Predict = Callable[[np.ndarray], np.ndarray]
logger = logging.getLogger(__name__)


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
    logits: Predict  # `compile_logits` (logits and feature norm): what the service and the calibration run
    path: Path  # the store entry's folder (the model file, the plots)
    creation_time: Any = None
    logits_missing: str = ""  # why `logits` gives log p instead ("" when they are the network's logits)

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


def is_softmax(layer: Any) -> bool:
    """A layer that ends in a softmax: an Activation or Softmax layer, or one (Dense) with that activation."""
    if type(layer).__name__ == "Softmax":
        return True
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def logits_dense(tensor: Any, steps: int = 4) -> Any:
    """The Dense layer that computes the logits `tensor`, through up to `steps` single-input layers
    after it (fast's fixed Rescaling), or None."""
    for _ in range(steps):
        layer = tensor._keras_history[0]
        if type(layer).__name__ == "Dense":
            return layer
        tensor = layer.input
        if isinstance(tensor, (list, tuple)):
            return None
    return None


Head = Callable[[Any], tuple[Any, Any]]  # a view -> (penultimate features or None, logits)


def logits_network(network: Any) -> tuple[Head | None, str]:
    """x -> the penultimate features (the input of the Dense layer that computes the logits; None where
    there is none) and the logits of the network's final softmax (its input, or for a Dense layer with a
    softmax activation its kernel and bias applied to the layer's input); or None and why they cannot be found."""
    last = network.layers[-1] if getattr(network, "layers", None) else None
    if last is None or not is_softmax(last):
        return None, f"its last layer ({type(last).__name__}) is not a softmax"
    try:
        module = importlib.import_module(type(network).__module__.split(".")[0])
        if hasattr(last, "kernel"):
            return dense_head(module.Model(network.inputs, last.input), last), ""
        dense = logits_dense(last.input)
        body = module.Model(network.inputs, last.input if dense is None else [dense.input, last.input])
    except Exception as error:  # noqa: BLE001 - revived SavedModels, nested models: fall back to log p
        return None, f"the input of its softmax cannot be reached ({short_reason(error, 80)})"

    def head(x: Any) -> tuple[Any, Any]:
        found = body(x, training=False)
        return (None, found) if dense is None else (found[0], found[1])

    return head, ""


def dense_head(body: Any, dense: Any) -> Head:
    """A Dense layer with a softmax activation: its input, and its kernel and bias applied to it."""
    from keras import ops

    kernel, bias = dense.kernel, dense.bias if getattr(dense, "use_bias", False) else None

    def head(x: Any) -> tuple[Any, Any]:
        features = body(x, training=False)
        z = ops.matmul(ops.cast(features, kernel.dtype), kernel)
        return features, z if bias is None else z + bias

    return head


def tta_views(x: Any, flip_tta: bool, translate_tta: bool) -> list[tuple[Any, float]]:
    """The views of a batch and their weights: the image and its mirror averaged with `flip_tta`; with
    `translate_tta`, also (with equal weight to those two) the mirrored pair shifted one pixel up-left and
    one down-right, as airbench evaluates."""
    from keras import ops

    def mirrored(view: Any, weight: float) -> list[tuple[Any, float]]:
        return [(view, weight / 2), (ops.flip(view, axis=2), weight / 2)] if flip_tta else [(view, weight)]

    if not translate_tta:
        return mirrored(x, 1.0)
    padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
    return mirrored(x, 0.5) + mirrored(padded[:, :-2, :-2], 0.25) + mirrored(padded[:, 2:, 2:], 0.25)


def tta_forward(network: Any, input_scaling: str, flip_tta: bool, translate_tta: bool) -> Callable[[Any], Any]:
    """uint8 images -> probabilities (the weighted mean over `tta_views`), written with `keras.ops` so it
    runs under any Keras backend."""
    from keras import ops

    scale, offset = INPUT_SCALINGS[input_scaling]

    def forward(images: Any) -> Any:
        x = images if input_scaling == "uint8" else ops.cast(images, "float32") * scale + offset
        views = tta_views(x, flip_tta, translate_tta)
        if len(views) == 1:
            return ops.cast(network(x, training=False), "float32")
        return sum(ops.cast(network(view, training=False), "float32") * weight for view, weight in views)

    return forward


def tta_logits_forward(network: Any, input_scaling: str, flip_tta: bool,
                       translate_tta: bool) -> tuple[Callable[[Any], Any], str]:
    """uint8 images -> (n, k + 1): the logits z and the penultimate features' L2 norm (the layout of
    contract.calibration's `outputs_dtype`), and why the logits are log p ("" when they are the network's).

    With test-time augmentation z = log(mean of the views' softmax) + mean of the views' logsumexp(logits)
    and the norm is the views' mean: softmax(z) is `tta_forward`'s probabilities, logsumexp(z) (the
    energy) the views' mean, and without views z is the logits themselves. A network whose logits cannot
    be found gives z = log p (logsumexp 0); one without penultimate features, a NaN norm.
    """
    from keras import ops

    scale, offset = INPUT_SCALINGS[input_scaling]
    head, why = logits_network(network)

    def view_outputs(view: Any) -> tuple[Any, Any]:
        if head is None:
            p = ops.cast(network(view, training=False), "float32")
            return ops.log(ops.maximum(p, 1e-12)), ops.full_like(p[:, :1], float("nan"))
        features, z = head(view)
        if features is None:
            return ops.cast(z, "float32"), ops.full_like(ops.cast(z[:, :1], "float32"), float("nan"))
        features = ops.cast(features, "float32")
        if len(features.shape) > 2:  # a Dense layer on feature maps
            features = ops.reshape(features, (ops.shape(features)[0], -1))
        return ops.cast(z, "float32"), ops.sqrt(ops.sum(ops.square(features), axis=-1, keepdims=True))

    def forward(images: Any) -> Any:
        x = images if input_scaling == "uint8" else ops.cast(images, "float32") * scale + offset
        views = tta_views(x, flip_tta, translate_tta)
        if len(views) == 1:
            return ops.concatenate(view_outputs(x), axis=-1)
        each = [view_outputs(view) for view, _ in views]
        log_mean = ops.logsumexp(ops.stack([ops.log_softmax(z, axis=-1) + float(np.log(weight))
                                            for (z, _), (_, weight) in zip(each, views)]), axis=0)
        energy = sum(ops.logsumexp(z, axis=-1, keepdims=True) * weight for (z, _), (_, weight) in zip(each, views))
        norm = sum(norm * weight for (_, norm), (_, weight) in zip(each, views))
        return ops.concatenate([log_mean + energy, norm], axis=-1)

    return forward, why


def compile_inference(network: Any, input_scaling: str, flip_tta: bool, translate_tta: bool = False) -> Predict:
    """The forward pass compiled once for the running Keras backend, uint8 (n, 32, 32, 3) in, probabilities
    out: a `tf.function` with a fixed signature on TensorFlow, `jax.jit` on JAX (batches padded to powers
    of two, so a few shapes are compiled, not one per batch size)."""
    return compile_forward(tta_forward(network, input_scaling, flip_tta, translate_tta))


def compile_logits(network: Any, input_scaling: str, flip_tta: bool, translate_tta: bool = False) -> tuple[Predict, str]:
    """`tta_logits_forward` compiled as `compile_inference` is: uint8 images -> one `outputs_dtype` row per
    image (logits, penultimate feature norm; contract.calibration), and why the logits are log p instead
    ("" when they are the network's)."""
    forward, why = tta_logits_forward(network, input_scaling, flip_tta, translate_tta)
    predict = compile_forward(forward)
    return lambda images: as_outputs(predict(images)), why


def compile_forward(forward: Callable[[Any], Any]) -> Predict:
    import keras

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
    """A compiled forward pass (probabilities, or `compile_logits` rows) over any number of images, in
    fixed-size model calls."""
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
    logits, missing = compile_logits(network, card.input_scaling, card.flip_tta, card.translate_tta)
    if missing:
        logger.warning("model '%s': no logits (%s); its out-of-distribution scores use log p", ref.tag, missing)
    return Predictor(tag=str(ref.tag), card=card, labels=dict(ref.info.labels),
                     path=Path(ref.path), creation_time=ref.info.creation_time, logits=logits, logits_missing=missing)
