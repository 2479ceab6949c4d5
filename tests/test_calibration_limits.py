"""benchmarks/calibration_limits.py: what one temperature can do, read from benchmarks/ood.py's saved outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import calibration_limits
from benchmarks.ood import Outputs
from contract.calibration import as_outputs, softmax

TRUE_TEMPERATURE = 2.0


def over_confident(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outputs whose logits are twice what they should be: labels drawn from softmax(logits / 2)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (count, 10))
    probabilities = softmax(logits / TRUE_TEMPERATURE)
    labels = (probabilities.cumsum(axis=1) < rng.random((count, 1))).sum(axis=1).clip(0, 9)
    return as_outputs(np.c_[logits, np.full(count, np.nan)]), labels


def saved_run(folder: Path, validation: bool = True) -> Path:
    """A benchmarks/ood.py output folder: its outputs.npz written by ood.py's own Outputs (without a validation
    split, as for an imported model or a --limit run), an ood.json with an uncalibrated card's temperature."""
    test, test_labels = over_confident(4000, seed=1)
    held_out, labels = over_confident(4000, seed=2) if validation else (None, None)
    Outputs(test, test_labels, held_out, labels, {}).save(folder / "outputs.npz")
    (folder / "ood.json").write_text(json.dumps({"model": "synthetic:v1", "calibration": {"temperature": 1.0}}))
    return folder


def test_the_fitted_temperatures_find_the_true_one_and_the_floor_is_below_the_uncalibrated_ece(tmp_path: Path) -> None:
    calibration_limits.main([str(saved_run(tmp_path))])
    result = json.loads((tmp_path / "calibration_limits.json").read_text())
    rows = result["temperatures"]
    assert list(rows) == ["card", "least NLL, validation", "least ECE, validation", "least NLL, test (bound)",
                          "least ECE, test (bound)"]
    assert rows["card"]["temperature"] == 1.0 and result["test_size"] == result["validation_size"] == 4000
    for name in ("least NLL, validation", "least NLL, test (bound)"):
        assert abs(rows[name]["temperature"] - TRUE_TEMPERATURE) < 0.15, (name, rows[name])
    assert rows["least NLL, validation"]["test_ece"] < rows["card"]["test_ece"] / 3
    assert rows["least ECE, test (bound)"]["test_ece"] <= rows["least NLL, validation"]["test_ece"]
    floor = result["perfect_calibration_ece"]
    assert floor["low"] < floor["median"] < floor["high"] < rows["card"]["test_ece"]
    assert (tmp_path / "calibration_limits.png").stat().st_size > 20_000


def test_the_floor_of_a_coin_flip_model_is_the_binomial_spread() -> None:
    """Every image at confidence 0.5: the ECE is |accuracy - 0.5|, whose median is 0.6745 * sqrt(0.25 / n)."""
    probabilities = np.tile([0.5, 0.3, 0.2], (1000, 1))
    eces = calibration_limits.perfect_calibration_eces(probabilities, draws=2000)
    assert abs(np.median(eces) - 0.6745 * np.sqrt(0.25 / 1000)) < 0.0015
    certain = np.tile([1.0, 0.0, 0.0], (100, 1))
    assert not calibration_limits.perfect_calibration_eces(certain, draws=5).any()


def test_outputs_without_a_validation_split_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="has no validation split"):
        calibration_limits.main([str(saved_run(tmp_path, validation=False))])
