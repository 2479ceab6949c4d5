"""Candidate out-of-distribution scores from a stored model's penultimate features, beside the stored ones.

    python benchmarks/ood_candidates.py --model cifar10-fast --data ../shared/data/cifar10-jpeg.tar.gz

What led to `feature_norm` (docs/calibration.md): the model runs once, view by view of its test-time
augmentation, on its rebuilt validation split, the test images and benchmarks/ood_sets.py's sets, keeping
every view's penultimate features (the input of the Dense layer that computes the logits) and logits.
Scores that need no extra training data are then fitted on the validation split where they need fitting:
energy at several temperatures, the feature norm, ReAct (energy of the logits recomputed from features
clipped at a validation percentile), Mahalanobis distances (class-conditional and one Gaussian), k-nearest
neighbours among the validation features, and ViM. It prints the AUROC of the test images against each
set and, at the threshold flagging 5% of the validation split, the test false-flag and digits flag rates;
writes candidates.json. Only models trained here (the validation split is rebuilt from the card); a
research aid, not a serving path: the service computes contract.calibration's scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine  # noqa: E402
from benchmarks.ood import auroc  # noqa: E402
from benchmarks.ood_sets import ood_sets  # noqa: E402
from contract import calibration as cal  # noqa: E402

console = Console()
Views = tuple[np.ndarray, np.ndarray, np.ndarray]  # features (n, v, d), logits (n, v, k), view weights (v,)
Score = Callable[[Views], np.ndarray]


def view_outputs(tag: str) -> tuple[Callable[[np.ndarray], Views], Any, Any]:
    """The stored model's per-view features and logits as a function of uint8 images, its card and the
    Dense layer that computes the logits (for ReAct's recomputed logits)."""
    from contract.predictor import load_network, logits_dense, read_card

    ref, card = read_card(tag)
    network = load_network(Path(ref.path) / card.model_file, card.format)
    last = network.layers[-1]
    dense = last if hasattr(last, "kernel") else logits_dense(last.input)
    return per_view(network, card.flip_tta, card.translate_tta), card, dense


def per_view(network: Any, flip_tta: bool, translate_tta: bool) -> Callable[[np.ndarray], Views]:
    """uint8 images -> every test-time augmentation view's penultimate features and logits, and the views' weights."""
    import tensorflow as tf
    from keras import ops

    from contract.predictor import logits_network, tta_views

    head, why = logits_network(network)
    if head is None:
        raise SystemExit(f"no logits: {why}")
    weights = np.array([w for _, w in tta_views(np.zeros((1, 32, 32, 3), np.uint8), flip_tta, translate_tta)])

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8)])
    def run(images: Any) -> tuple[Any, Any]:
        pairs = [head(view) for view, _ in tta_views(images, flip_tta, translate_tta)]
        if pairs[0][0] is None:
            raise SystemExit("no penultimate features: no Dense layer computes the logits")
        return (ops.stack([ops.cast(f, "float32") for f, _ in pairs], axis=1),
                ops.stack([ops.cast(z, "float32") for _, z in pairs], axis=1))

    def apply(images: np.ndarray) -> Views:
        parts = [run(tf.constant(images[i : i + 500])) for i in range(0, len(images), 500)]
        return (np.concatenate([f.numpy() for f, _ in parts]), np.concatenate([z.numpy() for _, z in parts]), weights)

    return apply


def combined_logits(views: Views) -> np.ndarray:
    """The logits as contract.predictor combines the views (softmax: the served probabilities)."""
    _, z, w = views
    log_softmax = z - cal.logsumexp(z.reshape(-1, z.shape[2])).reshape(z.shape[:2])[..., None]
    shifted = log_softmax + np.log(w)[None, :, None]
    top = shifted.max(axis=1, keepdims=True)
    log_mean = (top + np.log(np.exp(shifted - top).sum(axis=1, keepdims=True)))[:, 0]
    energy = cal.logsumexp(z.reshape(-1, z.shape[2])).reshape(z.shape[:2]) @ w
    return log_mean + energy[:, None]


def mean_features(views: Views) -> np.ndarray:
    features, _, w = views
    return np.einsum("nvd,v->nd", features, w)


def energy_at(temperature: float) -> Score:
    return lambda v: temperature * cal.logsumexp(combined_logits(v) / temperature)


def react(clip: float, kernel: np.ndarray, bias: np.ndarray, scale: float) -> Score:
    """Energy of the logits recomputed from features clipped at `clip` (Sun et al. 2021)."""
    def score(v: Views) -> np.ndarray:
        z = (np.minimum(v[0], clip) @ kernel + bias) * scale
        return cal.logsumexp(z.reshape(-1, z.shape[2])).reshape(z.shape[:2]) @ v[2]
    return score


def mahalanobis(validation: Views, labels: np.ndarray, per_class: bool) -> Score:
    """Minus the smallest Mahalanobis distance to the class means (or to the one mean), shared covariance."""
    features = mean_features(validation)
    means = np.stack([features[labels == k].mean(0) for k in np.unique(labels)]) if per_class else features.mean(0)[None]
    centred = features - (means[labels] if per_class else means[0])
    covariance = centred.T @ centred / len(centred)
    precision = np.linalg.inv(covariance + 1e-3 * np.trace(covariance) / len(covariance) * np.eye(len(covariance)))

    def score(v: Views) -> np.ndarray:
        x = mean_features(v)
        return -np.min([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in means], axis=0)
    return score


def nearest(validation: Views, k: int) -> Score:
    """Cosine similarity to the k-th nearest normalised validation feature (Sun et al. 2022)."""
    bank = mean_features(validation)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)

    def score(v: Views) -> np.ndarray:
        x = mean_features(v)
        similarity = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ bank.T
        if v is validation:
            np.fill_diagonal(similarity, -1.0)  # not itself
        return np.sort(similarity, axis=1)[:, -k]
    return score


def vim(validation: Views, dimensions: int) -> Score:
    """Energy minus the scaled norm of the features outside their principal subspace (Wang et al. 2022)."""
    features = mean_features(validation)
    values, vectors = np.linalg.eigh(np.cov(features.T))
    residual = vectors[:, np.argsort(values)[::-1][dimensions:]]
    alpha = energy_at(1.0)(validation).mean() / np.linalg.norm(features @ residual, axis=1).mean()
    return lambda v: energy_at(1.0)(v) - alpha * np.linalg.norm(mean_features(v) @ residual, axis=1)


def candidates(validation: Views, labels: np.ndarray, dense: Any) -> dict[str, Score]:
    kernel = dense.kernel.numpy()
    bias = dense.bias.numpy() if getattr(dense, "use_bias", False) else np.zeros(kernel.shape[1])
    plain = np.einsum("nvd,dk->nvk", validation[0], kernel) + bias
    scale = float((plain * validation[1]).sum() / (plain * plain).sum())  # fast's Rescaling after the Dense
    scores: dict[str, Score] = {f"energy T={t:g}": energy_at(t) for t in (0.5, 1.0, 2.0, 4.0)}
    scores["feature_norm"] = lambda v: np.linalg.norm(v[0], axis=2) @ v[2]
    scores |= {f"ReAct p{q}": react(float(np.percentile(validation[0], q)), kernel, bias, scale) for q in (90, 95, 99)}
    scores["Mahalanobis (classes)"] = mahalanobis(validation, labels, per_class=True)
    scores["Mahalanobis (one)"] = mahalanobis(validation, labels, per_class=False)
    scores |= {f"kNN k={k}": nearest(validation, k) for k in (1, 10, 50)}
    scores |= {f"ViM D={d}": vim(validation, d) for d in (16, 32, 64)}
    return scores


def measure(scores: dict[str, Score], outputs: dict[str, Views]) -> dict[str, dict[str, float]]:
    """Per score: AUROC of the test images against each set; the test and digits flag rates at 5% of validation."""
    results = {}
    for name, score in scores.items():
        values = {where: score(views) for where, views in outputs.items()}
        threshold = cal.threshold_for_flag_rate(values["validation"], 0.05)
        sets = [where for where in values if where not in ("validation", "test")]
        results[name] = {**{where: auroc(values["test"], values[where]) for where in sets},
                         "test flagged": cal.flag_rate(values["test"], threshold),
                         "digits flagged": cal.flag_rate(values["digits"], threshold)}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="store tag of a model trained here")
    parser.add_argument("--data", required=True, help="the CIFAR-10 source it was trained on")
    parser.add_argument("--output", type=Path, default=None, help="folder for candidates.json")
    args = parser.parse_args(argv)
    from training.data import load_dataset
    from training.tf_start import start_tensorflow

    start_tensorflow(verbose=False)
    apply, card, dense = view_outputs(args.model)
    config = card.config
    split = load_dataset(args.data, config["validation_split"], config["seed"], config.get("limit"), cache=True)
    test = load_dataset(args.data, 0.0, 0, None, cache=True)
    images = {"validation": split.x_val, "test": test.x_test, **ood_sets(1000, 100)}
    outputs = {where: apply(batch) for where, batch in images.items()}
    console.print(f"{args.model}: views of {len(images)} image sets computed")
    results = measure(candidates(outputs["validation"], split.y_val, dense), outputs)
    table = Table(title=f"{args.model}: AUROC against each set; flagged at 5% of the validation split")
    for column in ["score", *next(iter(results.values()))]:
        table.add_column(column, justify="right")
    for name, row in results.items():
        table.add_row(name, *[f"{v:.2%}" if "flagged" in k else f"{v:.3f}" for k, v in row.items()])
    console.print(table)
    output = args.output or ROOT / "runs" / f"ood-candidates-{args.model.replace(':', '-')}"
    output.mkdir(parents=True, exist_ok=True)
    (output / "candidates.json").write_text(json.dumps({"model": args.model, "machine": machine(), "results": results}, indent=2))
    console.print(f"{machine()['cpu']}; wrote {output / 'candidates.json'}")


if __name__ == "__main__":
    main()
