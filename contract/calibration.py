"""Temperature scaling and the out-of-distribution score: the one place the math lives (numpy only).

Everything here starts from what the predictor computes per image (contract/predictor.py's
`compile_logits`, `outputs_dtype` rows): the logits, the input of the network's final softmax combined
over the test-time augmentation views so that softmax(logits) is the served probabilities, and the L2
norm of the penultimate features. Temperature scaling is softmax(logits / T). For a network whose
logits cannot be found the predictor gives log p instead, the logits up to one constant per image,
which softmax ignores: temperature scaling and the probability scores are the same from either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from contract.card import Calibration, ScoreName

# Probabilities are clipped here before the log: float32 softmax outputs can be exactly 0.
TINY = 1e-12
ECE_BINS = 15


@cache
def outputs_dtype(classes: int) -> np.dtype:
    """What the predictor's `compile_logits` gives per image: the logits (log p where the network's cannot
    be found) and the L2 norm of the penultimate features (NaN where there are none); laid out as a
    float32 (n, classes + 1) array, which `as_outputs` views as these rows without a copy."""
    return np.dtype([("logits", np.float32, (classes,)), ("feature_norm", np.float32)])


def as_outputs(values: np.ndarray) -> np.ndarray:
    """A float32 (n, classes + 1) array (the logits, then the feature norm) -> `outputs_dtype` rows."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return values.view(outputs_dtype(values.shape[1] - 1))[:, 0]


def logits_of(outputs: np.ndarray) -> np.ndarray:
    """The logits of `outputs_dtype` rows, float64; a plain (n, classes) array is taken as the logits."""
    return np.asarray(outputs["logits"] if outputs.dtype.names else outputs, dtype=np.float64)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p, clipped: what stands in for the logits of a model that outputs only probabilities."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), TINY, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=1)
    return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return logits - logsumexp(logits)[:, None]


def calibrated(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """The predictor's outputs (or (n, k) logits) -> softmax(logits / T), float64: the calibrated probabilities."""
    return softmax(logits_of(outputs) / temperature)


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(n, k) output probabilities -> softmax(log(p) / T), float64: the same, from probabilities."""
    return calibrated(log_probabilities(probabilities), temperature)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, TINY, None))))


def confidence_bins(probabilities: np.ndarray, labels: np.ndarray,
                    bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin (i/bins, (i+1)/bins] of the top probability: the mean confidence, the accuracy
    (both NaN where the bin is empty) and the number of images."""
    confidence = np.max(probabilities, axis=1).astype(np.float64)
    correct = (np.argmax(probabilities, axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(which, confidence, bins) / counts, np.bincount(which, correct, bins) / counts, counts


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' sizes."""
    confidence, accuracy, counts = confidence_bins(probabilities, labels, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / max(counts.sum(), 1))


def fit_temperature(outputs: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature of least NLL, by golden-section search on 1/T (the NLL is convex in 1/T)."""
    logits = logits_of(outputs)
    labels = np.asarray(labels)

    def nll(inverse: float) -> float:
        scaled = logits * inverse
        return float(np.mean(logsumexp(scaled) - scaled[np.arange(len(labels)), labels]))

    a, b = 1.0 / high, 1.0 / low
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(2.0 / (a + b))


def max_probability(outputs: np.ndarray, temperature: float) -> np.ndarray:
    return calibrated(outputs, temperature).max(axis=1)


def margin(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """Top calibrated probability minus the second."""
    top_two = np.sort(calibrated(outputs, temperature), axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def neg_entropy(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """Minus the Shannon entropy of the calibrated probabilities."""
    probabilities = calibrated(outputs, temperature)
    return np.sum(probabilities * np.log(np.clip(probabilities, TINY, None)), axis=1)


def energy(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """The energy score T·logsumexp(z/T) with z = log p standing in for the logits (as stored before the
    predictor returned logits: kept so that those cards serve as they were fitted).

    With z = log p it equals (T - 1)·H(p), H the Rényi entropy of order 1/T: the per-image constant
    the softmax removed is exactly what gives energy its edge on logits. Divided by (T - 1) so that
    higher still means in distribution for any T; T = 1 is the Shannon limit.
    """
    log_p = log_softmax(logits_of(outputs))
    if abs(temperature - 1.0) < 1e-6:
        p = np.exp(log_p)
        return np.sum(p * log_p, axis=1)
    return -temperature * logsumexp(log_p / temperature) / (temperature - 1.0)


def logit_energy(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """The energy score proper, logsumexp of the logits (Liu et al. 2020, at their T = 1): how strongly
    the network responds to any class at all, which the softmax removes. The calibration temperature
    is not used (it is fitted for the probabilities, not for detection)."""
    return logsumexp(logits_of(outputs))


def feature_norm(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """The L2 norm of the penultimate features (the input of the layer that computes the logits), the
    test-time augmentation views' mean: how strongly the features the classes are read from respond at
    all. NaN where the network has none; the temperature is not used."""
    if not outputs.dtype.names:
        raise ValueError("feature_norm needs the predictor's outputs (contract.predictor.compile_logits), not logits")
    return np.asarray(outputs["feature_norm"], dtype=np.float64)


SCORES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "max_probability": max_probability,
    "margin": margin,
    "neg_entropy": neg_entropy,
    "energy": energy,
    "logit_energy": logit_energy,
    "feature_norm": feature_norm,
}


def score(outputs: np.ndarray, name: ScoreName | str, temperature: float) -> np.ndarray:
    """(n,) in-distribution scores (higher: more like the training data) from the predictor's outputs
    (`outputs_dtype` rows; all but `feature_norm` also from plain (n, k) logits)."""
    return SCORES[name](outputs, temperature)


def in_distribution_scores(outputs: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The card's score of each image, from the predictor's outputs."""
    return score(outputs, calibration.score, calibration.temperature)


def threshold_for_flag_rate(scores: np.ndarray, rate: float) -> float:
    """The threshold that flags (score < threshold) the share `rate` of these in-distribution scores.

    The smallest score above the lowest `rate` share: ties at the threshold stay in distribution.
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    count = int(np.floor(rate * len(ordered)))
    if count <= 0:
        return float(ordered[0]) if len(ordered) else 0.0
    return float(ordered[min(count, len(ordered) - 1)])


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    """The share of images flagged as out of distribution (score below the threshold)."""
    return float(np.mean(np.asarray(scores) < threshold)) if len(scores) else 0.0


@dataclass
class Calibrated:
    """What serving returns for a batch: calibrated probabilities and, when calibrated, the OOD flag."""

    probabilities: np.ndarray  # (n, k) float32
    scores: np.ndarray | None  # (n,) float32
    in_distribution: np.ndarray | None  # (n,) bool


def apply_calibration(outputs: np.ndarray, calibration: Calibration | None,
                      threshold: float | None = None) -> Calibrated:
    """The predictor's outputs for a batch -> calibrated probabilities, scores and flags; `threshold`
    overrides the card's. Without calibration, the softmax of the logits (the model's probabilities)."""
    if calibration is None:
        return Calibrated(softmax(logits_of(outputs)).astype(np.float32), None, None)
    probabilities = calibrated(outputs, calibration.temperature).astype(np.float32)
    scores = in_distribution_scores(outputs, calibration)
    limit = calibration.threshold if threshold is None else threshold
    return Calibrated(probabilities, scores.astype(np.float32), scores >= limit)


# --- in the service: the calibration applied once per model call -----------------------------------------

Predict = Callable[[np.ndarray], np.ndarray]


@cache
def rows_dtype(classes: int) -> np.dtype:
    """One served row per image: calibrated probabilities, score and flag. The micro-batcher splits a
    batch's output by rows and joins a large request's parts again with the plain slicing and
    `np.concatenate` it uses for any array, so the calibration runs once per batch, in the inference thread."""
    return np.dtype([("probabilities", np.float32, (classes,)), ("score", np.float32), ("in_distribution", np.bool_)])


def calibrated_predict(outputs: Predict, calibration: Calibration | None, threshold: float | None) -> Predict:
    """uint8 images -> one `rows_dtype` row per image, from the predictor's outputs (contract.predictor's
    `compile_logits`); `threshold` overrides the card's."""

    def forward(images: np.ndarray) -> np.ndarray:
        result = apply_calibration(outputs(images), calibration, threshold)
        rows = np.empty(len(images), rows_dtype(result.probabilities.shape[1]))
        rows["probabilities"] = result.probabilities
        if result.scores is not None:
            rows["score"], rows["in_distribution"] = result.scores, result.in_distribution
        return rows

    return forward


def unpacked(rows: np.ndarray, calibrated: bool) -> Calibrated:
    """Rows from `calibrated_predict` as a `Calibrated` (no scores or flags if uncalibrated)."""
    if not calibrated:
        return Calibrated(rows["probabilities"], None, None)
    return Calibrated(rows["probabilities"], rows["score"], rows["in_distribution"])
