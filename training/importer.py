"""Register a model trained elsewhere (Keras 3 `.keras`, Keras 2 `.h5` or SavedModel) in the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import report, store
from training.data import Dataset

SCALING_DESCRIPTIONS = {
    "uint8": "raw uint8 RGB; the model scales its input itself",
    "0-1": "uint8 RGB -> float / 255 (range [0, 1]), applied before the model",
    "-1-1": "uint8 RGB -> float / 127.5 - 1 (range [-1, 1]), applied before the model",
}


class ModelImportError(Exception):
    """A model file that cannot be registered; the message says why."""


@dataclass
class ImportResult:
    tag: str
    model_format: str
    input_scaling: str
    parameters: int
    metrics: dict[str, Any]


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "tf-keras-savedmodel"
        raise ModelImportError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    if path.suffix == ".keras":
        return "keras"
    if path.suffix in (".h5", ".hdf5"):
        return "tf-keras-h5"
    raise ModelImportError(f"unknown model format: {path.name} (expected .keras, .h5 or a SavedModel folder)")


def check_shapes(network: Any) -> None:
    input_shape = tuple(network.inputs[0].shape)[1:]
    output_shape = tuple(network.outputs[0].shape)[1:]
    if input_shape != (32, 32, 3):
        raise ModelImportError(f"the model takes inputs of shape {input_shape}, not 32x32x3 images")
    if output_shape != (10,):
        raise ModelImportError(f"the model gives outputs of shape {output_shape}, not 10 classes")


def scales_itself(network: Any) -> bool:
    """True when the model's first layers include a Rescaling (or it takes uint8 directly)."""
    if str(network.inputs[0].dtype).endswith("uint8"):
        return True
    return any(type(layer).__name__ == "Rescaling" for layer in network.layers[:3])


def guess_scaling(network: Any, data: Dataset | None) -> str:
    """The scaling under which the model does best on a test sample; 0-1 without data."""
    if scales_itself(network):
        return "uint8"
    if data is None:
        return "0-1"
    sample_x, sample_y = data.x_test[:1000], data.y_test[:1000]
    scores = {
        scaling: report.accuracy(store.compile_inference(network, scaling, False)(sample_x), sample_y)
        for scaling in ("0-1", "-1-1", "uint8")
    }
    return max(scores, key=scores.get)


def import_model(path: Path, name: str, input_scaling: str, data: Dataset | None) -> ImportResult:
    if not path.exists():
        raise ModelImportError(f"model file not found: {path}")
    model_format = detect_format(path)
    try:
        network = store.load_network(path, model_format)
    except Exception as error:  # any loader failure is the file's fault here
        raise ModelImportError(f"cannot load {path} as {model_format}: {str(error).splitlines()[0]}") from None
    check_shapes(network)
    scaling = guess_scaling(network, data) if input_scaling == "auto" else input_scaling
    metrics: dict[str, Any] = {}
    per_class: dict[str, Any] = {}
    class_names = store.CIFAR10_CLASSES
    if data is not None:
        predict = store.compile_inference(network, scaling, False)
        probabilities = np.concatenate([predict(data.x_test[i : i + 1024]) for i in range(0, len(data.x_test), 1024)])
        evaluation = report.evaluation_report(probabilities, data.y_test, data.class_names)
        metrics = {"test_accuracy": evaluation["accuracy"], "test_loss": evaluation["loss"]}
        per_class = evaluation["per_class"]
        class_names = data.class_names
    metadata = {
        "class_names": class_names,
        "architecture": f"imported:{network.name}",
        "parameters": int(network.count_params()),
        "preprocessing": SCALING_DESCRIPTIONS[scaling],
        "input_scaling": scaling,
        "flip_tta": False,
        "translate_tta": False,
        "config": {"imported_from": str(path.resolve()), "format": model_format},
        "metrics": metrics,
        "per_class": per_class,
        "data": {"source": data.source, **data.sizes()} if data is not None else {},
    }
    labels = {"architecture": "imported", "optimizer": "unknown", "framework": model_format}
    tag = store.save_model(name, path, model_format, metadata, labels)
    return ImportResult(tag, model_format, scaling, metadata["parameters"], metrics)
