"""One training run as named steps: runtime -> build or resume -> fit -> save -> evaluate -> write outputs -> store
(in a multi-worker cluster, the last three on the chief only)."""

from __future__ import annotations

import errno
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from rich.console import Console

from contract.card import RELIABILITY_PLOT, Calibration, DataInfo, Metrics, ModelCard
from contract.predictor import batched, compile_inference, compile_logits
from training import calibration, cpu_info, cpu_kernels, models, report, scale, store
from training.callbacks import CHECKPOINT_FILE, RunCheckpoint, build_callbacks, read_resume_state
from training.config import TrainConfig
from training.data import Dataset
from training.models import TTA_DESCRIPTION
from training.optimizers import build_optimizer, optimizer_summary
from training.progress import RichProgress
from training.runs import RunError

# images and labels -> the served predictions (logits, probabilities), as `serving_forward` compiles them
Serve = Callable[[np.ndarray, np.ndarray], calibration.Predictions]

REPORT_FILE = "report.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "model.keras"
PLOT_FILES = ("curves.png", "confusion_matrix.png")


@dataclass(frozen=True)
class Run:
    """One run's inputs, shared by its steps."""

    config: TrainConfig
    data: Dataset
    run_dir: Path
    console: Console

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def steps_per_epoch(self) -> int:
        return int(np.ceil(len(self.data.x_train) / self.config.batch_size))

    @property
    def resume_dir(self) -> Path:
        """The folder `--resume` takes: the chief's run folder, also on a worker that writes elsewhere."""
        return self.config.output or self.run_dir


@dataclass(frozen=True)
class Runtime:
    """Where the run computes: the devices it uses, its precision policy and tf.distribute strategy, the
    processes that train together (1 unless multi-worker) and whether this one writes the outputs."""

    devices: tuple[str, ...]
    policy: str
    strategy: tf.distribute.Strategy
    workers: int = 1
    chief: bool = True


@dataclass(frozen=True)
class Fitted:
    """The trained model, its per-epoch history (resumed epochs included) and its training seconds."""

    model: keras.Model
    history: dict[str, list[float]]
    training_time_s: float

    @property
    def parameters(self) -> int:
        return int(self.model.count_params())


@dataclass(frozen=True)
class Evaluation:
    """Test scores through the serving path (TTA where the recipe augments), train scores on one view."""

    metrics: dict[str, Any]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    test: calibration.Predictions  # the served predictions of the test images


@dataclass(frozen=True)
class RunResult:
    """What the CLI prints and compares for one finished run."""

    config: TrainConfig
    run_dir: Path
    tag: str
    metrics: dict[str, Any]
    parameters: int
    history: dict[str, list[float]]
    training_time_s: float
    calibrated: calibration.Fitted | None = None


def train(config: TrainConfig, data: Dataset, run_dir: Path, console: Console,
          resume: bool = False) -> RunResult | None:
    """Train one resolved config on loaded data and store the model; each step is a function below.

    In a multi-worker cluster every worker trains and saves (the others into their temporary folder), and
    only the chief evaluates, writes the report and stores the model; the others return None.
    """
    run = Run(config, data, run_dir, console)
    runtime = set_up_runtime(run)
    state = read_resume(run) if resume else None
    fitted = fit(run, build_or_resume(run, runtime, state), state)
    save_final_model(run, fitted)
    if not runtime.chief:
        return None
    serve = serving_forward(run, fitted)
    evaluation = evaluate(run, fitted, serve)
    calibrated = calibrate(run, serve, evaluation)
    write_outputs(run, fitted, evaluation, runtime, calibrated)
    tag = store_model(run, fitted, evaluation, runtime, calibrated)
    return RunResult(config, run_dir, tag, evaluation.metrics, fitted.parameters, fitted.history,
                     fitted.training_time_s, calibrated)


def needed_disk_bytes(parameters: int) -> int:
    """Room for a run's files: checkpoint with optimizer slots, best weights, final model, logs."""
    return parameters * 4 * 6 + 50 * 1024 * 1024


def check_disk_space(folders: list[Path], parameters: int) -> None:
    """Fail before training, not after, when a folder the run writes to is nearly full."""
    needed = needed_disk_bytes(parameters)
    for folder in folders:
        existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        if free < needed:
            raise RunError(
                f"not enough disk space for {folder}: about {needed / 2**20:.0f} MiB needed, "
                f"{free / 2**20:.0f} MiB free"
            )


def set_up_runtime(run: Run) -> Runtime:
    """Devices, precision and strategy must be fixed before any model exists; the seed last, so runs repeat."""
    config = run.config
    devices = scale.configure_devices()
    on_gpu = devices[0].startswith("/gpu")
    policy = scale.set_precision(config.mixed_precision, on_gpu, cpu_default=config.recipe.bf16_on_cpu)
    if policy == "mixed_bfloat16" and not cpu_info.has_native_bf16():
        run.console.print("[yellow]warning: this CPU has no native bfloat16 (AVX512-BF16 or AMX); mixed precision "
                          "is emulated and training runs many times slower: drop --mixed-precision[/]")
    strategy = scale.build_strategy(config.distribute, devices)
    keras.utils.set_random_seed(config.seed)
    role = scale.cluster_role() if config.distribute == "multi-worker" else None
    if role is not None:
        return Runtime(tuple(strategy.extended.worker_devices), policy, strategy, role.workers, role.is_chief)
    return Runtime(devices if config.distribute != "none" else devices[:1], policy, strategy)


def read_resume(run: Run) -> dict[str, Any] | None:
    """The checkpoint state to continue from; without one the run starts at epoch 1, and says so."""
    state = read_resume_state(run.checkpoint_dir)
    if state is None:
        run.console.print(f"[yellow]no checkpoint in {run.checkpoint_dir}; starting this run from epoch 1[/]")
    return state


def build_model(config: TrainConfig, data: Dataset) -> keras.Model:
    """The `--model` recipe's network with this run's l2, dropout and augmentation."""
    return models.build(config.recipe, data.x_train, len(data.class_names), config.seed)


def build_or_resume(run: Run, runtime: Runtime, state: dict[str, Any] | None) -> keras.Model:
    """The checkpoint's model and optimizer state when resuming, else a new compiled model."""
    config = run.config
    with runtime.strategy.scope():
        if state:
            return keras.saving.load_model(run.checkpoint_dir / CHECKPOINT_FILE, safe_mode=True)
        model = build_model(config, run.data)
        model.compile(**compile_arguments(config, run.steps_per_epoch))
    return model


def compile_arguments(config: TrainConfig, steps_per_epoch: int) -> dict[str, Any]:
    """How a new model is compiled for training: the run's optimizer and schedule, its loss, accuracy."""
    return {
        "optimizer": build_optimizer(config, steps_per_epoch),
        "loss": keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        "metrics": ["accuracy"],
    }


def to_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    """Batched one-hot pairs (label smoothing needs them), reshuffled every epoch when a seed is given.

    `batch_size` is the global batch: under a strategy each replica (every worker's every device) trains its
    share of each batch. In-memory arrays have no files to split between workers, so sharding is by data:
    every worker builds the same seeded order and keeps its part of each batch.
    """
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, num_classes)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def fit(run: Run, model: keras.Model, state: dict[str, Any] | None) -> Fitted:
    """Train from the first unfinished epoch, checkpointing every epoch so a killed run resumes exactly."""
    config, data = run.config, run.data
    num_classes = len(data.class_names)
    train_data = to_dataset(data.x_train, data.y_train, num_classes, config.batch_size, config.seed)
    val_data = (
        to_dataset(data.x_val, data.y_val, num_classes, config.batch_size, None) if config.uses_validation else None
    )
    progress = RichProgress(f"{config.model}/{config.optimizer}", config.epochs, run.steps_per_epoch, run.console)
    callbacks = build_callbacks(config, run.run_dir, state, progress, run.steps_per_epoch)
    checkpoint = next(c for c in callbacks if isinstance(c, RunCheckpoint))
    check_disk_space([run.run_dir, store.model_store_dir()], int(model.count_params()))
    started = time.perf_counter()
    initial_epoch = state["epoch"] + 1 if state else 0
    if state is not None and (state.get("stopped") or initial_epoch >= config.epochs):
        if checkpoint.early_stopping is not None and checkpoint.early_stopping.best_weights is not None:
            model.set_weights(checkpoint.early_stopping.best_weights)
    else:
        fit_or_explain(run, model, train_data, val_data, initial_epoch, callbacks)
    previous_time = state.get("train_time_s", 0.0) if state else 0.0
    return Fitted(model, checkpoint.history, previous_time + time.perf_counter() - started)


# What a collective op raises when a peer of a multi-worker cluster is gone (TensorFlow aborts them then).
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                    tf.errors.CancelledError)


def fit_or_explain(run: Run, model: keras.Model, train_data: tf.data.Dataset, val_data: tf.data.Dataset | None,
                   initial_epoch: int, callbacks: list[keras.callbacks.Callback]) -> None:
    """`model.fit`; a full disk, a lost permission or a lost peer becomes a RunError that says how to resume."""
    try:
        model.fit(train_data, validation_data=val_data, epochs=run.config.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=0, shuffle=False)  # the dataset shuffles itself (to_dataset)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        raise RunError(
            f"cannot write the run's files ({error.strerror}); the last finished epoch is kept: "
            f"free space or fix permissions, then: train-cifar --resume {run.resume_dir}"
        ) from None
    except LOST_PEER_ERRORS as error:
        if scale.cluster_role() is None:
            raise
        reason = re.sub(r"^\{\{[^}]*\}\}\s*", "", (str(error).strip().splitlines() or [""])[0]).rstrip(": ")
        raise RunError(
            f"lost a worker of the cluster ({reason or type(error).__name__}); the chief keeps the last finished "
            f"epoch: start every worker again with: train-cifar --resume {run.resume_dir}"
        ) from None


def save_final_model(run: Run, fitted: Fitted) -> None:
    """The finished model as model.keras, on every worker of a cluster (the others into their temporary
    folder): TensorFlow's rule for multi-worker saving, and harmless where saving needs no peer."""
    fitted.model.save(run.run_dir / MODEL_FILE)


def serving_forward(run: Run, fitted: Fitted) -> Serve:
    """The compiled inference function the service will run (contract.predictor's `compile_logits`), with
    test-time augmentation where the recipe augments: images and labels -> the served predictions."""
    tta = run.config.recipe.augments
    predict, missing = compile_logits(fitted.model, "uint8", flip_tta=tta, translate_tta=tta)
    return lambda images, labels: calibration.Predictions.served(predict, images, labels, missing)


def evaluate(run: Run, fitted: Fitted, serve: Serve) -> Evaluation:
    """Test metrics through the same compiled inference function the service uses (`serving_forward`).

    Train accuracy, and with test-time augmentation a second test accuracy, use one view per image.
    """
    data, tta = run.data, run.config.recipe.augments
    single_view = compile_inference(fitted.model, "uint8", flip_tta=False)  # probabilities
    served = serve(data.x_test, data.y_test)
    test = report.evaluation_report(served.probabilities, data.y_test, data.class_names)
    train_probabilities = batched(single_view, data.x_train)
    val_accuracy = fitted.history.get("val_accuracy", [])
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_accuracy": report.accuracy(train_probabilities, data.y_train),
        "train_loss": report.cross_entropy(train_probabilities, data.y_train),
        "best_val_accuracy": max(val_accuracy) if val_accuracy else None,
        "epochs_run": len(fitted.history.get("loss", [])),
    }
    if tta:
        metrics["test_accuracy_single_view"] = report.accuracy(batched(single_view, data.x_test), data.y_test)
    return Evaluation(metrics, test["per_class"], test["confusion_matrix"], served)


def calibrate(run: Run, serve: Serve,
              evaluation: Evaluation) -> calibration.Fitted | None:
    """The temperature and out-of-distribution threshold on the validation split (timed with its forward
    pass); a run without one is stored uncalibrated, and says so."""
    data, config = run.data, run.config
    if not len(data.y_val):
        run.console.print("[yellow]no validation split: the model is stored uncalibrated (no temperature, no "
                          "out-of-distribution threshold); --validation-split 0.1 calibrates it[/]")
        return None
    started = time.perf_counter()
    held_out = serve(data.x_val, data.y_val)
    fitted = calibration.fit_calibration(held_out, evaluation.test, config.ood_flag_rate, config.ood_score,
                                         lambda text: run.console.print(f"[yellow]warning: {text}[/]"))
    calibration.reliability_plot(run.run_dir, fitted, evaluation.test, held_out, f"{config.model} / {config.optimizer}")
    return calibration.Fitted(fitted, time.perf_counter() - started)


def write_outputs(run: Run, fitted: Fitted, evaluation: Evaluation, runtime: Runtime,
                  calibrated: calibration.Fitted | None) -> None:
    """Plots, report.json and history.json (beside the final model): the run folder a person reads afterwards."""
    config, data, run_dir = run.config, run.data, run.run_dir
    title = f"{config.model} / {config.optimizer}: test accuracy {evaluation.metrics['test_accuracy']:.2%}"
    report.plot_curves(fitted.history, run_dir / PLOT_FILES[0], title)
    matrix = np.array(evaluation.confusion_matrix)
    report.plot_confusion_matrix(matrix, data.class_names, run_dir / PLOT_FILES[1], title)
    full_report = {
        "metrics": evaluation.metrics,
        "per_class": evaluation.per_class,
        "confusion_matrix": evaluation.confusion_matrix,
        "class_names": data.class_names,
        "parameters": fitted.parameters,
        "training_time_s": fitted.training_time_s,
        "precision_policy": runtime.policy,
        "cpu": cpu_info.describe_cpu(),
        "cpu_speedups": cpu_kernels.active_speedups(),
        "devices": list(runtime.devices),
        "workers": runtime.workers,
        "data": {"source": data.source, **data.sizes()},
        "calibration": calibrated.calibration.model_dump(mode="json") if calibrated else None,
        "calibration_time_s": calibrated.seconds if calibrated else None,
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(full_report, indent=2))
    (run_dir / HISTORY_FILE).write_text(json.dumps(fitted.history, indent=2))


def store_model(run: Run, fitted: Fitted, evaluation: Evaluation, runtime: Runtime,
                calibrated: calibration.Fitted | None) -> str:
    """Save the final model with its card and plots to the BentoML store; returns the tag."""
    config = run.config
    labels = {"architecture": config.model, "optimizer": config.optimizer, "framework": "keras"}
    card = model_card(run, fitted, evaluation, runtime, calibrated.calibration if calibrated else None)
    plots = [run.run_dir / name for name in PLOT_FILES] + ([run.run_dir / RELIABILITY_PLOT] if calibrated else [])
    return store.save_model(config.name, run.run_dir / MODEL_FILE, card, labels, extra_files=plots)


def model_card(run: Run, fitted: Fitted, evaluation: Evaluation, runtime: Runtime,
               fitted_calibration: Calibration | None = None) -> ModelCard:
    """Everything the service and clients need to know about the stored model, typed."""
    config, data, tta = run.config, run.data, run.config.recipe.augments
    return ModelCard(
        class_names=data.class_names,
        architecture=config.model,
        parameters=fitted.parameters,
        preprocessing=config.recipe.preprocessing + (TTA_DESCRIPTION if tta else ""),
        input_scaling="uint8",
        flip_tta=tta,
        translate_tta=tta,
        config=json.loads(config.model_dump_json()),
        optimizer=optimizer_summary(fitted.model.optimizer),
        metrics=Metrics(**evaluation.metrics),
        per_class=evaluation.per_class,
        training_time_s=round(fitted.training_time_s, 2),
        precision_policy=runtime.policy,
        distribute=config.distribute,
        workers=runtime.workers,
        data=DataInfo(source=data.source, **data.sizes()),
        run_dir=str(run.run_dir.resolve()),
        calibration=fitted_calibration,
    )
