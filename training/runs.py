"""Run folders, planned before training: where each run writes, its config written first so an unwritable
folder fails at once, and the config an interrupted run is resumed with. No TensorFlow here, so these checks
run before it loads."""

from __future__ import annotations

import errno
import os
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from training.config import TrainConfig

CONFIG_FILE = "config.json"
RUNS_ROOT = Path("runs")  # where runs without --output go, under the current folder


class RunError(Exception):
    """A run that cannot start or continue for a reason the user can fix."""


def default_run_dir(config: TrainConfig) -> Path:
    """runs/<name>-<model>-<optimizer>-<time>: runs never overwrite each other."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS_ROOT / f"{config.name}-{config.model}-{config.optimizer}-{stamp}"


def prepare_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Create the run folder and write the config now, so an unwritable folder fails before training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    except OSError as error:
        raise RunError(f"cannot write the run folder {run_dir}: {error.strerror or error}") from None


def check_run_folder(folder: Path) -> None:
    """Fail now, before TensorFlow loads, where `folder` could not be created: the nearest part of its path that
    exists must be a folder this process may write to. Nothing is created yet, so a command that fails later
    (a cluster that does not form) leaves no folder behind; `prepare_run_dir` still catches the rest."""
    existing = next(path for path in [folder.absolute(), *folder.absolute().parents] if path.exists())
    if not existing.is_dir():
        raise RunError(f"cannot write the run folder {folder}: {os.strerror(errno.ENOTDIR)}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write the run folder {folder}: {os.strerror(errno.EACCES)}")


def load_run_config(run_dir: Path) -> TrainConfig:
    """The config a run folder was started with, so --resume trains exactly that."""
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        raise RunError(f"nothing to resume in {run_dir}: no {CONFIG_FILE}")
    try:
        return TrainConfig.model_validate_json(config_file.read_text())
    except (OSError, ValidationError) as error:
        reason = error.errors()[0]["msg"] if isinstance(error, ValidationError) else error.strerror or error
        raise RunError(f"cannot resume from {config_file}: {reason}") from None


def plan_runs(base: TrainConfig, optimizers: list[str | None],
              workspace: Path | None = None) -> list[tuple[TrainConfig, Path]]:
    """One resolved config and run folder per optimizer; everything else equal.

    A worker other than the chief writes under `workspace` (temporary), its config still naming the chief's
    run folder (what `--resume` takes).
    """
    runs = []
    for name in optimizers:
        config = base.model_copy(update={"optimizer": name}).resolved()
        if base.output is None:
            run_dir = default_run_dir(config)
        else:
            run_dir = base.output / config.optimizer if len(optimizers) > 1 else base.output
        config = config.model_copy(update={"output": run_dir})
        if workspace is not None:
            run_dir = workspace / config.optimizer
        prepare_run_dir(run_dir, config)
        runs.append((config, run_dir))
    return runs
