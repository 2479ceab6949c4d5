"""Calibration and the out-of-distribution threshold: the math of contract/calibration.py, the card's
schema, and the training-side step (training/calibration.py), on predictors whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from contract import calibration as cal
from contract.card import SCHEMA_VERSION, Calibration, ModelCard
from training.calibration import Predictions, fit_calibration, plot_reliability, split_for_import


def sampled(count: int, sharpen: float, seed: int) -> Predictions:
    """A predictor that is calibrated before `sharpen`: labels are drawn from softmax(z), and it outputs
    softmax(sharpen * z); sharpen > 1 makes it over-confident, exactly by temperature `sharpen`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (count, 10))
    logits[np.arange(count), rng.integers(0, 10, count)] += 3.0  # a clear favourite, as a trained model has
    truth = cal.softmax(logits)
    labels = (truth.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return Predictions(cal.softmax(sharpen * logits).astype(np.float32), labels)


def test_temperature_fitting_lowers_ece_on_an_over_confident_model() -> None:
    validation, test = sampled(20_000, 3.0, seed=1), sampled(20_000, 3.0, seed=2)
    temperature = cal.fit_temperature(validation.probabilities, validation.labels)
    assert temperature == pytest.approx(3.0, rel=0.05)  # the sharpening it undoes
    before = cal.expected_calibration_error(test.probabilities, test.labels)
    after = cal.expected_calibration_error(cal.calibrate(test.probabilities, temperature), test.labels)
    assert before > 0.10 and after < 0.02, (before, after)  # 15-bin ECE of 20,000 samples: ~0.5% noise
    nll_after = cal.negative_log_likelihood(cal.calibrate(test.probabilities, temperature), test.labels)
    assert nll_after < cal.negative_log_likelihood(test.probabilities, test.labels)


def test_an_under_confident_model_gets_a_temperature_below_one() -> None:
    validation = sampled(4000, 0.5, seed=3)
    assert cal.fit_temperature(validation.probabilities, validation.labels) == pytest.approx(0.5, rel=0.05)


def test_a_calibrated_model_keeps_temperature_one_and_its_ece() -> None:
    validation, test = sampled(20_000, 1.0, seed=4), sampled(20_000, 1.0, seed=5)
    temperature = cal.fit_temperature(validation.probabilities, validation.labels)
    assert temperature == pytest.approx(1.0, abs=0.05)
    assert cal.expected_calibration_error(cal.calibrate(test.probabilities, temperature), test.labels) < 0.02


def test_expected_calibration_error_by_hand() -> None:
    """Two bins used: confidence 0.95 right 1 of 2 times, confidence 0.55 right 2 of 2: (2*0.45 + 2*0.45) / 4."""
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 1])
    assert cal.expected_calibration_error(probabilities, labels) == pytest.approx(0.45)
    confidence, accuracy, counts = cal.confidence_bins(probabilities, labels)
    assert counts.sum() == 4 and counts[14] == 2 and counts[8] == 2  # (14/15, 1] and (8/15, 9/15]
    assert accuracy[14] == 0.5 and np.isnan(accuracy[0])


@pytest.mark.parametrize("score", list(cal.SCORES))
@pytest.mark.parametrize("rate", [0.05, 0.10])
def test_the_stored_threshold_flags_the_requested_share_of_held_out_images(score: str, rate: float) -> None:
    """Fitted on one validation split, the threshold flags `rate` (±2 points) of other in-distribution images."""
    validation, held_out = sampled(5000, 2.0, seed=6), sampled(5000, 2.0, seed=7)
    fitted = fit_calibration(validation, held_out, rate, score)
    assert fitted.val_flag_rate == pytest.approx(rate, abs=0.002)
    assert fitted.test is not None and fitted.test.flag_rate == pytest.approx(rate, abs=0.02)
    served = cal.apply_calibration(held_out.probabilities, fitted)
    assert 1 - served.in_distribution.mean() == pytest.approx(fitted.test.flag_rate)


def test_ties_at_the_threshold_stay_in_distribution() -> None:
    """Saturated outputs (a float32 softmax at exactly 1) tie; the threshold never flags more than asked."""
    scores = np.array([1.0] * 90 + [0.5] * 10)
    threshold = cal.threshold_for_flag_rate(scores, 0.05)
    assert cal.flag_rate(scores, threshold) <= 0.05
    assert cal.flag_rate(np.array([0.1, 0.2, 0.3, 0.4]), cal.threshold_for_flag_rate(np.array([0.1, 0.2, 0.3, 0.4]), 0.25)) == 0.25


def test_apply_calibration_keeps_the_ranking_and_overrides_the_threshold() -> None:
    data = sampled(500, 3.0, seed=8)
    fitted = fit_calibration(data, None, 0.05, "max_probability")
    served = cal.apply_calibration(data.probabilities, fitted)
    assert served.probabilities.dtype == np.float32 and served.scores.dtype == np.float32
    assert np.allclose(served.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (served.probabilities.argmax(axis=1) == data.probabilities.argmax(axis=1)).all()
    assert np.allclose(served.scores, served.probabilities.max(axis=1), atol=1e-6)
    assert not cal.apply_calibration(data.probabilities, fitted, threshold=1.1).in_distribution.any()
    assert cal.apply_calibration(data.probabilities, fitted, threshold=0.0).in_distribution.all()
    plain = cal.apply_calibration(data.probabilities, None)
    assert plain.scores is None and plain.in_distribution is None
    assert np.array_equal(plain.probabilities, data.probabilities)


def test_scores_rank_a_confident_image_above_a_uniform_one() -> None:
    confident, flat = [0.91] + [0.01] * 9, [0.1] * 10
    for name in cal.SCORES:
        for temperature in (0.5, 1.0, 1.5):
            values = cal.score(np.array([confident, flat]), name, temperature)
            assert values[0] > values[1], (name, temperature)
    near_one = cal.energy(np.array([confident]), 1.0 + 1e-4)
    assert near_one == pytest.approx(cal.energy(np.array([confident]), 1.0), abs=1e-3)  # continuous at T = 1


def test_old_cards_load_as_uncalibrated() -> None:
    base = {"class_names": ["a", "b"], "architecture": "x", "parameters": 1, "preprocessing": "p"}
    assert ModelCard.from_metadata(dict(base)).calibration is None  # schema 0: no schema_version
    assert ModelCard.from_metadata({**base, "schema_version": 1}).calibration is None
    assert SCHEMA_VERSION == 2
    card = ModelCard(**base, calibration=Calibration(temperature=1.5, score="energy", threshold=-1.0, flag_rate=0.05,
                                                     val_flag_rate=0.05, val_size=100))
    assert ModelCard.from_metadata(card.to_metadata()) == card
    with pytest.raises(ValueError, match="temperature"):
        Calibration(temperature=0, score="energy", threshold=0, flag_rate=0.05, val_flag_rate=0.05, val_size=1)


def test_an_import_calibrates_on_one_half_of_each_class_and_measures_on_the_other() -> None:
    labels = np.repeat(np.arange(10), 7)
    fit_part, measure_part = split_for_import(labels)
    assert not set(fit_part) & set(measure_part) and len(fit_part) + len(measure_part) == 70
    assert np.bincount(labels[fit_part]).tolist() == [3] * 10


def test_the_reliability_diagram_is_written(tmp_path) -> None:
    data = sampled(1000, 3.0, seed=9)
    plot_reliability(data, 3.0, tmp_path / "reliability.png", "sharpened")
    assert (tmp_path / "reliability.png").stat().st_size > 10_000
