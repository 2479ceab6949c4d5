"""Writing to the BentoML model store: one complete entry per save, described by its model card."""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml._internal.models.model import ModelStore  # a staging store for atomic saves

from contract.card import FORMAT_FILES, ModelCard


def framework_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "bentoml": bentoml.__version__,
        "numpy": np.__version__,
    }
    try:
        import tf_keras

        versions["tf_keras"] = tf_keras.__version__
    except ImportError:
        pass
    return versions


def without_none(value: Any) -> Any:
    """BentoML metadata accepts no None: an unset choice is simply left out."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_none(v) for v in value if v is not None]
    return value


def save_model(
    name: str,
    model_file: Path,
    card: ModelCard,
    labels: dict[str, str],
    extra_files: Sequence[Path] = (),
) -> str:
    """Copy a saved model file (and `extra_files`, such as plots) into a new store entry; returns its tag.

    The entry is built complete in a staging folder beside the store (same file system) and moved
    in with one rename, so a save that is interrupted at any point, even by SIGKILL, leaves either
    the whole model in the store or nothing.
    """
    target = FORMAT_FILES[card.format]
    card = card.model_copy(update={
        "model_file": target,
        "framework_versions": card.framework_versions or framework_versions(),
        "plots": [path.name for path in extra_files],
    })
    full_metadata = without_none(card.to_metadata())
    store_dir = model_store_dir()
    staging = staging_dir(store_dir)
    try:
        with bentoml.models.create(
            name, labels=labels, metadata=full_metadata, _model_store=ModelStore(staging)
        ) as ref:
            destination = Path(ref.path) / target
            if model_file.is_dir():
                shutil.copytree(model_file, destination)
            else:
                shutil.copyfile(model_file, destination)
            for extra in extra_files:
                shutil.copyfile(extra, Path(ref.path) / extra.name)
        tag = ref.tag
        (store_dir / tag.name).mkdir(parents=True, exist_ok=True)
        os.rename(staging / tag.path(), store_dir / tag.path())
        latest = store_dir / tag.latest_path()
        latest.with_suffix(".tmp").write_text(str(tag.version))
        os.replace(latest.with_suffix(".tmp"), latest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(tag)


def model_store_dir() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def staging_dir(store_dir: Path) -> Path:
    """A fresh staging folder for this save; leftovers of killed saves are removed first."""
    root = store_dir.parent / "cifar-serve-staging"
    if root.is_dir():
        for leftover in root.iterdir():
            pid = leftover.name.split("-")[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
    folder = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
