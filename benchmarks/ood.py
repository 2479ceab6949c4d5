"""Out-of-distribution detection of a stored model, on data no one here made and nothing downloaded.

    python benchmarks/ood.py --model cifar10-fast --data ../shared/data/cifar10-jpeg.tar.gz
    python benchmarks/ood.py --model cifar10-cnn:TAG --data ... --output runs/ood-cnn

Scores the model as it is served (its test-time augmentation, the card's temperature) on the test
images and on benchmarks/ood_sets.py's sets (scikit-learn's digits, crops of the packages' sample
photos, noise, flat colours). For every score of contract/calibration.py it prints the AUROC of
in-distribution test images against each set; and at each score's threshold (the card's for the
stored score, the same rule on the rebuilt validation split for the others) the share of test images
falsely flagged and the share of each set flagged. Writes ood.json, ood.png (score distributions) and
outputs.npz (the model's logits and feature norms, as served, on every set; the validation split's labels).
`--data` must be the source the model was trained on, so that the validation split is rebuilt the same.
Needs the `ood` extra: pip install -e '.[ood]'.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine  # noqa: E402
from benchmarks.ood_sets import ood_sets  # noqa: E402
from contract import calibration as cal  # noqa: E402
from contract.card import ModelCard  # noqa: E402

console = Console()


@dataclass(frozen=True)
class Outputs:
    """The served model's outputs on every image set (contract.predictor's `compile_logits`: logits and
    penultimate feature norm, what every score is computed from; log p for a network whose logits cannot
    be found)."""

    test: np.ndarray
    test_labels: np.ndarray
    held_out: np.ndarray | None  # the rebuilt validation split, where it can be rebuilt
    held_out_labels: np.ndarray | None
    sets: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        """All of them in one .npz, so other scores (and benchmarks/calibration_limits.py) can be tried without
        running the model again."""
        extra = {} if self.held_out is None else {"held_out": self.held_out, "held_out_labels": self.held_out_labels}
        np.savez_compressed(path, test=self.test, test_labels=self.test_labels, **extra,
                            **{f"set:{name}": values for name, values in self.sets.items()})


@dataclass(frozen=True)
class Scored:
    """Every score of every image set, for one temperature."""

    test: dict[str, np.ndarray]  # score name -> (n,) scores of the in-distribution test images
    held_out: dict[str, np.ndarray] | None  # the same on the rebuilt validation split
    sets: dict[str, dict[str, np.ndarray]]  # set name -> score name -> scores

    @classmethod
    def of(cls, outputs: Outputs, temperature: float) -> Scored:
        """Every score the model's outputs allow (feature_norm needs penultimate features)."""
        test = score_all(outputs.test, temperature)
        names = [name for name, values in test.items() if np.isfinite(values).all()]
        held_out = score_all(outputs.held_out, temperature, names) if outputs.held_out is not None else None
        sets = {name: score_all(values, temperature, names) for name, values in outputs.sets.items()}
        return cls({name: test[name] for name in names}, held_out, sets)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="store tag: name or name:version")
    parser.add_argument("--data", required=True, help="the CIFAR-10 source the model was trained on")
    parser.add_argument("--count", type=int, default=1000, help="images per generated set")
    parser.add_argument("--per-photo", type=int, default=100, help="crops per sample photo")
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset of N test images (quick runs)")
    parser.add_argument("--output", type=Path, default=None, help="folder for ood.json and ood.png")
    parser.add_argument("--trust-model-code", action="store_true", help="load a legacy entry that needs it")
    return parser.parse_args(argv)


def score_all(outputs: np.ndarray, temperature: float, names: list[str] | None = None) -> dict[str, np.ndarray]:
    return {name: cal.score(outputs, name, temperature) for name in names or cal.SCORES}


def held_out_split(card: ModelCard, data: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation split the model was calibrated on, rebuilt from the card's config (trained models only)."""
    from training.data import load_dataset

    config = card.config
    if not config.get("validation_split") or "seed" not in config:
        return None
    dataset = load_dataset(data, config["validation_split"], config["seed"], config.get("limit"), cache=True)
    return dataset.x_val, dataset.y_val


def predict_all(args: argparse.Namespace) -> tuple[ModelCard, str, Outputs]:
    """Load the served predictor and run it on the test images, the validation split and every set."""
    from contract.predictor import batched, load_predictor
    from training.data import load_dataset
    from training.tf_start import start_tensorflow

    start_tensorflow(verbose=False)
    predictor = load_predictor(args.model, trust_model_code=args.trust_model_code)
    test = load_dataset(args.data, 0.0, 0, args.limit, cache=True)
    held = held_out_split(predictor.card, args.data) if args.limit is None else None
    sets = ood_sets(args.count, args.per_photo)
    outputs = Outputs(batched(predictor.logits, test.x_test), test.y_test,
                      batched(predictor.logits, held[0]) if held is not None else None,
                      held[1] if held is not None else None,
                      {name: batched(predictor.logits, images) for name, images in sets.items()})
    if predictor.logits_missing:
        console.print(f"[yellow]no logits ({predictor.logits_missing}): every score uses log p[/]")
    if np.isnan(outputs.test["feature_norm"]).any():
        console.print("[yellow]no penultimate features: feature_norm is NaN[/]")
    accuracy = float(np.mean(cal.logits_of(outputs.test).argmax(axis=1) == test.y_test))
    calibration = predictor.card.calibration
    console.print(f"{predictor.tag}: test accuracy {accuracy:.2%} on {len(test.y_test)} images; "
                  + (f"temperature {calibration.temperature:.3f}" if calibration else "uncalibrated card"))
    return predictor.card, predictor.tag, outputs


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling in-distribution (higher scores) from out-of-distribution images."""
    from sklearn.metrics import roc_auc_score

    labels = np.concatenate([np.ones(len(in_scores)), np.zeros(len(out_scores))])
    return float(roc_auc_score(labels, np.concatenate([in_scores, out_scores])))


def thresholds(card: ModelCard, scored: Scored) -> dict[str, float]:
    """The stored score's threshold from the card; the others by the same rule on the validation split."""
    found: dict[str, float] = {}
    if card.calibration is None:
        return found
    if scored.held_out is not None:
        found = {name: cal.threshold_for_flag_rate(values, card.calibration.flag_rate)
                 for name, values in scored.held_out.items()}
    found[card.calibration.score] = card.calibration.threshold
    return found


def measure(card: ModelCard, scored: Scored) -> dict[str, object]:
    """AUROC per score and set; per score with a threshold, the test false-flag rate and each set's flag rate."""
    limits = thresholds(card, scored)
    return {
        "auroc": {score: {name: auroc(scored.test[score], values[score]) for name, values in scored.sets.items()}
                  for score in scored.test},
        "thresholds": limits,
        "test_false_flag_rate": {score: cal.flag_rate(scored.test[score], limit) for score, limit in limits.items()},
        "flagged": {score: {name: cal.flag_rate(values[score], limit) for name, values in scored.sets.items()}
                    for score, limit in limits.items()},
    }


def print_tables(results: dict[str, object], stored: str | None) -> None:
    """AUROC per score (the stored one marked) and set; then, at each score's threshold, the share of test
    images falsely flagged and the share of each set flagged."""
    set_names = list(next(iter(results["auroc"].values())))
    for title, first, rows in (
        ("AUROC: CIFAR-10 test images against each set", [], results["auroc"]),
        ("Flagged at each score's threshold (test: false flags)", ["test"], results["flagged"]),
    ):
        table = Table(title=title)
        for column in ["score", *first, *set_names]:
            table.add_column(column, justify="right")
        for score, per_set in rows.items():
            name = score + (" (stored)" if score == stored else "")
            if first:
                table.add_row(name, f"{results['test_false_flag_rate'][score]:.2%}",
                              *[f"{per_set[n]:.1%}" for n in set_names])
            else:
                table.add_row(name, *[f"{per_set[n]:.3f}" for n in set_names])
        console.print(table)


def plot_distributions(scored: Scored, results: dict[str, object], path: Path, title: str) -> None:
    """Histograms of every score: the test images against each set, with the threshold where there is one."""
    columns = min(3, len(scored.test))
    rows = -(-len(scored.test) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(scored.test):]:
        ax.axis("off")
    for ax, score in zip(axes.flat, scored.test):
        groups = {"CIFAR-10 test": scored.test[score], **{name: v[score] for name, v in scored.sets.items()}}
        low, high = min(v.min() for v in groups.values()), max(v.max() for v in groups.values())
        bins = np.linspace(low, high if high > low else low + 1, 50)
        for name, values in groups.items():
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5, label=name)
        if score in results["thresholds"]:
            ax.axvline(results["thresholds"][score], color="black", linestyle="--", label="threshold")
        ax.set_title(score)
        ax.set_xlabel("score (higher: more like CIFAR-10)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    card, tag, outputs = predict_all(args)
    scored = Scored.of(outputs, card.calibration.temperature if card.calibration else 1.0)
    results = measure(card, scored)
    sizes = {name: len(values) for name, values in outputs.sets.items()}
    stored = card.calibration.score if card.calibration else None
    print_tables(results, stored)
    output = args.output or ROOT / "runs" / f"ood-{tag.replace(':', '-')}"
    output.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/ood.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "model": tag, "machine": machine(), "set_sizes": sizes,
              "test_size": len(next(iter(scored.test.values()))), "stored_score": stored,
              "calibration": card.calibration.model_dump(mode="json") if card.calibration else None,
              "seconds": round(time.perf_counter() - started, 1), **results}
    (output / "ood.json").write_text(json.dumps(report, indent=2))
    outputs.save(output / "outputs.npz")
    plot_distributions(scored, results, output / "ood.png", f"{tag}: in-distribution scores")
    console.print(f"{command}\n{report['machine']['cpu']}; wrote {output / 'ood.json'} and {output / 'ood.png'}")


if __name__ == "__main__":
    main()
