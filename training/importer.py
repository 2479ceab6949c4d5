"""Register a model trained elsewhere (Keras 3 `.keras`, Keras 2 `.h5` or SavedModel) in the store.

The file (or SavedModel folder) is copied once into a private folder, and only that copy is scanned
and loaded. Legacy files are scanned for code first (training.model_safety) and refused if any is found,
unless the user trusts them; clean ones are rebuilt from their Keras config with only their variables
read (no graph or code from the file runs), then converted to Keras 3 `.keras` so the service loads
them in safe mode.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.card import CIFAR10_CLASSES, INPUT_SCALINGS, Calibration, DataInfo, Metrics, ModelCard, ScoreName
from contract.predictor import compile_inference, compile_logits, load_network, short_reason
from training import calibration, model_safety, report, store
from training.config import OOD_FLAG_RATE, OOD_SCORE
from training.data import Dataset

SCALING_DESCRIPTIONS = {
    "uint8": "raw uint8 RGB; the model scales its input itself",
    "0-1": "uint8 RGB -> float / 255 (range [0, 1]), applied before the model",
    "-1-1": "uint8 RGB -> float / 127.5 - 1 (range [-1, 1]), applied before the model",
}


# Converted models must give the original's probabilities to within this (float32 rounding is ~1e-7).
CONVERSION_TOLERANCE = 1e-4
# A SavedModel is a few folders deep (variables/, assets/); deeper trees are not model files.
MAX_FOLDER_DEPTH = 16


class ModelImportError(Exception):
    """A model file that cannot be registered; the message says why."""


@dataclass
class ImportResult:
    tag: str
    model_format: str  # the file's own format
    input_scaling: str
    parameters: int
    metrics: Metrics
    stored_format: str = ""  # "keras" when converted
    converted: bool = False
    code_found: list[str] = field(default_factory=list)  # imported anyway with --trust-model-code
    calibration: Calibration | None = None


@dataclass
class StoredModel:
    """What goes into the store: the file or folder, its format, the loaded network, facts for the card."""

    file: Path
    model_format: str
    network: Any
    config: dict[str, Any]


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
    """CIFAR-10 shapes in and out; a model with no defined input (a Sequential without one) is refused too."""
    try:
        input_shape = tuple(network.inputs[0].shape)[1:]
        output_shape = tuple(network.outputs[0].shape)[1:]
    except (AttributeError, TypeError, IndexError):
        raise ModelImportError("the model has no defined input and output (no Input layer?)") from None
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
        scaling: report.accuracy(compile_inference(network, scaling, False)(sample_x), sample_y)
        for scaling in ("0-1", "-1-1", "uint8")
    }
    return max(scores, key=scores.get)


def import_model(
    path: Path,
    name: str,
    input_scaling: str,
    data: Dataset | None,
    trust_model_code: bool = False,
    warn: Callable[[str], None] = lambda message: None,
    ood: tuple[float, ScoreName] = (OOD_FLAG_RATE, OOD_SCORE),
) -> ImportResult:
    """Copy, scan, load, check, convert where it is safe, evaluate and calibrate what is stored (`ood`: the
    share of held-out images the out-of-distribution threshold flags, and its score), and store it."""
    if not path.exists():
        raise ModelImportError(f"model file not found: {path}")
    model_format = detect_format(path)
    with tempfile.TemporaryDirectory(prefix="cifar-import-") as workdir:  # 0700, removed on any exit
        source = private_copy(path, Path(workdir) / "original", model_format)
        findings = model_safety.scan_model(source, model_format)  # before anything in the file is deserialized
        if findings and not trust_model_code:
            raise ModelImportError(model_safety.refusal(path, findings))
        if findings:
            warn(model_safety.printable(f"{path.name} holds code ({', '.join(findings)}); importing it anyway "
                                        f"(--trust-model-code): it stays {model_format}, and the service serves "
                                        "it only with CIFAR10_TRUST_MODEL_CODE=1", limit=2000))
        network = load_checked(source, model_format, bool(findings), path)
        scaling = guess_scaling(network, data) if input_scaling == "auto" else input_scaling
        stored = StoredModel(source, model_format, network, {})
        if model_format != "keras" and not findings:
            stored = convert_or_keep(stored, scaling, data, Path(workdir), warn)
        evaluation = evaluate(stored, scaling, data) if data is not None else None
        card = make_card(path, model_format, stored, scaling, data, evaluation, findings)
        plots = confusion_plot(evaluation, card, Path(workdir)) if evaluation is not None else []
        if evaluation is not None:
            card.calibration, plot = calibration.calibrate_import(
                evaluation["served"], *ood, Path(workdir), card.architecture, warn)
            plots.append(plot)
        labels = {"architecture": "imported", "optimizer": "unknown", "framework": stored.model_format}
        tag = store.save_model(name, stored.file, card, labels, extra_files=plots)
    return ImportResult(tag, model_format, scaling, card.parameters, card.metrics, stored.model_format,
                        stored.config.get("converted_from") is not None, findings, card.calibration)


# --- one private copy of the bytes ----------------------------------------------------------------


def private_copy(path: Path, folder: Path, model_format: str) -> Path:
    """Copy the file or SavedModel folder once into a private folder: the scan and the loader read only
    this copy, so the original cannot be swapped between them. Links inside a folder are refused."""
    folder.mkdir(mode=0o700)
    target = folder / path.name
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the path the user named may be a link
        try:
            copy_entry(descriptor, target, path.name, 0)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise ModelImportError(f"cannot copy {model_safety.printable(path.name)}: {error.strerror}") from None
    if detect_format(target) != model_format:
        raise ModelImportError(f"{model_safety.printable(path.name)} changed while it was copied; import refused")
    return target


def copy_entry(descriptor: int, target: Path, shown: str, depth: int) -> None:
    """Copy an open file or folder to `target`; a FIFO, device or socket is no model file, and a file in a
    folder with a second name (a hard link) could feed another file's bytes into the weights."""
    info = os.fstat(descriptor)
    mode = info.st_mode
    if stat.S_ISREG(mode) and depth > 0 and info.st_nlink > 1:
        raise ModelImportError(f"{model_safety.printable(shown)} is a hard link to a file elsewhere; import refused")
    if stat.S_ISREG(mode):
        with os.fdopen(descriptor, "rb", closefd=False) as source, open(target, "xb") as copy:
            shutil.copyfileobj(source, copy, 1 << 20)
    elif stat.S_ISDIR(mode) and depth < MAX_FOLDER_DEPTH:
        target.mkdir(mode=0o700)
        copy_folder(descriptor, target, shown, depth + 1)
    else:
        raise ModelImportError(f"{model_safety.printable(shown)} is not a plain file or folder (or is nested "
                               f"too deep); import refused")


def copy_folder(folder: int, target: Path, shown: str, depth: int) -> None:
    """Copy a folder's entries through its descriptor, never following a link (O_NOFOLLOW at every step)."""
    for name in sorted(os.listdir(folder)):
        if stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
            raise ModelImportError(f"{model_safety.printable(f'{shown}/{name}')} is a symbolic link; import refused")
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        try:
            copy_entry(descriptor, target / name, f"{shown}/{name}", depth)
        finally:
            os.close(descriptor)


# --- loading --------------------------------------------------------------------------------------


def load_checked(path: Path, model_format: str, trusted: bool, original: Path) -> Any:
    """The network, with CIFAR-10 shapes: a trusted legacy file as its own format loads it, a clean one
    rebuilt from its config; any failure is the file's fault."""
    try:
        if model_format == "keras" or trusted:
            network = load_network(path, model_format)
        else:
            network = rebuild_legacy(path, model_format)
    except ModelImportError:
        raise
    except Exception as error:  # noqa: BLE001 - any loader failure is the file's fault here
        reason = model_safety.printable(short_reason(error))
        raise ModelImportError(f"cannot load {original} as {model_format}: {reason}") from None
    check_shapes(network)
    return network


def rebuild_legacy(path: Path, model_format: str) -> Any:
    """A clean legacy model rebuilt from its Keras config (built-in classes only, scanned) with only its
    variables read: tf-keras would revive a SavedModel from its graphs, and those must never run."""
    if model_format == "tf-keras-h5":
        return rebuild_h5(path)
    return rebuild_savedmodel(path)


def rebuild_h5(path: Path) -> Any:
    """`model_config` -> a new tf-keras model, then the weights from `model_weights` (HDF5 checked by the scan)."""
    import h5py
    from tf_keras.src.saving.legacy import hdf5_format

    with h5py.File(path, "r") as file:
        text = model_safety.model_config_text(file)
        if text is None:
            raise ModelImportError(f"{model_safety.printable(path.name)} holds weights only, no model config")
        network = from_keras_config(text)
        hdf5_format.load_weights_from_hdf5_group(file["model_weights"] if "model_weights" in file else file, network)
    return network


def rebuild_savedmodel(folder: Path) -> Any:
    """The root node's config from keras_metadata.pb -> a new tf-keras model, then its variables restored
    from variables/ by a checkpoint read, which reads tensors and runs none of the SavedModel's functions."""
    import tensorflow as tf

    if not (folder / "keras_metadata.pb").is_file():
        raise ModelImportError(f"{model_safety.printable(folder.name)} has no Keras config (keras_metadata.pb), "
                               "only graphs: it is no tf-keras model; import refused")
    root = next((node for node in model_safety.keras_metadata(folder).nodes if node.node_path == "root"), None)
    if root is None:
        raise ModelImportError(f"{model_safety.printable(folder.name)} has no root model in keras_metadata.pb")
    network = from_keras_config(root.metadata)
    status = tf.train.Checkpoint(root=network).read(str(folder / "variables" / "variables"))
    status.assert_existing_objects_matched()  # every variable of the model came from the file
    status.expect_partial()  # an optimizer's slots and the like are not needed
    return network


def from_keras_config(text: str) -> Any:
    """A tf-keras model from a JSON `{"class_name", "config"}` (the format tf-keras itself decodes), in safe mode."""
    from tf_keras.src.saving.legacy import model_config
    from tf_keras.src.saving.legacy.saved_model import json_utils
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    decoded = json_utils.decode(text)
    with SafeModeScope(True):
        return model_config.model_from_config({"class_name": decoded["class_name"], "config": decoded["config"]})


def convert_or_keep(stored: StoredModel, scaling: str, data: Dataset | None, workdir: Path,
                    warn: Callable[[str], None]) -> StoredModel:
    """A Keras 3 copy of a clean legacy model (served in safe mode), or the legacy model with the reason."""
    images = data.x_test if data is not None else np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), np.uint8)
    try:
        converted, target = convert_to_keras3(stored.network, workdir)
        gap = check_same_predictions(stored.network, converted, scaling, images)
    except Exception as error:  # noqa: BLE001 - Keras 3 cannot rebuild every tf-keras model
        reason = short_reason(error)
        warn(f"{stored.file.name} could not be converted to a Keras 3 .keras file ({reason}); it is stored as "
             f"{stored.model_format}, and the service serves it only with CIFAR10_TRUST_MODEL_CODE=1")
        return StoredModel(stored.file, stored.model_format, stored.network, {"conversion_error": reason})
    facts = {
        "converted_from": stored.model_format,
        "conversion_check": f"same predictions on {len(images)} images (max difference {gap:.1e})",
    }
    return StoredModel(target, "keras", converted, facts)


def convert_to_keras3(network: Any, workdir: Path) -> tuple[Any, Path]:
    """tf-keras HDF5 -> Keras 3 `.keras`; only for models the scan found clean, so no code is in the config."""
    import keras

    legacy = workdir / "legacy.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras warns that HDF5 is a legacy format: that is the point
        network.save(legacy)
        rebuilt = keras.saving.load_model(legacy, compile=False, safe_mode=True)
    target = workdir / "model.keras"
    rebuilt.save(target)
    return keras.saving.load_model(target, compile=False, safe_mode=True), target


def check_same_predictions(original: Any, converted: Any, scaling: str, images: np.ndarray) -> float:
    """The largest probability difference; raises unless it is within tolerance and the top class agrees
    (wherever the original's top two classes are not a near tie)."""
    expected, actual = probabilities(original, scaling, images), probabilities(converted, scaling, images)
    gap = float(np.abs(expected - actual).max())
    top_two = np.sort(expected, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > CONVERSION_TOLERANCE
    if gap > CONVERSION_TOLERANCE or (expected.argmax(1) != actual.argmax(1))[clear].any():
        raise ValueError(f"the converted model predicts differently (max probability difference {gap:.1e})")
    return gap


def probabilities(network: Any, scaling: str, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Plain eager calls with the card's input scaling (no traced function: nothing to retrace per network)."""
    scale, offset = INPUT_SCALINGS[scaling]
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        x = batch if scaling == "uint8" else batch.astype(np.float32) * np.float32(scale) + np.float32(offset)
        outputs.append(np.asarray(network(x, training=False), dtype=np.float32))
    return np.concatenate(outputs)


def evaluate(stored: StoredModel, scaling: str, data: Dataset) -> dict[str, Any]:
    """Test metrics of the stored network (the one the service will run), as the service computes them,
    and its served predictions (with its logits and feature norm where they can be found)."""
    predict, missing = compile_logits(stored.network, scaling, False)
    served = calibration.Predictions.served(predict, data.x_test, data.y_test, missing)
    return {**report.evaluation_report(served.probabilities, data.y_test, data.class_names),
            "class_names": data.class_names, "served": served}


def confusion_plot(evaluation: dict[str, Any], card: ModelCard, workdir: Path) -> list[Path]:
    """The test confusion matrix as a PNG, stored with the model like a training run's plots."""
    path = workdir / "confusion_matrix.png"
    title = f"{card.architecture}: test accuracy {evaluation['accuracy']:.2%}"
    report.plot_confusion_matrix(np.array(evaluation["confusion_matrix"]), evaluation["class_names"], path, title)
    return [path]


def make_card(path: Path, source_format: str, stored: StoredModel, scaling: str, data: Dataset | None,
              evaluation: dict[str, Any] | None, findings: list[str]) -> ModelCard:
    """The card of what is stored, with the test metrics of the stored network where there is data."""
    metrics, per_class, class_names = Metrics(), {}, CIFAR10_CLASSES
    if evaluation is not None:
        metrics = Metrics(test_accuracy=evaluation["accuracy"], test_loss=evaluation["loss"])
        per_class, class_names = evaluation["per_class"], evaluation["class_names"]
    config: dict[str, Any] = {"imported_from": str(path.resolve()), "format": source_format, **stored.config}
    if findings:
        config["code_found"] = findings
    return ModelCard(
        format=stored.model_format,
        class_names=class_names,
        architecture=f"imported:{stored.network.name}",
        parameters=int(stored.network.count_params()),
        preprocessing=SCALING_DESCRIPTIONS[scaling],
        input_scaling=scaling,
        config=config,
        metrics=metrics,
        per_class=per_class,
        data=DataInfo(source=data.source, **data.sizes()) if data is not None else None,
        trusted_code=bool(findings),
    )
