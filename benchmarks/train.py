"""Training benchmark: run recipes with train-cifar and print test accuracy against training time.

    python benchmarks/train.py --data ../shared/data/cifar10-jpeg.tar.gz --against-cnn  # fast vs cnn, ratios
    python benchmarks/train.py --data ../shared/data/cifar10-jpeg.tar.gz --recipe fast
    python benchmarks/train.py --data ... --recipe fast --epochs-grid 4,6,8      # one run per budget
    python benchmarks/train.py --runs runs/cnn runs/cnn-bn runs/mlp/adam        # table from finished runs

Time is `train-cifar`'s own training time: from the first training step to the end of the last epoch
(data loading, evaluation and saving are not counted).

`--against-cnn` trains the default cnn, then `fast` back to back on the same machine for each time budget
(a multiple of the cnn run's time): its epochs are the most that fit the budget, from a timed training
step for the first budget and from the first fast run's own epochs after that. It prints the ratios and
the targets (90% within 1.5x the cnn's time, 87% within 0.75x).
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

from training.cpu_info import describe_cpu  # noqa: E402
from training.recipes import FAST, RECIPES  # noqa: E402

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
        "cpu": report.get("cpu", "not recorded"),
        "speedups": report.get("cpu_speedups"),
        "epoch_s": history.get("elapsed_s", []),
        "curve": list(zip(history.get("elapsed_s", []), history.get("val_accuracy", []))),
    }


def print_table(rows: list[dict]) -> None:
    header = f"{'recipe':<8} {'optimizer':<9} {'epochs':>6} {'time (s)':>9} {'test acc':>9} {'train acc':>9}  precision  run"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['recipe']:<8} {row['optimizer']:<9} {row['epochs']:>6} {row['training_time_s']:>9.0f} "
              f"{row['test_accuracy']:>9.2%} {row['train_accuracy']:>9.2%}  {row['precision']:<9}  {row['run']}")


def plot_accuracy_against_time(rows: list[dict], path: Path, budgets: list[float] = ()) -> None:
    """Validation accuracy per epoch against training time, plus each run's final test accuracy (and the
    time budgets of --against-cnn as vertical lines)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for budget in budgets:
        ax.axvline(budget / 60, color="grey", linestyle=":", linewidth=1)
    for row in rows:
        label = f"{row['recipe']}/{row['optimizer']}, {row['epochs']} epochs"
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


# The issue-16 targets: (multiple of the cnn run's training time, test accuracy fast must reach within it).
TARGETS = ((1.5, 0.90), (0.75, 0.87))


def fast_epoch_seconds(data_size: int = 50_000) -> float:
    """One epoch of `fast` on this machine, from the median of a few timed training steps in a fresh process."""
    command = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "time", "--recipe", "fast", "--steps", "5"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"timing a training step failed:\n{result.stderr[-2000:]}")
    step_ms = json.loads(result.stdout.strip().splitlines()[-1])["ms_per_step"]
    steps = -(-data_size // FAST.training.batch_size)
    return step_ms / 1000 * steps


def epochs_within(budget_s: float, epoch_s: float) -> int:
    return max(1, int(budget_s // epoch_s))


def against_cnn(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """cnn, then fast for each budget, back to back; prints the ratios and the targets."""
    cnn = read_run(run_recipe("cnn", args.data, args.output / "cnn", args.epochs, args.limit, args.extra))
    epoch_s = fast_epoch_seconds()
    rows, lines = [cnn], []
    for multiple, target in TARGETS:
        budget = multiple * cnn["training_time_s"]
        epochs = epochs_within(budget, epoch_s)
        print(f"fast within {multiple}x the cnn's {cnn['training_time_s']:.0f} s: {epochs} epochs of about {epoch_s:.0f} s")
        fast = read_run(run_recipe("fast", args.data, args.output / f"fast-{multiple}x", epochs, args.limit, args.extra))
        if fast["epoch_s"]:
            epoch_s = fast["epoch_s"][-1] / len(fast["epoch_s"])  # the real epochs, with their pipeline and callbacks
        ratio = fast["training_time_s"] / cnn["training_time_s"]
        met = ratio <= multiple and fast["test_accuracy"] >= target
        lines.append(f"fast {fast['epochs']} epochs: {fast['test_accuracy']:.2%} in {fast['training_time_s']:.0f} s = "
                     f"{ratio:.2f}x the cnn's time; target >= {target:.0%} within {multiple}x: "
                     f"{'met' if met else 'NOT met'}")
        rows.append(fast)
    return rows, ["ratios to the default cnn run on this machine, back to back:", *(f"  {line}" for line in lines)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CIFAR-10 source, as for train-cifar --data")
    parser.add_argument("--recipe", action="append", default=[], choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (with --against-cnn: the cnn's)")
    parser.add_argument("--epochs-grid", help="comma-separated epoch budgets: one run per budget and recipe")
    parser.add_argument("--limit", type=int, help="stratified subset (smoke runs)")
    parser.add_argument("--runs", nargs="*", default=[], type=Path, help="finished run folders to include")
    parser.add_argument("--output", type=Path, default=Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--against-cnn", action="store_true", help="cnn, then fast within 1.5x and 0.75x its time")
    parser.add_argument("extra", nargs="*", help="more train-cifar flags, after --")
    args = parser.parse_args()

    if args.against_cnn:
        if not args.data:
            parser.error("--against-cnn needs --data")
        rows, summary = against_cnn(args)
        finish(args, rows, summary, budgets=[m * rows[0]["training_time_s"] for m, _ in TARGETS])
        return
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
    finish(args, [read_run(folder) for folder in run_dirs])


def finish(args: argparse.Namespace, rows: list[dict], summary: list[str] = (), budgets: list[float] = ()) -> None:
    """The table, the machine it ran on, the plot and (with --json) the figures."""
    print()
    print("command:", shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    print(f"machine: {describe_cpu()}, {platform.platform()}, Python {platform.python_version()}")
    speedups = {", ".join(row["speedups"]) or "none" for row in rows if row["speedups"] is not None}
    print(f"CPU speed-ups on: {'; '.join(sorted(speedups)) or 'not recorded'}")
    print()
    print_table(rows)
    if summary:
        print("\n" + "\n".join(summary))
    args.output.mkdir(parents=True, exist_ok=True)
    plot_accuracy_against_time(rows, args.output / "accuracy_vs_time.png", budgets)
    print(f"\naccuracy against time: {args.output / 'accuracy_vs_time.png'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
