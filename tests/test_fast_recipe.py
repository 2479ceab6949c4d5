"""The fast recipe's parts that are not plain Keras: Lookahead averaging and translation test-time augmentation."""

from __future__ import annotations

import keras
import numpy as np

from contract.predictor import compile_inference
from training.callbacks import Lookahead
from training.config import TrainConfig
from training.recipes import FAST


def tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_lookahead_moves_the_weights_part_way_back_to_the_slow_copy() -> None:
    model = tiny_model()
    lookahead = Lookahead(total_steps=10, every=5, final_decay=0.5)
    lookahead.set_model(model)
    lookahead.on_train_begin()
    slow = [np.array(w) for w in model.get_weights()]
    fast = [w + 1.0 for w in slow]
    model.set_weights(fast)

    model.optimizer.iterations.assign(5)  # half-way: decay 0.5 * 0.5**3
    lookahead.on_train_batch_end(3)  # not the fifth batch: no change
    np.testing.assert_allclose(model.get_weights()[0], fast[0])
    lookahead.on_train_batch_end(4)
    decay = 0.5 * 0.5**3
    for before, after, trained in zip(slow, model.get_weights(), fast):
        np.testing.assert_allclose(after, decay * before + (1 - decay) * trained, rtol=1e-6)


def test_lookahead_averages_batchnorm_statistics_but_starts_as_plain_training() -> None:
    model = tiny_model()
    lookahead = Lookahead(10, FAST.lookahead.every, FAST.lookahead.final_decay)
    lookahead.set_model(model)
    names = [v.path for v in lookahead.averaged_variables()]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
    assert not any("seed" in n for n in names)
    lookahead.on_train_begin()
    moved = [w + 2.0 for w in model.get_weights()]
    model.set_weights(moved)
    lookahead.on_epoch_end(0)  # step 0: decay 0, the trained weights are kept as they are
    for kept, trained in zip(model.get_weights(), moved):
        np.testing.assert_allclose(kept, trained)


def test_translate_tta_averages_mirrors_of_the_image_and_its_one_pixel_shifts() -> None:
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.Flatten()(x)  # position-sensitive, so every view gives a different answer
    network = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)

    def mirrored(batch: np.ndarray) -> np.ndarray:
        return (network.predict(batch, verbose=0) + network.predict(batch[:, :, ::-1], verbose=0)) / 2

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = (mirrored(padded[:, :32, :32]) + mirrored(padded[:, 2:, 2:])) / 2
    expected = (mirrored(images) + shifted) / 2

    predict = compile_inference(network, "uint8", flip_tta=True, translate_tta=True)
    np.testing.assert_allclose(predict(images), expected, rtol=1e-4, atol=1e-6)
    flip_only = compile_inference(network, "uint8", flip_tta=True)
    assert not np.allclose(flip_only(images), expected, atol=1e-6)


def test_lookahead_is_on_for_the_fast_recipe_only() -> None:
    assert TrainConfig(model="fast").resolved().lookahead is True
    assert TrainConfig(model="cnn").resolved().lookahead is False
    assert TrainConfig(model="fast", lookahead=False).resolved().lookahead is False
