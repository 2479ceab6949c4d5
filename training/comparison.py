"""The optimizer comparison of a `train-cifar` call with several --optimizer: a table on the console, and
comparison.json and comparison.png in one folder."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from training.config import TrainConfig
from training.runs import RUNS_ROOT

if TYPE_CHECKING:
    from training.train import RunResult

COLUMNS = ("optimizer", "best val acc", "test acc", "epochs", "wall time (s)", "model tag")


def comparison_dir(config: TrainConfig, output: Path | None) -> Path:
    """Where the optimizer comparison goes: --output itself, or a new folder under runs/."""
    if output is not None:
        return output
    return RUNS_ROOT / f"compare-{config.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def comparison_row(result: RunResult) -> dict[str, Any]:
    """One optimizer's line of comparison.json."""
    m = result.metrics
    return {
        "optimizer": result.config.optimizer,
        "best_val_accuracy": m["best_val_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "epochs_run": m["epochs_run"],
        "wall_time_s": round(result.training_time_s, 1),
        "tag": result.tag,
    }


def comparison_table(rows: list[dict[str, Any]], model: str) -> Table:
    """The rows as the console shows them: percentages, whole seconds, "-" without validation data."""
    table = Table(title=f"optimizer comparison ({model})")
    for column in COLUMNS:
        table.add_column(column)
    for row in rows:
        best_val = "-" if row["best_val_accuracy"] is None else f"{row['best_val_accuracy']:.2%}"
        table.add_row(row["optimizer"], best_val, f"{row['test_accuracy']:.2%}", str(row["epochs_run"]),
                      f"{row['wall_time_s']:.0f}", row["tag"])
    return table


def print_comparison(results: list[RunResult], folder: Path, console: Console) -> None:
    """A table of the optimizers, and comparison.json and .png in `folder`."""
    from training.report import plot_comparison  # matplotlib, only when there is something to compare

    model = results[0].config.model
    rows = [comparison_row(result) for result in results]
    console.print(comparison_table(rows, model))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps(rows, indent=2))
    plot_comparison({r.config.optimizer: r.history for r in results}, folder / "comparison.png",
                    f"{model}: optimizers compared")
    console.print(f"comparison written to {folder / 'comparison.png'} and {folder / 'comparison.json'}")
