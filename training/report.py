"""Metrics, the confusion matrix, training curves and the optimizer comparison, as JSON and PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_scores(matrix: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class: overall accuracy hides the classes a model confuses."""
    true_positives = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, actual)
    }


# Every line marks its points: a one-epoch run is one point, which a line alone would not draw.
POINT = {"marker": "o", "markersize": 4}


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Accuracy, loss and learning rate per epoch, train and validation."""
    save_figure(curves_figure(history, title), path)


def curves_figure(history: dict[str, list[float]], title: str) -> Figure:
    """The figure of `plot_curves`, returned so it can be checked before it becomes pixels."""
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes[:2], ("accuracy", "loss")):
        ax.plot(epochs, history.get(metric, []), label=f"train {metric}", **POINT)
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], label=f"validation {metric}", **POINT)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    rates = history.get("learning_rate", [])
    axes[2].plot(epochs, rates, color="tab:green", **POINT)
    if any(rate > 0 for rate in rates):  # a one-epoch `fast` run logs only its schedule's final 0: no log scale
        axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate")
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Lay out, write and close a figure (pyplot keeps every open figure alive until it is closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    save_figure(fig, path)


def plot_comparison(histories: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    """Validation accuracy and loss of several runs, overlaid."""
    save_figure(comparison_figure(histories, title), path)


def comparison_figure(histories: dict[str, dict[str, list[float]]], title: str) -> Figure:
    """The figure of `plot_comparison`; without validation data, the training curves stand in."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, history in histories.items():
        for ax, metric in zip(axes, ("val_accuracy", "val_loss")):
            values = history.get(metric) or history.get(metric.removeprefix("val_"), [])
            ax.plot(np.arange(1, len(values) + 1), values, label=label, **POINT)
    for ax, metric in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def evaluation_report(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, loss, per-class scores and the confusion matrix of one set of predictions."""
    matrix = confusion_matrix(labels, np.argmax(probabilities, axis=1), len(class_names))
    return {
        "accuracy": accuracy(probabilities, labels),
        "loss": cross_entropy(probabilities, labels),
        "per_class": per_class_scores(matrix, class_names),
        "confusion_matrix": matrix.tolist(),
    }
