"""`train-cifar calibrate`: a stored model calibrated again (another flag rate or score, or an entry stored
before calibration existed), saved as a new version of its entry with the same files and a new card.

A model trained here is calibrated on its own validation split, rebuilt from its card's config (data
source, split and seed): `--data` must be the source it was trained on. An imported model, whose
training data is unknown, is calibrated on half of the test images, as `train-cifar import` does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from contract.card import SCHEMA_VERSION, Calibration, ModelCard, ScoreName
from contract.predictor import Predictor, load_predictor
from training import calibration, store
from training.data import Dataset, load_dataset


def held_out_and_test(predictor: Predictor, data: str) -> tuple[Dataset, bool]:
    """The data set split as the model's own run split it, and whether its validation split is usable."""
    config = predictor.card.config
    trained_here = bool(config.get("validation_split")) and "seed" in config
    if trained_here:
        return load_dataset(data, config["validation_split"], config["seed"], config.get("limit"), cache=True), True
    return load_dataset(data, 0.0, 0, None, cache=True), False


def recalibrate(tag: str, data: str, flag_rate: float, score: ScoreName, trust_model_code: bool = False,
                warn: Callable[[str], None] = print) -> tuple[str, Calibration]:
    """Fit the calibration of the stored model `tag` again and store it as a new version; returns the new tag."""
    predictor = load_predictor(tag, trust_model_code=trust_model_code)
    dataset, trained_here = held_out_and_test(predictor, data)
    test = served(predictor, dataset.x_test, dataset.y_test)
    title = f"{predictor.card.architecture} ({predictor.tag})"
    with tempfile.TemporaryDirectory(prefix="cifar-calibrate-") as workdir:
        if trained_here:
            held_out = served(predictor, dataset.x_val, dataset.y_val)
            fitted = calibration.fit_calibration(held_out, test, flag_rate, score, warn)
            plot = calibration.reliability_plot(Path(workdir), fitted, test, held_out, title)
        else:
            fitted, plot = calibration.calibrate_import(test, flag_rate, score, Path(workdir), title, warn)
        new_tag = store_again(predictor, predictor.card.model_copy(update={"calibration": fitted, "schema_version": SCHEMA_VERSION}), plot)
    return new_tag, fitted


def served(predictor: Predictor, images: np.ndarray, labels: np.ndarray) -> calibration.Predictions:
    """The predictor's outputs (logits, feature norm) of these images, as the service computes them."""
    return calibration.Predictions.served(predictor.logits, images, labels, predictor.logits_missing)


def store_again(predictor: Predictor, card: ModelCard, reliability: Path) -> str:
    """The entry's model file and plots (the new diagram in place of an old one) under a new version."""
    plots = [predictor.path / name for name in card.plots if name != reliability.name] + [reliability]
    name = predictor.tag.split(":")[0]
    return store.save_model(name, predictor.path / card.model_file, card, predictor.labels, extra_files=plots)
