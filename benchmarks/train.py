"""Training benchmark: run recipes with train-cifar and print test accuracy against training time.

    python benchmarks/train.py --data ../shared/data/cifar10-jpeg.tar.gz --recipe fast
    python benchmarks/train.py --data ... --recipe fast --epochs-grid 4,6,8      # one run per budget
    python benchmarks/train.py --runs runs/cnn runs/cnn-bn runs/mlp/adam        # table from finished runs

Time is `train-cifar`'s own training time: from the first training step to the end of the last epoch
(data loading, evaluation and saving are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training.recipes import RECIPES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(recipe: str, data: str, output: Path, epochs: int | None, limit: int | None, extra: list[str]) -> Path:
    command = [sys.executable, "-c", "from training.cli import main; main()", "--data", data, "--model", recipe,
               "--output", str(output), "--name", f"cifar10-bench-{recipe}"]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if limit is not None:
        command += ["--limit", str(limit)]
    command += extra
    print("$", shlex.join(["train-cifar", *command[3:]]), flush=True)
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        sys.exit(f"train-cifar failed for {recipe} (exit {result.returncode})")
    return output


def read_run(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    return {
        "run": str(run_dir),
        "recipe": config["model"],
        "optimizer": config["optimizer"],
        "epochs": report["metrics"]["epochs_run"],
        "test_accuracy": report["metrics"]["test_accuracy"],
        "train_accuracy": report["metrics"]["train_accuracy"],
        "training_time_s": report["training_time_s"],
        "parameters": report["parameters"],
        "precision": report.get("precision_policy", "float32"),
        "curve": list(zip(history.get("elapsed_s", []), history.get("val_accuracy", []))),
    }


def print_table(rows: list[dict]) -> None:
    header = f"{'recipe':<8} {'optimizer':<9} {'epochs':>6} {'time (s)':>9} {'test acc':>9} {'train acc':>9}  precision  run"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['recipe']:<8} {row['optimizer']:<9} {row['epochs']:>6} {row['training_time_s']:>9.0f} "
              f"{row['test_accuracy']:>9.2%} {row['train_accuracy']:>9.2%}  {row['precision']:<9}  {row['run']}")


def plot_accuracy_against_time(rows: list[dict], path: Path) -> None:
    """Validation accuracy per epoch against training time, plus each run's final test accuracy."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        label = f"{row['recipe']}/{row['optimizer']}"
        if row["curve"]:
            times, accuracies = zip(*row["curve"])
            ax.plot([t / 60 for t in times], accuracies, alpha=0.6, label=f"{label} (validation)")
        ax.scatter([row["training_time_s"] / 60], [row["test_accuracy"]], marker="*", s=120, label=f"{label} (test)")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("CIFAR-10 accuracy against training time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CIFAR-10 source, as for train-cifar --data")
    parser.add_argument("--recipe", action="append", default=[], choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--epochs-grid", help="comma-separated epoch budgets: one run per budget and recipe")
    parser.add_argument("--limit", type=int, help="stratified subset (smoke runs)")
    parser.add_argument("--runs", nargs="*", default=[], type=Path, help="finished run folders to include")
    parser.add_argument("--output", type=Path, default=Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("extra", nargs="*", help="more train-cifar flags, after --")
    args = parser.parse_args()

    run_dirs = list(args.runs)
    budgets = [int(e) for e in args.epochs_grid.split(",")] if args.epochs_grid else [args.epochs]
    for recipe in args.recipe:
        if not args.data:
            parser.error("--recipe needs --data")
        for epochs in budgets:
            folder = args.output / (recipe if epochs is None else f"{recipe}-{epochs}ep")
            run_dirs.append(run_recipe(recipe, args.data, folder, epochs, args.limit, args.extra))
    if not run_dirs:
        parser.error("give --recipe (with --data) or --runs")
    rows = [read_run(folder) for folder in run_dirs]

    print()
    print("command:", shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    print(f"machine: {os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}")
    print()
    print_table(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    plot_accuracy_against_time(rows, args.output / "accuracy_vs_time.png")
    print(f"\naccuracy against time: {args.output / 'accuracy_vs_time.png'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
