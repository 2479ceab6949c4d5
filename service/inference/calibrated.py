"""The served model's forward pass with its card's calibration applied, once per model call.

The micro-batcher splits a batch's output by rows and joins a large request's parts again; a numpy
structured array (calibrated probabilities, score, flag per row) lets it do both with the plain slicing
and `np.concatenate` it uses for probabilities, so the calibration runs once per batch in the inference
thread instead of once per request on the event loop. `contract.calibration` holds the math.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from contract.calibration import Calibrated, apply_calibration
from contract.card import Calibration

Predict = Callable[[np.ndarray], np.ndarray]


def rows_dtype(classes: int) -> np.dtype:
    return np.dtype([("probabilities", np.float32, (classes,)), ("score", np.float32), ("in_distribution", np.bool_)])


def calibrated_predict(predict: Predict, calibration: Calibration | None, threshold: float | None) -> Predict:
    """uint8 images -> one structured row per image (see `rows_dtype`); `threshold` overrides the card's."""

    def forward(images: np.ndarray) -> np.ndarray:
        result = apply_calibration(predict(images), calibration, threshold)
        rows = np.empty(len(images), rows_dtype(result.probabilities.shape[1]))
        rows["probabilities"] = result.probabilities
        if result.scores is not None:
            rows["score"], rows["in_distribution"] = result.scores, result.in_distribution
        return rows

    return forward


def unpacked(rows: np.ndarray, calibrated: bool) -> Calibrated:
    """Rows from `calibrated_predict` as the contract's `Calibrated` (no scores or flags if uncalibrated)."""
    if not calibrated:
        return Calibrated(rows["probabilities"], None, None)
    return Calibrated(rows["probabilities"], rows["score"], rows["in_distribution"])
