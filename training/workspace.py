"""The temporary workspace of a worker other than the chief in a multi-worker run: every worker trains and
saves, but only the chief writes the real run folder, so the others write their own files here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from training.cluster import ClusterRole
from training.config import TrainConfig

PREFIX = "train-cifar-"


@contextlib.contextmanager
def worker_workspace(role: ClusterRole | None) -> Iterator[Path | None]:
    """A temporary folder for a worker that is not the chief, removed when the command ends; None for the
    chief and for a run without a cluster, which write the run folder itself."""
    if role is None or role.is_chief:
        yield None
        return
    workspace = new_workspace(f"{role.task_type}{role.index}")
    try:
        yield workspace
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def new_workspace(name: str) -> Path:
    """A fresh folder named after the worker and its pid; those that killed workers left behind are removed
    first, as their process is gone."""
    from training.store import process_alive

    for leftover in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*-*"):
        pid = leftover.name.split("-")[3]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name}-{os.getpid()}-"))


def worker_copy(resumed: tuple[TrainConfig, Path], workspace: Path) -> tuple[TrainConfig, Path]:
    """A non-chief worker resumes from a copy of the chief's checkpoints (the run folder every worker reads at
    the same path), so all workers start from the same state and only the chief writes to the run folder."""
    config, run_dir = resumed
    copy = workspace / "run"
    copy.mkdir()
    if (run_dir / "checkpoints").is_dir():
        shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    return config, copy
