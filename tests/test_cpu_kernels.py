"""The Conv2D gradient computed through a forward convolution equals TensorFlow's own."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from training import cpu_kernels


def gradients(gradient_function, images, kernel, strides: int, padding: str):
    """Trace a fresh tf.function with `gradient_function` registered for Conv2D, as training does."""
    entry = ops._gradient_registry._registry["Conv2D"]
    registered = entry["type"]
    entry["type"] = gradient_function
    try:
        @tf.function
        def both(images, kernel):
            with tf.GradientTape() as tape:
                tape.watch([images, kernel])
                output = tf.nn.conv2d(images, kernel, strides=strides, padding=padding)
                loss = tf.reduce_sum(output * tf.sin(output))  # a non-uniform output gradient
            return tape.gradient(loss, [images, kernel])

        return [g.numpy() for g in both(images, kernel)]
    finally:
        entry["type"] = registered


def tensorflow_gradient():
    registered = ops._gradient_registry.lookup("Conv2D")
    return getattr(registered, "original", registered)


@pytest.mark.parametrize(
    ("kernel_size", "strides", "padding"),
    [(3, 1, "SAME"), (5, 1, "SAME"), (1, 1, "SAME"), (3, 2, "SAME"), (3, 1, "VALID"), (2, 1, "SAME")],
)
def test_same_gradients_as_tensorflow(kernel_size: int, strides: int, padding: str) -> None:
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(4, 9, 7, 5)), tf.float32)
    kernel = tf.constant(rng.normal(size=(kernel_size, kernel_size, 5, 6)), tf.float32)
    original = tensorflow_gradient()
    expected = gradients(original, images, kernel, strides, padding)
    ours = gradients(cpu_kernels.conv2d_gradient(original), images, kernel, strides, padding)
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_only_exact_cases_take_the_forward_convolution() -> None:
    class FakeOp:
        def __init__(self, kernel_shape: tuple[int, ...], **attrs: object) -> None:
            self.inputs = [tf.zeros((1, 8, 8, 2)), tf.zeros(kernel_shape)]
            self.attrs = {"strides": [1, 1, 1, 1], "dilations": [1, 1, 1, 1], "padding": b"SAME",
                          "data_format": b"NHWC", **attrs}

        def get_attr(self, name: str) -> object:
            return self.attrs[name]

    assert cpu_kernels.is_same_odd_stride_one(FakeOp((3, 3, 2, 4)))
    assert not cpu_kernels.is_same_odd_stride_one(FakeOp((2, 2, 2, 4)))
    assert not cpu_kernels.is_same_odd_stride_one(FakeOp((3, 3, 2, 4), strides=[1, 2, 2, 1]))
    assert not cpu_kernels.is_same_odd_stride_one(FakeOp((3, 3, 2, 4), dilations=[1, 2, 2, 1]))
    assert not cpu_kernels.is_same_odd_stride_one(FakeOp((3, 3, 2, 4), padding=b"VALID"))


def test_installed_once_over_tensorflows_own_gradient() -> None:
    assert cpu_kernels.use_forward_conv_for_input_gradient()
    assert cpu_kernels.use_forward_conv_for_input_gradient()  # cached: not wrapped twice
    registered = ops._gradient_registry.lookup("Conv2D")
    assert registered.original is not None
    assert not hasattr(registered.original, "original")
