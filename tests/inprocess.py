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

from bentoml._internal.configuration.containers import BentoMLContainer
from typer.testing import CliRunner


@contextlib.contextmanager
def bentoml_home(home: Path) -> Iterator[None]:
    """BentoML's stores under `home` for the block (what BENTOML_HOME does for a new process), then back."""
    previous = BentoMLContainer.bentoml_home.get()
    saved_env = os.environ.get("BENTOML_HOME")
    home.mkdir(parents=True, exist_ok=True)
    _point_stores_at(str(home))
    os.environ["BENTOML_HOME"] = str(home)
    try:
        yield
    finally:
        _point_stores_at(previous)
        if saved_env is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = saved_env


def _point_stores_at(home: str) -> None:
    """The home, its store folders and the stores themselves: each is derived from the home once and memorised
    (a provider's reset() drops only a value set on it, not the memorised one), so each is set here."""
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.models import ModelStore

    BentoMLContainer.bentoml_home.set(home)
    folders = {"model_store_dir": "models", "bento_store_dir": "bentos", "tmp_bento_store_dir": "tmp",
               "env_store_dir": "envs"}
    for provider, folder in folders.items():
        getattr(BentoMLContainer, provider).set(os.path.join(home, folder))
    BentoMLContainer.model_store.set(ModelStore(os.path.join(home, "models")))
    BentoMLContainer.bento_store.set(BentoStore(os.path.join(home, "bentos")))


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


@contextlib.contextmanager
def kept_process_state() -> Iterator[None]:
    """What an in-process `train-cifar` or training may change for the rest of the session, put back after the
    block: os.environ, the Keras dtype policy, and the random seeds (Python, NumPy, Keras, TensorFlow)."""
    import random

    import keras
    import numpy as np
    from keras.src.backend.common import global_state
    from tensorflow.python.eager import context

    seeds = ("global_random_seed", "global_seed_generator")
    saved = (dict(os.environ), keras.mixed_precision.global_policy(), random.getstate(), np.random.get_state(),
             [global_state.get_global_attribute(name) for name in seeds], context.global_seed())
    try:
        yield
    finally:
        environ, policy, python_state, numpy_state, keras_seeds, tf_seed = saved
        for key in set(os.environ) - set(environ):  # only what changed: TensorFlow's threads read it too
            del os.environ[key]
        os.environ.update({key: value for key, value in environ.items() if os.environ.get(key) != value})
        keras.mixed_precision.set_global_policy(policy)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for name, value in zip(seeds, keras_seeds):
            global_state.set_global_attribute(name, value)
        context.set_global_seed(tf_seed)
