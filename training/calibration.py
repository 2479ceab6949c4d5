"""The calibration step of training and import: one temperature and the out-of-distribution threshold,
fitted on held-out images, measured on the test split, and drawn as a reliability diagram.

The math is contract/calibration.py's (the service applies the same functions); this module only
decides which images each number is fitted or measured on, and writes the figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from contract import calibration as cal  # noqa: E402
from contract.card import RELIABILITY_PLOT, Calibration, CalibrationTest, ScoreName  # noqa: E402
from contract.predictor import Predict, batched  # noqa: E402
from training.report import save_figure  # noqa: E402


# Scores that need more than the probabilities, and what stands in where the network lacks it: logits
# (from log p, logsumexp is 0) or penultimate features.
NEEDS_LOGITS: frozenset[str] = frozenset({"logit_energy", "feature_norm"})
FALLBACK: dict[str, ScoreName] = {"feature_norm": "logit_energy", "logit_energy": "energy"}


@dataclass(frozen=True)
class Predictions:
    """A model's output probabilities as served (after test-time augmentation), the true labels, and the
    predictor's outputs where they are known (contract.predictor's `compile_logits`: logits and feature
    norm; None: only the probabilities)."""

    probabilities: np.ndarray
    labels: np.ndarray
    outputs: np.ndarray | None = None

    @classmethod
    def from_outputs(cls, outputs: np.ndarray, labels: np.ndarray, logits_missing: str = "") -> Predictions:
        """From `compile_logits`: its reason `logits_missing` says the logits are log p."""
        return cls(cal.softmax(cal.logits_of(outputs)), labels, None if logits_missing else outputs)

    @classmethod
    def served(cls, predict: Predict, images: np.ndarray, labels: np.ndarray, logits_missing: str = "") -> Predictions:
        """`predict` (a compiled `compile_logits`) over `images` in fixed-size batches, as the service runs it."""
        return cls.from_outputs(batched(predict, images), labels, logits_missing)

    @property
    def scored(self) -> np.ndarray:
        """What the temperature and the scores are computed from: the outputs, or log p in their place."""
        return self.outputs if self.outputs is not None else cal.log_probabilities(self.probabilities)

    def lacks(self, score: str) -> str:
        """Why `score` cannot be computed from these predictions ("" if it can)."""
        if score in NEEDS_LOGITS and self.outputs is None:
            return "no logits, only probabilities"
        if score == "feature_norm" and (self.outputs is None or np.isnan(self.outputs["feature_norm"]).any()):
            return "no penultimate features"
        return ""


@dataclass(frozen=True)
class Fitted:
    """The card's calibration, and the seconds the whole step took (the held-out forward pass included)."""

    calibration: Calibration
    seconds: float


def usable_score(score: ScoreName, held_out: Predictions, warn: Callable[[str], None]) -> ScoreName:
    """`score`, or the first of its `FALLBACK` scores the predictions allow (with a warning)."""
    chosen = score
    while held_out.lacks(chosen):
        why, chosen = held_out.lacks(chosen), FALLBACK[chosen]
        warn(f"{why}: out-of-distribution score {chosen} instead of {score}")
    return chosen


def fit_calibration(held_out: Predictions, test: Predictions | None, flag_rate: float, score: ScoreName,
                    warn: Callable[[str], None] = warnings.warn) -> Calibration:
    """The temperature of least NLL on `held_out`, the threshold that flags `flag_rate` of it, and
    (with test predictions) ECE and NLL before and after and the test flag rate at that threshold.
    A score that needs what the predictions lack falls back (`usable_score`, and `warn`s)."""
    score = usable_score(score, held_out, warn)
    temperature = cal.fit_temperature(held_out.scored, held_out.labels)
    scores = cal.score(held_out.scored, score, temperature)
    threshold = cal.threshold_for_flag_rate(scores, flag_rate)
    measured = measure(test, temperature, score, threshold) if test is not None and len(test.labels) else None
    return Calibration(temperature=temperature, score=score, threshold=threshold, flag_rate=flag_rate,
                       val_flag_rate=cal.flag_rate(scores, threshold), val_size=len(held_out.labels), test=measured)


def measure(test: Predictions, temperature: float, score: ScoreName, threshold: float) -> CalibrationTest:
    """How calibrated the test predictions are before and after the temperature, and how many are flagged."""
    before, after = test.probabilities, cal.calibrated(test.scored, temperature)
    return CalibrationTest(
        ece_before=cal.expected_calibration_error(before, test.labels),
        ece_after=cal.expected_calibration_error(after, test.labels),
        nll_before=cal.negative_log_likelihood(before, test.labels),
        nll_after=cal.negative_log_likelihood(after, test.labels),
        flag_rate=cal.flag_rate(cal.score(test.scored, score, temperature), threshold),
        size=len(test.labels),
    )


def split_for_import(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An imported model's training data is unknown, so only the test images are surely held out: a
    shuffled half of every class fits the calibration, the other half measures it."""
    rng = np.random.default_rng(seed)
    fit_part: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fit_part.append(members[: len(members) // 2])
    chosen = np.zeros(len(labels), dtype=bool)
    chosen[np.concatenate(fit_part)] = True
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def plot_reliability(predictions: Predictions, temperature: float, path: Path, title: str) -> None:
    """Accuracy against confidence before and after the temperature (the diagonal is perfect calibration),
    with how many images fall in each bin."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    edges = np.linspace(0, 1, cal.ECE_BINS + 1)
    after = cal.calibrated(predictions.scored, temperature)
    for ax, probabilities, name in ((axes[0], predictions.probabilities, "before"),
                                    (axes[1], after, f"after (temperature {temperature:.3f})")):
        _, accuracy, counts = cal.confidence_bins(probabilities, predictions.labels)
        ece = cal.expected_calibration_error(probabilities, predictions.labels)
        ax.bar(edges[:-1], np.nan_to_num(accuracy), width=1 / cal.ECE_BINS, align="edge", edgecolor="black",
               alpha=0.75, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.stairs(counts / max(counts.sum(), 1), edges, color="tab:orange", linewidth=2, label="share of images")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{name}: ECE {ece:.2%}")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy / share of images")
    fig.suptitle(title)
    save_figure(fig, path)


def reliability_plot(folder: Path, calibration: Calibration, test: Predictions | None, held_out: Predictions,
                     title: str) -> Path:
    """reliability.png in `folder`, on the test predictions where there are any, else the held-out ones."""
    shown, where = (test, "test") if test is not None and len(test.labels) else (held_out, "validation")
    path = folder / RELIABILITY_PLOT
    plot_reliability(shown, calibration.temperature, path, f"{title}: reliability on {len(shown.labels)} {where} images")
    return path


def calibrate_import(predictions: Predictions, flag_rate: float, score: ScoreName, folder: Path, title: str,
                     warn: Callable[[str], None] = warnings.warn) -> tuple[Calibration, Path]:
    """An imported model's calibration: fitted on one half of the test images, measured on the other."""
    fit_part, measure_part = split_for_import(predictions.labels)
    held_out, test = (Predictions(predictions.probabilities[part], predictions.labels[part],
                                  None if predictions.outputs is None else predictions.outputs[part])
                      for part in (fit_part, measure_part))
    fitted = fit_calibration(held_out, test, flag_rate, score, warn)
    return fitted, reliability_plot(folder, fitted, test, held_out, title)
