"""`train-cifar` in the test process: Typer's CliRunner against `training.cli.app`, with the BentoML model store
switched to a test's own BENTOML_HOME for the call.

Each subprocess that imports TensorFlow and Keras spends 4-4.5 s of CPU before it does anything; the cases that
test what `train-cifar` does (not how a process starts, stops or talks to TensorFlow's C++ log) run here instead.
Keep a subprocess for: signals and exit codes of the real entry point, stderr written by C++ (file descriptor 2),
environment read before TensorFlow loads (CPU speed-ups, logical devices), and multi-worker clusters.
"""

from __future__ import annotations

import contextlib
import json
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


def stored_models(home: Path) -> list[dict[str, Any]]:
    """The entries of the model store at `home`, newest first, as `bentoml models list -o json` orders them, each with
    its tag and module."""
    import bentoml

    with bentoml_home(home):
        models = sorted(bentoml.models.list(), key=lambda model: model.info.creation_time, reverse=True)
        return [{"tag": str(model.tag), "module": model.info.module} for model in models]


def stored_model(tag: str, home: Path) -> dict[str, Any]:
    """One entry of the model store at `home`, read from its files, as `bentoml models get TAG -o json` gives it."""
    import bentoml

    with bentoml_home(home):
        return json.loads(json.dumps(bentoml.models.get(tag).info.to_dict(), default=str))


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """The block may train as `train-cifar` does, and starts as a fresh process would; what a run changes for the
    whole process is put back after it, so later tests see what they would have seen without it: the environment
    (the bfc-allocator speed-up sets a variable), Keras' dtype policy, the Python, NumPy, Keras and TensorFlow
    seeds, and TensorFlow's `Conv2D` gradient (the conv-input-gradient speed-up replaces it for the process:
    TensorFlow's own in the block, whatever an earlier test did, so a run reports the speed-ups it chose itself)."""
    import random

    import keras
    import numpy as np
    from keras.src.backend.common import global_state
    from tensorflow.python.eager import context

    # imported before the snapshot: what the import sets (TF_CPP_MIN_LOG_LEVEL, the console) stays, as in any process
    import training.cli  # noqa: F401

    keras_seeds = ("global_random_seed", "global_seed_generator")
    environ, policy = dict(os.environ), keras.mixed_precision.global_policy()
    python_random, numpy_random, tf_seed = random.getstate(), np.random.get_state(), context.global_seed()
    keras_seed_values = [global_state.get_global_attribute(name) for name in keras_seeds]
    replaced = _use_tensorflows_conv2d_gradient()
    try:
        yield
    finally:
        for key in set(os.environ) - set(environ):  # only what changed: TensorFlow's threads read it too
            del os.environ[key]
        os.environ.update({key: value for key, value in environ.items() if os.environ.get(key) != value})
        keras.mixed_precision.set_global_policy(policy)
        random.setstate(python_random)
        np.random.set_state(numpy_random)
        for name, value in zip(keras_seeds, keras_seed_values):
            global_state.set_global_attribute(name, value)
        context.set_global_seed(tf_seed)
        _use_tensorflows_conv2d_gradient()
        if replaced:  # as before the block: replaced once, and that remembered
            from training.cpu_kernels import use_forward_conv_for_input_gradient

            use_forward_conv_for_input_gradient()


def _use_tensorflows_conv2d_gradient() -> bool:
    """Put TensorFlow's own `Conv2D` gradient back (forgetting that `training.cpu_kernels` replaced it); whether it
    was replaced."""
    from tensorflow.python.framework import ops

    from training.cpu_kernels import use_forward_conv_for_input_gradient

    gradients = ops._gradient_registry._registry["Conv2D"]
    replaced = hasattr(gradients["type"], "original")
    gradients["type"] = getattr(gradients["type"], "original", gradients["type"])
    use_forward_conv_for_input_gradient.cache_clear()
    return replaced
