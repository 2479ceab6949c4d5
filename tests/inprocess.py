"""`train-cifar` in the test process: Typer's CliRunner against `training.cli.app`, with the BentoML model store
switched to a test's own BENTOML_HOME for the call.

Each subprocess that imports TensorFlow and Keras spends 4-4.5 s of CPU before it does anything; the cases that
test what `train-cifar` does (not how a process starts, stops or talks to TensorFlow's C++ log) run here instead.
Keep a subprocess for: signals and exit codes of the real entry point, stderr written by C++ (file descriptor 2),
environment read before TensorFlow loads (CPU speed-ups, logical devices), and multi-worker clusters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentoml._internal.configuration.containers import BentoMLContainer
from typer.testing import CliRunner


@contextlib.contextmanager
def bentoml_home(home: Path) -> Iterator[None]:
    """BentoML's stores under `home` for the block (what BENTOML_HOME does for a new process), then back.

    BentoML keeps the home, its folders and its stores as cached singletons (simple_di): `reset()` drops a value
    that was `set()`, never the cache, so each of them is patched here, and each patch undone after the block.
    """
    saved_env = os.environ.get("BENTOML_HOME")
    with contextlib.ExitStack() as patches:
        for provider, value in _stores_under(home):
            patches.enter_context(provider.patch(value))
        os.environ["BENTOML_HOME"] = str(home)
        try:
            yield
        finally:
            if saved_env is None:
                os.environ.pop("BENTOML_HOME", None)
            else:
                os.environ["BENTOML_HOME"] = saved_env


def _stores_under(home: Path) -> list[tuple[Any, Any]]:
    """BentoMLContainer's providers of the home, its folders and stores, with their values for `home`."""
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.models import ModelStore

    folders = {name: home / name for name in ("models", "bentos", "tmp", "envs")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    container = BentoMLContainer
    return [
        (container.bentoml_home, str(home)),
        (container.model_store_dir, str(folders["models"])),
        (container.bento_store_dir, str(folders["bentos"])),
        (container.tmp_bento_store_dir, str(folders["tmp"])),
        (container.env_store_dir, str(folders["envs"])),
        (container.model_store, ModelStore(str(folders["models"]))),
        (container.bento_store, BentoStore(str(folders["bentos"]))),
        (container.tmp_bento_store, BentoStore(str(folders["tmp"]))),
    ]


@dataclass(frozen=True)
class Run:
    """What a `train-cifar` call left: its exit code, and stdout and stderr apart."""

    returncode: int
    stdout: str
    stderr: str


def train_cifar(*args: str, home: Path) -> Run:
    """`train-cifar ARGS` with its model store at `home`, exit code and messages as `training.cli.main` gives them."""
    import keras

    from training.cli import app, exit_code_of

    runner = CliRunner()
    with bentoml_home(home):
        result = runner.invoke(app, list(args), standalone_mode=False, terminal_width=200)
    keras.backend.clear_session()
    if isinstance(result.exception, SystemExit):  # the command called sys.exit itself
        return Run(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    code, message = exit_code_of(result.exception, result.return_value)
    return Run(returncode=code, stdout=result.stdout, stderr=result.stderr + message)
