"""A rich progress bar over epochs and batches, with one summary line per epoch."""

from __future__ import annotations

from typing import Any

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress(keras.callbacks.Callback):
    """A transient bar for the running epoch, then one printed line per epoch that stays in the log."""

    def __init__(self, label: str, total_epochs: int, steps_per_epoch: int, console: Console) -> None:
        super().__init__()
        self.label = label
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.task = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.progress.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        description = f"{self.label} epoch {epoch + 1}/{self.total_epochs}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=self.steps_per_epoch, metrics="")
        self.progress.reset(self.task, total=self.steps_per_epoch, description=description, metrics="")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        metrics = f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f}"
        self.progress.update(self.task, completed=batch + 1, metrics=metrics)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        parts = [f"{key} {value:.4g}" for key, value in logs.items()]
        self.console.print(f"{self.label} epoch {epoch + 1}/{self.total_epochs}: " + ", ".join(parts))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.progress.stop()
