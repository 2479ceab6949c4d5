"""The arrays a CIFAR-10 source decodes to, before any subset or split: shared by the loader (data.py) and the
decoded-data cache (cache.py), so neither has to import the other for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawSplits:
    """The full train and test arrays of a source, with its class names in label order."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
