"""Config -> Keras callbacks, and the per-epoch checkpoint that makes `--resume` exact."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import keras

from training.config import TrainConfig

CHECKPOINT_FILE = "checkpoint.keras"
BEST_WEIGHTS_FILE = "best.weights.h5"
STATE_FILE = "state.json"


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the learning rate of every epoch into the logs, so the history and CSV carry it."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class Lookahead(keras.callbacks.Callback):
    """airbench's weight averaging: every `every` steps a slow copy of the weights moves part of the way
    to the trained ("fast") weights, and the fast weights restart from it.

    The slow copy's share grows as `final_decay * progress**3`, from 0 (plain training) at the start to
    `final_decay` at the end. The weights are also synchronised at every epoch's end, so the checkpoint
    (and so `--resume`) holds the averaged weights and the finished model is the slow copy.
    """

    def __init__(self, total_steps: int, every: int, final_decay: float) -> None:
        super().__init__()
        self.total_steps = max(1, total_steps)
        self.every = every
        self.final_decay = final_decay
        self.slow: list[Any] = []

    def averaged_variables(self) -> list[Any]:
        """Trainable weights and BatchNorm statistics; not the random layers' seed state."""
        moving = [v for v in self.model.non_trainable_variables if "moving_" in v.path]
        return [*self.model.trainable_variables, *moving]

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.slow = [keras.ops.convert_to_numpy(v) for v in self.averaged_variables()]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (batch + 1) % self.every == 0:
            self.synchronise()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.synchronise()

    def synchronise(self) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        decay = self.final_decay * min(1.0, step / self.total_steps) ** 3
        for index, variable in enumerate(self.averaged_variables()):
            fast = keras.ops.convert_to_numpy(variable)
            self.slow[index] = decay * self.slow[index] + (1.0 - decay) * fast
            variable.assign(self.slow[index])


class RunCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer state and the callbacks' counters after every epoch, atomically.

    Placed after EarlyStopping and ReduceLROnPlateau so that on resume it restores their
    counters after their own `on_train_begin` has reset them.
    """

    def __init__(self, folder: Path, early_stopping: keras.callbacks.EarlyStopping | None,
                 reduce_lr: keras.callbacks.ReduceLROnPlateau | None, resume_state: dict[str, Any] | None) -> None:
        super().__init__()
        self.folder = folder
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.resume_state = resume_state
        self.history: dict[str, list[float]] = dict(resume_state["history"]) if resume_state else {}
        self.time_offset = float(resume_state.get("train_time_s", 0.0)) if resume_state else 0.0
        self.started = time.perf_counter()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        state = self.resume_state
        if not state:
            return
        if self.early_stopping is not None and state.get("early_stopping"):
            es = state["early_stopping"]
            self.early_stopping.wait = es["wait"]
            self.early_stopping.best = es["best"]
            self.early_stopping.best_epoch = es["best_epoch"]
            best_file = self.folder / BEST_WEIGHTS_FILE
            if best_file.exists():
                current = self.model.get_weights()
                self.model.load_weights(best_file)
                self.early_stopping.best_weights = self.model.get_weights()
                self.model.set_weights(current)
        if self.reduce_lr is not None and state.get("reduce_lr"):
            rl = state["reduce_lr"]
            self.reduce_lr.wait = rl["wait"]
            self.reduce_lr.best = rl["best"]
            self.reduce_lr.cooldown_counter = rl["cooldown_counter"]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        elapsed = self.time_offset + time.perf_counter() - self.started
        logs["elapsed_s"] = elapsed  # training seconds so far, for accuracy-against-time curves
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.folder.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"epoch": epoch, "history": self.history, "train_time_s": elapsed}
        es = self.early_stopping
        if es is not None:
            if es.best_epoch == epoch and es.best_weights is not None:
                self._atomic_save_weights(es.best_weights)
            state["early_stopping"] = {"wait": es.wait, "best": float(es.best), "best_epoch": es.best_epoch}
            state["stopped"] = bool(self.model.stop_training)
        if self.reduce_lr is not None:
            rl = self.reduce_lr
            state["reduce_lr"] = {"wait": rl.wait, "best": float(rl.best), "cooldown_counter": rl.cooldown_counter}
        tmp_model = self.folder / f"tmp-{CHECKPOINT_FILE}"
        self.model.save(tmp_model)
        os.replace(tmp_model, self.folder / CHECKPOINT_FILE)
        tmp_state = self.folder / f"{STATE_FILE}.tmp"
        tmp_state.write_text(json.dumps(state))
        os.replace(tmp_state, self.folder / STATE_FILE)

    def _atomic_save_weights(self, weights: list[Any]) -> None:
        current = self.model.get_weights()
        self.model.set_weights(weights)
        tmp = self.folder / f"tmp-{BEST_WEIGHTS_FILE}"
        self.model.save_weights(tmp)
        self.model.set_weights(current)
        os.replace(tmp, self.folder / BEST_WEIGHTS_FILE)


def read_resume_state(checkpoint_folder: Path) -> dict[str, Any] | None:
    """The last finished epoch's state, or None unless both it and its checkpoint were written."""
    state_file = checkpoint_folder / STATE_FILE
    if not state_file.exists() or not (checkpoint_folder / CHECKPOINT_FILE).exists():
        return None
    return json.loads(state_file.read_text())


class CtrlCStop(keras.callbacks.Callback):
    """Ctrl-C ends training at the next batch boundary, raised from Python code here, so the interrupt
    cannot be lost inside a native TensorFlow call; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pressed = False
        self._previous: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pressed:
            self._interrupt()
        self.pressed = True

    def _interrupt(self) -> None:
        self._restore()
        raise KeyboardInterrupt

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.pressed:
            self._interrupt()

    on_test_batch_end = on_train_batch_end

    def on_train_end(self, logs: dict | None = None) -> None:
        self._restore()
        if self.pressed:
            raise KeyboardInterrupt


def build_callbacks(config: TrainConfig, run_dir: Path, resume_state: dict[str, Any] | None,
                    progress: keras.callbacks.Callback | None = None,
                    steps_per_epoch: int = 1) -> list[keras.callbacks.Callback]:
    """The run's callbacks in the order that makes resume exact (RunCheckpoint after the ones it restores)."""
    callbacks: list[keras.callbacks.Callback] = [CtrlCStop(), LearningRateLogger()]
    if config.lookahead:
        averaging = config.recipe.lookahead
        callbacks.append(Lookahead(config.epochs * steps_per_epoch, averaging.every, averaging.final_decay))
    early_stopping = reduce_lr = None
    if config.uses_validation and config.early_stopping_patience:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True, verbose=1
        )
        callbacks.append(early_stopping)
    if config.uses_validation and config.lr_schedule == "constant":
        # a schedule owns the rate; ReduceLROnPlateau can only act on a constant one
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.reduce_lr_factor, patience=config.reduce_lr_patience,
            min_lr=config.min_lr, verbose=1,
        )
        callbacks.append(reduce_lr)
    callbacks.append(RunCheckpoint(run_dir / "checkpoints", early_stopping, reduce_lr, resume_state))
    callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume_state is not None))
    callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), histogram_freq=1))
    if progress is not None:
        callbacks.append(progress)
    return callbacks
