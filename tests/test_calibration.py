"""Calibration and the out-of-distribution threshold: the math of contract/calibration.py, the card's
schema, and the training-side step (training/calibration.py), on predictors whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from contract import calibration as cal
from contract.card import SCHEMA_VERSION, Calibration, ModelCard
from training.calibration import Predictions, fit_calibration, plot_reliability, split_for_import


def sampled(count: int, sharpen: float, seed: int) -> Predictions:
    """A predictor that is calibrated before `sharpen`: labels are drawn from softmax(z), and its logits
    are sharpen * z; sharpen > 1 makes it over-confident, exactly by temperature `sharpen`. Its feature
    norm grows with the top logit (as a trained network's does), plus noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (count, 10))
    logits[np.arange(count), rng.integers(0, 10, count)] += 3.0  # a clear favourite, as a trained model has
    truth = cal.softmax(logits)
    labels = (truth.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    norms = 5.0 + logits.max(axis=1) + rng.normal(0, 1.0, count)
    return Predictions.from_outputs(cal.as_outputs(np.column_stack([sharpen * logits, norms])), labels)


def test_temperature_fitting_lowers_ece_on_an_over_confident_model() -> None:
    validation, test = sampled(20_000, 3.0, seed=1), sampled(20_000, 3.0, seed=2)
    temperature = cal.fit_temperature(validation.outputs, validation.labels)
    assert temperature == pytest.approx(3.0, rel=0.05)  # the sharpening it undoes
    before = cal.expected_calibration_error(test.probabilities, test.labels)
    after = cal.expected_calibration_error(cal.calibrate(test.probabilities, temperature), test.labels)
    assert before > 0.10 and after < 0.02, (before, after)  # 15-bin ECE of 20,000 samples: ~0.5% noise
    nll_after = cal.negative_log_likelihood(cal.calibrate(test.probabilities, temperature), test.labels)
    assert nll_after < cal.negative_log_likelihood(test.probabilities, test.labels)


def test_an_under_confident_model_gets_a_temperature_below_one() -> None:
    validation = sampled(4000, 0.5, seed=3)
    assert cal.fit_temperature(validation.outputs, validation.labels) == pytest.approx(0.5, rel=0.05)
    # the same temperature from log p: softmax ignores the constant per image that log p lacks
    from_probabilities = cal.log_probabilities(validation.probabilities)
    assert cal.fit_temperature(from_probabilities, validation.labels) == pytest.approx(0.5, rel=0.05)


def test_a_calibrated_model_keeps_temperature_one_and_its_ece() -> None:
    validation, test = sampled(20_000, 1.0, seed=4), sampled(20_000, 1.0, seed=5)
    temperature = cal.fit_temperature(validation.outputs, validation.labels)
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
    served = cal.apply_calibration(held_out.outputs, fitted)
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
    served = cal.apply_calibration(data.outputs, fitted)
    assert served.probabilities.dtype == np.float32 and served.scores.dtype == np.float32
    assert np.allclose(served.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (served.probabilities.argmax(axis=1) == data.probabilities.argmax(axis=1)).all()
    assert np.allclose(served.scores, served.probabilities.max(axis=1), atol=1e-6)
    assert not cal.apply_calibration(data.outputs, fitted, threshold=1.1).in_distribution.any()
    assert cal.apply_calibration(data.outputs, fitted, threshold=0.0).in_distribution.all()
    # the same from probabilities, but for those below the log's clip (1e-12)
    assert np.allclose(served.probabilities, cal.calibrate(data.probabilities, fitted.temperature), atol=1e-3)
    plain = cal.apply_calibration(data.outputs, None)
    assert plain.scores is None and plain.in_distribution is None
    assert plain.probabilities.dtype == np.float32 and np.allclose(plain.probabilities, data.probabilities, atol=1e-7)


def test_scores_rank_a_confident_image_above_a_uniform_one() -> None:
    confident, flat = np.log([0.91] + [0.01] * 9) + 2.0, np.log([0.1] * 10)  # logits
    outputs = cal.as_outputs(np.array([[*confident, 9.0], [*flat, 3.0]]))  # and feature norms
    for name in cal.SCORES:
        for temperature in (0.5, 1.0, 1.5):
            values = cal.score(outputs, name, temperature)
            assert values[0] > values[1], (name, temperature)
    near_one = cal.energy(np.array([confident]), 1.0 + 1e-4)
    assert near_one == pytest.approx(cal.energy(np.array([confident]), 1.0), abs=1e-3)  # continuous at T = 1


def test_only_logit_energy_sees_how_strongly_the_network_responds() -> None:
    """Logits shifted by a constant per image give the same probabilities, so every score of them but
    logit_energy is unchanged; logit_energy moves by exactly that constant (logsumexp(z + c) = logsumexp(z) + c)."""
    logits = cal.logits_of(sampled(200, 2.0, seed=9).outputs)
    shift = np.random.default_rng(10).normal(0, 3, (len(logits), 1))
    for name in set(cal.SCORES) - {"feature_norm"}:
        before, after = cal.score(logits, name, 0.7), cal.score(logits + shift, name, 0.7)
        if name == "logit_energy":
            assert np.allclose(after - before, shift[:, 0])
        else:
            assert np.allclose(after, before, atol=1e-9), name
    # the old energy is one of log p: from the network's probabilities, it is what it was from logits
    log_p = cal.log_probabilities(cal.softmax(logits))
    assert np.allclose(cal.energy(log_p, 0.7), cal.energy(logits, 0.7), atol=1e-6)


def test_a_score_of_the_logits_or_features_falls_back_to_what_the_network_gives() -> None:
    """Predictions without logits (a network whose logits cannot be found) are calibrated with the energy
    of log p, without penultimate features with logit_energy, and say so; otherwise the score is kept."""
    data = sampled(1000, 2.0, seed=11)
    with pytest.warns(UserWarning, match="instead of logit_energy"):
        fallback = fit_calibration(Predictions(data.probabilities, data.labels), None, 0.05, "logit_energy")
    assert fallback.score == "energy"
    assert fit_calibration(data, None, 0.05, "logit_energy").score == "logit_energy"
    missing = Predictions.from_outputs(cal.log_probabilities(data.probabilities), data.labels, "no softmax")
    assert missing.outputs is None and np.allclose(missing.probabilities, data.probabilities, atol=1e-6)
    with pytest.warns(UserWarning, match="no logits"):
        assert fit_calibration(missing, None, 0.05, "feature_norm").score == "energy"
    no_features = data.outputs.copy()
    no_features["feature_norm"] = np.nan  # a network whose logits do not come from a Dense layer
    with pytest.warns(UserWarning, match="no penultimate features"):
        fallback = fit_calibration(Predictions.from_outputs(no_features, data.labels), None, 0.05, "feature_norm")
    assert fallback.score == "logit_energy"
    assert fit_calibration(data, None, 0.05, "feature_norm").score == "feature_norm"


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
