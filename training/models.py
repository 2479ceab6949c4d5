"""The architectures. Each takes raw uint8 32x32x3 images and scales them itself."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, regularizers

from training.recipes import Augmentation, CnnBnRecipe, CnnRecipe, FastRecipe, MlpRecipe, Recipe, Whitening

INPUT_SHAPE = (32, 32, 3)
# Per-channel statistics of the CIFAR-10 training set, pixel values in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

TTA_DESCRIPTION = "; flip and one-pixel translation test-time augmentation at inference"


def uint8_input() -> keras.KerasTensor:
    """Raw uint8 pixels in: every model scales its own input, so the service sends bytes as decoded."""
    return keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")


def augmentation(x: keras.KerasTensor, augment: Augmentation, seed: int) -> keras.KerasTensor:
    """Random horizontal flip and small translation; Keras applies them only when training."""
    x = layers.RandomFlip("horizontal", seed=seed, name="random_flip")(x)
    shift = augment.translate
    return layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed, name="random_translation")(x)


def conv(filters: int, kernel_size: int, l2: float, **options: object) -> layers.Conv2D:
    """A same-padded convolution with L2 on its kernel."""
    return layers.Conv2D(filters, kernel_size, padding="same", kernel_regularizer=regularizers.l2(l2), **options)


def build_cnn(recipe: CnnRecipe, num_classes: int = 10) -> keras.Model:
    """The published small CNN: two L2-regularised convolutions, dropout; 545,098 parameters."""
    inputs = uint8_input()
    x = layers.Rescaling(1 / 255.0, name="scale_0_1")(inputs)
    for filters in recipe.filters:
        x = conv(filters, recipe.kernel_size, recipe.training.l2, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(recipe.dense_units, activation="relu")(x)
    x = layers.Dropout(recipe.training.dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def conv_bn_relu(x: keras.KerasTensor, filters: int, kernel_size: int, l2: float) -> keras.KerasTensor:
    """Convolution without bias (BatchNorm supplies it), BatchNorm, ReLU."""
    x = conv(filters, kernel_size, l2, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def build_cnn_bn(recipe: CnnBnRecipe, num_classes: int = 10, seed: int = 0) -> keras.Model:
    """The same family made deeper: double-convolution blocks with BatchNorm, augmentation."""
    inputs = uint8_input()
    x = layers.Rescaling(1 / 255.0, name="scale_0_1")(inputs)
    if recipe.augments:
        x = augmentation(x, recipe.augmentation, seed)
    for filters in recipe.filters:
        for _ in range(recipe.convs_per_block):
            x = conv_bn_relu(x, filters, recipe.kernel_size, recipe.training.l2)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(recipe.training.dropout)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn_bn")


def build_mlp(recipe: MlpRecipe, num_classes: int = 10) -> keras.Model:
    """The published deep MLP used to compare optimizers; 5,955,466 parameters."""
    widths, dropout = recipe.widths, recipe.training.dropout
    inputs = uint8_input()
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_-1_1")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(widths[0], activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(widths[1], activation="relu")(x)
    x = layers.Dense(widths[2], activation="gelu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(widths[3], activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(widths[4], activation="tanh")(x)
    x = layers.Dense(widths[5], activation="tanh")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")


def whitening_filters(images: np.ndarray, whitening: Whitening) -> np.ndarray:
    """Patch-whitening kernels (and their negatives) from the data's patch covariance, as in airbench."""
    x = (images.astype(np.float32) / 255.0 - np.array(CIFAR10_MEAN, np.float32)) / np.array(CIFAR10_STD, np.float32)
    p, side = whitening.patch, x.shape[1]
    # (n, 31, 31, 12) for 2x2: the pixels of every patch window in row-major order, channels last
    patches = np.concatenate(
        [x[:, i : side - p + 1 + i, j : side - p + 1 + j] for i in range(p) for j in range(p)], axis=-1
    )
    dims = p * p * 3
    flat = patches.reshape(-1, dims).astype(np.float64)
    flat -= flat.mean(axis=0)
    covariance = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors / np.sqrt(eigenvalues + whitening.eps)  # (dims, dims): one filter per column
    # inputs ordered [pixel (0,0) rgb, (0,1) rgb, ...] -> kernel (p, p, 3, dims)
    kernel = filters.reshape(p, p, 3, dims)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


def conv_pool_block(x: keras.KerasTensor, filters: int, recipe: FastRecipe) -> keras.KerasTensor:
    """airbench's block: conv, pool, BN (frozen scale), activation, conv, BN, activation."""
    l2, bn = recipe.training.l2, recipe.batchnorm
    x = conv(filters, recipe.kernel_size, l2, use_bias=False)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(scale=False, momentum=bn.momentum, epsilon=bn.epsilon)(x)
    x = layers.Activation(recipe.activation)(x)
    x = conv(filters, recipe.kernel_size, l2, use_bias=False)(x)
    x = layers.BatchNormalization(scale=False, momentum=bn.momentum, epsilon=bn.epsilon)(x)
    return layers.Activation(recipe.activation)(x)


def dirac_init(conv: layers.Conv2D) -> None:
    """Make the first filters of a 3x3 convolution an identity (an implicit residual), as airbench does.

    Set on the weights rather than through a custom initializer, so the saved model needs no custom code.
    """
    kernel = conv.get_weights()[0]
    channels = min(kernel.shape[2], kernel.shape[3])
    kernel[:, :, :, :channels] = 0.0
    kernel[1, 1, np.arange(channels), np.arange(channels)] = 1.0
    conv.set_weights([kernel])


def build_fast(recipe: FastRecipe, whitening: np.ndarray | None, num_classes: int = 10, seed: int = 0) -> keras.Model:
    """An airbench-style network in plain Keras: frozen patch whitening, three conv-pool blocks."""
    inputs = uint8_input()
    variance = [s * s for s in CIFAR10_STD]
    x = layers.Rescaling(1 / 255.0, name="scale_0_1")(inputs)
    x = layers.Normalization(mean=list(CIFAR10_MEAN), variance=variance, name="standardise")(x)
    if recipe.augments:
        x = augmentation(x, recipe.augmentation, seed)
    width = recipe.whitening.width
    whiten = layers.Conv2D(width, recipe.whitening.patch, padding="valid", use_bias=True, trainable=False, name="whiten")
    x = whiten(x)
    if whitening is not None:
        whiten.set_weights([whitening, np.zeros(width, np.float32)])
    x = layers.Activation(recipe.activation)(x)
    for filters in recipe.widths:
        x = conv_pool_block(x, filters, recipe)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_regularizer=regularizers.l2(recipe.training.l2), name="logits")(x)
    x = layers.Rescaling(recipe.temperature, name="temperature")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="fast")
    if recipe.dirac_init:
        for layer in model.layers:
            if isinstance(layer, layers.Conv2D) and layer.trainable and layer.kernel_size == (recipe.kernel_size,) * 2:
                dirac_init(layer)
    return model


def build(recipe: Recipe, x_train: np.ndarray, num_classes: int, seed: int) -> keras.Model:
    """The recipe's network; fast's whitening kernels come from the first training images."""
    if isinstance(recipe, FastRecipe):
        whitening = whitening_filters(x_train[: recipe.whitening.images], recipe.whitening)
        return build_fast(recipe, whitening, num_classes, seed)
    if isinstance(recipe, CnnBnRecipe):
        return build_cnn_bn(recipe, num_classes, seed)
    if isinstance(recipe, MlpRecipe):
        return build_mlp(recipe, num_classes)
    assert isinstance(recipe, CnnRecipe), recipe
    return build_cnn(recipe, num_classes)
