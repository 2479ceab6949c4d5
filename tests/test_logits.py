"""contract.predictor's logits and penultimate feature norm: found for every way a stored model ends in a
softmax, combined over the test-time augmentation views so that the softmax of the logits is exactly the
served probabilities; log p, and why, for a network whose logits cannot be found."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from contract import calibration as cal
from contract.predictor import compile_inference, compile_logits

IMAGES = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


def flat_input() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    return inputs, keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))


def network(ending: str) -> keras.Model:
    """A small network that ends in a softmax the way training/models.py's and imported models do."""
    keras.utils.set_random_seed(1)
    inputs, x = flat_input()
    if ending == "dense softmax":  # cnn, mlp, most imported models
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    if ending == "activation":  # fast: logits, a fixed scale, then Activation("softmax")
        logits = keras.layers.Rescaling(3.0)(keras.layers.Dense(10, use_bias=False)(x))
        return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(logits))
    if ending == "softmax layer":
        return keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(10)(x)))
    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax")])


@pytest.mark.parametrize("ending", ["dense softmax", "activation", "softmax layer", "sequential"])
@pytest.mark.parametrize("tta", [False, True])
def test_the_softmax_of_the_logits_is_the_served_probabilities(ending: str, tta: bool) -> None:
    model = network(ending)
    logits, missing = compile_logits(model, "uint8", flip_tta=tta, translate_tta=tta)
    assert missing == ""
    outputs = logits(IMAGES)
    z = cal.logits_of(outputs)
    probabilities = compile_inference(model, "uint8", flip_tta=tta, translate_tta=tta)(IMAGES)
    np.testing.assert_allclose(cal.softmax(z), probabilities, atol=2e-7)
    assert np.ptp(cal.logsumexp(z)) > 1e-3  # not log p: the network's response size is kept
    assert (outputs["feature_norm"] > 0).all()  # the Dense layer's input found, through fast's Rescaling


def test_without_test_time_augmentation_they_are_the_dense_layer_s_own_logits_and_input_norm() -> None:
    inputs, x = flat_input()
    dense = keras.layers.Dense(10, activation="softmax")
    logits, _ = compile_logits(keras.Model(inputs, dense(x)), "uint8", flip_tta=False)
    features = IMAGES.reshape(len(IMAGES), -1).astype(np.float32) / 255
    outputs = logits(IMAGES)
    np.testing.assert_allclose(outputs["logits"], features @ dense.kernel.numpy() + dense.bias.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs["feature_norm"], np.linalg.norm(features, axis=1), rtol=1e-5)


def test_with_views_logsumexp_is_the_views_mean_energy() -> None:
    """z = log(mean softmax) + mean logsumexp: the energy of the combined logits is the views' mean energy."""
    model = network("activation")
    both, _ = compile_logits(model, "uint8", flip_tta=True)
    one, _ = compile_logits(model, "uint8", flip_tta=False)
    views = [one(images) for images in (IMAGES, IMAGES[:, :, ::-1])]
    combined = both(IMAGES)
    np.testing.assert_allclose(cal.logit_energy(combined, 1.0), np.mean([cal.logit_energy(v, 1.0) for v in views], axis=0), rtol=1e-5)
    np.testing.assert_allclose(combined["feature_norm"], np.mean([v["feature_norm"] for v in views], axis=0), rtol=1e-5)


def test_a_network_without_a_softmax_gives_log_p_and_says_why() -> None:
    inputs, x = flat_input()
    model = keras.Model(inputs, keras.layers.Dense(10, activation="sigmoid")(x))
    logits, missing = compile_logits(model, "uint8", flip_tta=False)
    assert "not a softmax" in missing
    outputs = logits(IMAGES)
    np.testing.assert_allclose(outputs["logits"], np.log(model.predict(IMAGES, verbose=0)), atol=1e-5)
    assert np.isnan(outputs["feature_norm"]).all()


def test_logits_that_no_dense_layer_computes_have_no_feature_norm() -> None:
    """The tests' tiny model: logits times a gate (two inputs) before the softmax."""
    inputs, x = flat_input()
    gate = keras.layers.Dense(1, activation="sigmoid")(x)
    scaled = keras.layers.Multiply()([keras.layers.Dense(10)(x), gate])
    logits, missing = compile_logits(keras.Model(inputs, keras.layers.Activation("softmax")(scaled)), "uint8", True)
    outputs = logits(IMAGES)
    assert missing == "" and np.isnan(outputs["feature_norm"]).all() and np.isfinite(outputs["logits"]).all()
