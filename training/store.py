"""The BentoML model store: what training writes and serving reads, with one metadata schema."""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import bentoml
import numpy as np
from bentoml._internal.models.model import ModelStore  # a staging store for atomic saves

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
INPUT_SHAPE: list[int] = [32, 32, 3]
INPUT_DTYPE = "uint8"

# How a stored model file is loaded; "keras" files are Keras 3, the others come through tf-keras.
FORMAT_FILES: dict[str, str] = {
    "keras": "model.keras",
    "tf-keras-h5": "model.h5",
    "tf-keras-savedmodel": "saved_model",
}
# How the stored network expects its input; "uint8" means it scales inside itself.
INPUT_SCALINGS: dict[str, tuple[float, float]] = {
    "uint8": (1.0, 0.0),
    "0-1": (1 / 255.0, 0.0),
    "-1-1": (1 / 127.5, -1.0),
}


def framework_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "bentoml": bentoml.__version__,
        "numpy": np.__version__,
    }
    try:
        import tf_keras

        versions["tf_keras"] = tf_keras.__version__
    except ImportError:
        pass
    return versions


def without_none(value: Any) -> Any:
    """BentoML metadata accepts no None: an unset choice is simply left out."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_none(v) for v in value if v is not None]
    return value


def save_model(
    name: str,
    model_file: Path,
    model_format: str,
    metadata: dict[str, Any],
    labels: dict[str, str],
) -> str:
    """Copy a saved model file into a new store entry; returns its tag.

    The entry is built complete in a staging folder beside the store (same file system) and moved
    in with one rename, so a save that is interrupted at any point, even by SIGKILL, leaves either
    the whole model in the store or nothing.
    """
    target = FORMAT_FILES[model_format]
    full_metadata = without_none({
        "format": model_format,
        "model_file": target,
        "input_shape": INPUT_SHAPE,
        "input_dtype": INPUT_DTYPE,
        "framework_versions": framework_versions(),
        **metadata,
    })
    store_dir = model_store_dir()
    staging = staging_dir(store_dir)
    try:
        with bentoml.models.create(
            name, labels=labels, metadata=full_metadata, _model_store=ModelStore(staging)
        ) as ref:
            destination = Path(ref.path) / target
            if model_file.is_dir():
                shutil.copytree(model_file, destination)
            else:
                shutil.copyfile(model_file, destination)
        tag = ref.tag
        (store_dir / tag.name).mkdir(parents=True, exist_ok=True)
        os.rename(staging / tag.path(), store_dir / tag.path())
        latest = store_dir / tag.latest_path()
        latest.with_suffix(".tmp").write_text(str(tag.version))
        os.replace(latest.with_suffix(".tmp"), latest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(tag)


def model_store_dir() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def staging_dir(store_dir: Path) -> Path:
    """A fresh staging folder for this save; leftovers of killed saves are removed first."""
    root = store_dir.parent / "cifar-serve-staging"
    if root.is_dir():
        for leftover in root.iterdir():
            pid = leftover.name.split("-")[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
    folder = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Predictor:
    """A stored model ready for inference: uint8 (n, 32, 32, 3) in, class probabilities out."""

    tag: str
    metadata: dict[str, Any]
    labels: dict[str, str]
    predict: Callable[[np.ndarray], np.ndarray]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("class_names", CIFAR10_CLASSES))


def load_network(path: Path, model_format: str) -> Any:
    """Load a stored network file safely (no arbitrary code from the file)."""
    if model_format == "keras":
        import keras

        return keras.saving.load_model(path, compile=False, safe_mode=True)
    import tf_keras

    return tf_keras.models.load_model(path, compile=False, safe_mode=True)


def compile_inference(
    network: Any, input_scaling: str, flip_tta: bool, translate_tta: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """A traced inference function with a fixed uint8 signature: no per-call Python overhead.

    `flip_tta` averages the image and its mirror; `translate_tta` also averages (with equal weight to
    those two) the mirrored pair shifted one pixel up-left and one down-right, as airbench evaluates.
    """
    import tensorflow as tf

    scale, offset = INPUT_SCALINGS[input_scaling]

    def mirrored(x: tf.Tensor) -> tf.Tensor:
        probabilities = tf.cast(network(x, training=False), tf.float32)
        if flip_tta:
            flipped = tf.cast(network(tf.reverse(x, axis=[2]), training=False), tf.float32)
            probabilities = (probabilities + flipped) / 2.0
        return probabilities

    def forward(images: tf.Tensor) -> tf.Tensor:
        x = images if input_scaling == "uint8" else tf.cast(images, tf.float32) * scale + offset
        probabilities = mirrored(x)
        if translate_tta:
            padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
            shifted = (mirrored(padded[:, :-2, :-2]) + mirrored(padded[:, 2:, 2:])) / 2.0
            probabilities = (probabilities + shifted) / 2.0
        return probabilities

    traced = tf.function(
        forward,
        input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.uint8)],
        reduce_retracing=True,
    )

    def predict(images: np.ndarray) -> np.ndarray:
        return traced(tf.constant(images, dtype=tf.uint8)).numpy()

    return predict


def load_predictor(tag: str) -> Predictor:
    """Load `name:version` (or `name:latest`) from the store; raises bentoml's NotFound if absent."""
    ref = bentoml.models.get(tag)
    metadata = dict(ref.info.metadata)
    model_format = metadata.get("format", "keras")
    network = load_network(Path(ref.path) / FORMAT_FILES[model_format], model_format)
    predict = compile_inference(
        network,
        input_scaling=metadata.get("input_scaling", "uint8"),
        flip_tta=bool(metadata.get("flip_tta", False)),
        translate_tta=bool(metadata.get("translate_tta", False)),
    )
    return Predictor(tag=str(ref.tag), metadata=metadata, labels=dict(ref.info.labels), predict=predict)
