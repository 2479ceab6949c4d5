"""Temperature scaling and the out-of-distribution score: the one place the math lives (numpy only).

Every stored model outputs probabilities (after test-time augmentation), never logits. Since
log p = logits - logsumexp(logits), log p are the logits up to one constant per image, which softmax
ignores: softmax(log(p) / T) is exactly temperature scaling, for every stored model and format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from contract.card import Calibration, ScoreName

# Probabilities are clipped here before the log: float32 softmax outputs can be exactly 0.
TINY = 1e-12
ECE_BINS = 15


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), TINY, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=1)
    return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(n, k) output probabilities -> softmax(log(p) / T), float64."""
    return softmax(log_probabilities(probabilities) / temperature)


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


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature of least NLL, by golden-section search on 1/T (the NLL is convex in 1/T)."""
    log_p = log_probabilities(probabilities)
    labels = np.asarray(labels)

    def nll(inverse: float) -> float:
        scaled = log_p * inverse
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


def max_probability(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    return calibrate(probabilities, temperature).max(axis=1)


def margin(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Top calibrated probability minus the second."""
    top_two = np.sort(calibrate(probabilities, temperature), axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def neg_entropy(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Minus the Shannon entropy of the calibrated probabilities."""
    calibrated = calibrate(probabilities, temperature)
    return np.sum(calibrated * np.log(np.clip(calibrated, TINY, None)), axis=1)


def energy(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The energy score T·logsumexp(z/T), with z = log p standing in for the logits.

    With z = log p it equals (T - 1)·H(p), H the Rényi entropy of order 1/T: the per-image constant
    the softmax removed is exactly what gives energy its edge on logits. Divided by (T - 1) so that
    higher still means in distribution for any T; T = 1 is the Shannon limit.
    """
    log_p = log_probabilities(probabilities)
    if abs(temperature - 1.0) < 1e-6:
        p = np.exp(log_p)
        return np.sum(p * log_p, axis=1)
    return -temperature * logsumexp(log_p / temperature) / (temperature - 1.0)


SCORES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "max_probability": max_probability,
    "margin": margin,
    "neg_entropy": neg_entropy,
    "energy": energy,
}


def score(probabilities: np.ndarray, name: ScoreName | str, temperature: float) -> np.ndarray:
    """(n,) in-distribution scores (higher: more like the training data) from raw output probabilities."""
    return SCORES[name](probabilities, temperature)


def in_distribution_scores(probabilities: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The card's score of each image, from the model's raw output probabilities."""
    return score(probabilities, calibration.score, calibration.temperature)


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


def apply_calibration(probabilities: np.ndarray, calibration: Calibration | None,
                      threshold: float | None = None) -> Calibrated:
    """A predictor's batch output -> calibrated probabilities, scores and flags; `threshold` overrides
    the card's. Without calibration the probabilities pass through unchanged."""
    if calibration is None:
        return Calibrated(np.asarray(probabilities, dtype=np.float32), None, None)
    calibrated = calibrate(probabilities, calibration.temperature).astype(np.float32)
    scores = in_distribution_scores(probabilities, calibration)
    limit = calibration.threshold if threshold is None else threshold
    return Calibrated(calibrated, scores.astype(np.float32), scores >= limit)
