"""benchmarks/ood.py: its image sets, and a smoke run against the session's tiny stored model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ood_sets
from conftest import PROJECT_ROOT, ModelStore
from contract.calibration import SCORES

OFFICIAL = Path(__file__).parent / "fixtures" / "cifar-10-python-tiny.tar.gz"


def test_every_set_is_uint8_32x32_rgb_and_what_it_says() -> None:
    sets = ood_sets.ood_sets(count=20, per_photo=3, seed=1)
    assert set(sets) == {"digits", "photo crops", "uniform noise", "gaussian noise", "flat colours"}
    for name, images in sets.items():
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), name
    assert len(sets["digits"]) == 1797 and len(sets["photo crops"]) == 3 * (2 + len(ood_sets.SKIMAGE_PHOTOS))
    flat = sets["flat colours"]
    assert (flat == flat[:, :1, :1, :]).all() and len(np.unique(flat.reshape(-1, 3), axis=0)) > 10
    digits = sets["digits"]
    assert (digits[..., 0] == digits[..., 2]).all() and digits.max() == 255 and digits.min() == 0
    assert abs(float(sets["gaussian noise"].mean()) - 128) < 5 and sets["uniform noise"].std() > 70


@pytest.mark.bench  # a benchmark script end to end (and `training`, from cifar_model_store)
def test_the_benchmark_scores_a_stored_model(cifar_model_store: ModelStore, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/ood.py", "--model", cifar_model_store.tag, "--data", str(OFFICIAL),
         "--count", "40", "--per-photo", "4", "--output", str(tmp_path)],
        cwd=PROJECT_ROOT, env=cifar_model_store.env(COLUMNS="250"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ood.json").read_text())
    assert report["model"] == cifar_model_store.tag and report["test_size"] == 50
    # every score of contract.calibration; feature_norm only where the network has penultimate features
    assert {"max_probability", "margin", "neg_entropy", "energy", "logit_energy"} <= set(report["auroc"]) <= set(SCORES)
    assert all(0 <= value <= 1 for per_set in report["auroc"].values() for value in per_set.values())
    assert report["set_sizes"]["uniform noise"] == 40 and "AUROC" in result.stdout
    stored = report["stored_score"]
    if stored is not None:  # a calibrated card: its own threshold, and the rates it gives
        assert report["thresholds"][stored] == report["calibration"]["threshold"]
        assert 0 <= report["test_false_flag_rate"][stored] <= 1
    assert (tmp_path / "ood.png").stat().st_size > 20_000


def test_the_candidates_see_the_views_as_the_service_combines_them() -> None:
    """benchmarks/ood_candidates.py keeps every view; combined, they are the predictor's logits and feature norm."""
    import keras

    from benchmarks.ood_candidates import combined_logits, per_view
    from contract.calibration import logits_of
    from contract.predictor import compile_logits

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs)))
    network = keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Rescaling(2.0)(keras.layers.Dense(10)(x))))
    images = np.random.default_rng(4).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    views = per_view(network, flip_tta=True, translate_tta=True)(images)
    served = compile_logits(network, "uint8", flip_tta=True, translate_tta=True)[0](images)
    assert views[0].shape == (6, 6, 8) and views[1].shape == (6, 6, 10) and np.isclose(views[2].sum(), 1.0)
    np.testing.assert_allclose(combined_logits(views), logits_of(served), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(views[0], axis=2) @ views[2], served["feature_norm"], rtol=1e-4)
