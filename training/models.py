"""The architectures. Each takes raw uint8 32x32x3 images and scales them itself."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, regularizers

INPUT_SHAPE = (32, 32, 3)
# Per-channel statistics of the CIFAR-10 training set, pixel values in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

PREPROCESSING: dict[str, str] = {
    "cnn": "uint8 RGB -> float / 255 (range [0, 1]), inside the model",
    "cnn-bn": "uint8 RGB -> float / 255, random flip + translation (training only), inside the model",
    "mlp": "uint8 RGB -> float / 127.5 - 1 (range [-1, 1]), flattened, inside the model",
    "fast": "uint8 RGB -> per-channel standardised, random flip + translation (training only), "
    "frozen 2x2 patch whitening, inside the model",
}
TTA_DESCRIPTION = "; flip and one-pixel translation test-time augmentation at inference"


def uint8_input() -> keras.KerasTensor:
    return keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")


def augmentation(x: keras.KerasTensor, translate: float, seed: int) -> keras.KerasTensor:
    """Random horizontal flip and small translation; Keras applies them only when training."""
    x = layers.RandomFlip("horizontal", seed=seed, name="random_flip")(x)
    return layers.RandomTranslation(translate, translate, fill_mode="reflect", seed=seed, name="random_translation")(x)


def build_cnn(l2: float = 1e-3, dropout: float = 0.5, num_classes: int = 10) -> keras.Model:
    """The published small CNN: two L2-regularised convolutions, dropout; 545,098 parameters."""
    inputs = uint8_input()
    x = layers.Rescaling(1 / 255.0, name="scale_0_1")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", kernel_regularizer=regularizers.l2(l2))(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", kernel_regularizer=regularizers.l2(l2))(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def conv_bn_relu(x: keras.KerasTensor, filters: int, l2: float) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizers.l2(l2))(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def build_cnn_bn(
    l2: float = 1e-4, dropout: float = 0.3, augment: bool = True, num_classes: int = 10, seed: int = 0
) -> keras.Model:
    """The same family made deeper: three double-convolution blocks with BatchNorm, augmentation."""
    inputs = uint8_input()
    x = layers.Rescaling(1 / 255.0, name="scale_0_1")(inputs)
    if augment:
        x = augmentation(x, translate=0.1, seed=seed)
    for filters in (32, 64, 128):
        x = conv_bn_relu(x, filters, l2)
        x = conv_bn_relu(x, filters, l2)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn_bn")


def build_mlp(dropout: float = 0.2, num_classes: int = 10) -> keras.Model:
    """The published deep MLP used to compare optimizers; 5,955,466 parameters."""
    inputs = uint8_input()
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_-1_1")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dense(1024, activation="gelu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(2048, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(1024, activation="tanh")(x)
    x = layers.Dense(1024, activation="tanh")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")


def whitening_filters(images: np.ndarray, eps: float = 5e-4) -> np.ndarray:
    """2x2 patch-whitening kernels (and their negatives) from the data's patch covariance, as in airbench."""
    x = (images.astype(np.float32) / 255.0 - np.array(CIFAR10_MEAN, np.float32)) / np.array(CIFAR10_STD, np.float32)
    patches = np.concatenate(
        [x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, :-1], x[:, 1:, 1:]], axis=-1
    )  # (n, 31, 31, 12): the four pixels of every 2x2 window, channels last
    flat = patches.reshape(-1, 12).astype(np.float64)
    flat -= flat.mean(axis=0)
    covariance = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors / np.sqrt(eigenvalues + eps)  # (12, 12): one filter per column
    # 12 inputs ordered [pixel (0,0) rgb, (0,1) rgb, (1,0) rgb, (1,1) rgb] -> kernel (2, 2, 3, 12)
    kernel = filters.reshape(2, 2, 3, 12)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


def conv_pool_block(x: keras.KerasTensor, filters: int, l2: float) -> keras.KerasTensor:
    """airbench's block: conv, pool, BN (frozen scale), GELU, conv, BN, GELU."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizers.l2(l2))(x)
    x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(scale=False, momentum=0.4, epsilon=1e-12)(x)  # PyTorch momentum 0.6
    x = layers.Activation("gelu")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizers.l2(l2))(x)
    x = layers.BatchNormalization(scale=False, momentum=0.4, epsilon=1e-12)(x)
    return layers.Activation("gelu")(x)


def dirac_init(conv: layers.Conv2D) -> None:
    """Make the first filters of a 3x3 convolution an identity (an implicit residual), as airbench does.

    Set on the weights rather than through a custom initializer, so the saved model needs no custom code.
    """
    kernel = conv.get_weights()[0]
    channels = min(kernel.shape[2], kernel.shape[3])
    kernel[:, :, :, :channels] = 0.0
    kernel[1, 1, np.arange(channels), np.arange(channels)] = 1.0
    conv.set_weights([kernel])


def build_fast(
    whitening: np.ndarray | None = None,
    widths: tuple[int, int, int] = (64, 128, 128),
    l2: float = 5e-4,
    augment: bool = True,
    num_classes: int = 10,
    seed: int = 0,
) -> keras.Model:
    """An airbench-style network in plain Keras: frozen patch whitening, three conv-pool blocks."""
    inputs = uint8_input()
    variance = [s * s for s in CIFAR10_STD]
    x = layers.Rescaling(1 / 255.0, name="scale_0_1")(inputs)
    x = layers.Normalization(mean=list(CIFAR10_MEAN), variance=variance, name="standardise")(x)
    if augment:
        x = augmentation(x, translate=2 / 32, seed=seed)
    whiten = layers.Conv2D(24, 2, padding="valid", use_bias=True, trainable=False, name="whiten")
    x = whiten(x)
    if whitening is not None:
        whiten.set_weights([whitening, np.zeros(24, np.float32)])
    x = layers.Activation("gelu")(x)
    for filters in widths:
        x = conv_pool_block(x, filters, l2)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_regularizer=regularizers.l2(l2), name="logits")(x)
    x = layers.Rescaling(1 / 9.0, name="temperature")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="fast")
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.trainable and layer.kernel_size == (3, 3):
            dirac_init(layer)
    return model
