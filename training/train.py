"""One training run, top to bottom: config -> data + model + optimizer + callbacks -> fit -> report -> store."""

from __future__ import annotations

import errno
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from rich.console import Console

from training import report, scale, store
from training.callbacks import CHECKPOINT_FILE, build_callbacks, read_resume_state
from training.config import TrainConfig
from training.data import Dataset
from training.models import PREPROCESSING, TTA_DESCRIPTION, build_cnn, build_cnn_bn, build_fast, build_mlp, whitening_filters
from training.optimizers import build_optimizer, optimizer_summary
from training.progress import RichProgress

# Recipes that default to bfloat16 mixed precision on CPUs that compute it natively.
BF16_ON_CPU = {"fast"}
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
MODEL_FILE = "model.keras"


class RunError(Exception):
    """A run that cannot start or continue for a reason the user can fix."""


@dataclass
class RunResult:
    config: TrainConfig
    run_dir: Path
    tag: str
    metrics: dict[str, Any]
    parameters: int
    history: dict[str, list[float]]


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}-{config.model}-{config.optimizer}-{stamp}"


def prepare_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Create the run folder and write the config now, so an unwritable folder fails before training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    except OSError as error:
        raise RunError(f"cannot write the run folder {run_dir}: {error.strerror or error}") from None


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


def load_run_config(run_dir: Path) -> TrainConfig:
    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        raise RunError(f"nothing to resume in {run_dir}: no {CONFIG_FILE}")
    return TrainConfig.model_validate_json(config_file.read_text())


def build_model(config: TrainConfig, data: Dataset) -> keras.Model:
    num_classes = len(data.class_names)
    if config.model == "cnn":
        return build_cnn(l2=config.l2, dropout=config.dropout, num_classes=num_classes)
    if config.model == "cnn-bn":
        return build_cnn_bn(l2=config.l2, dropout=config.dropout, augment=config.augment,
                            num_classes=num_classes, seed=config.seed)
    if config.model == "mlp":
        return build_mlp(dropout=config.dropout, num_classes=num_classes)
    return build_fast(whitening_filters(data.x_train[:5000]), l2=config.l2, augment=config.augment,
                      num_classes=num_classes, seed=config.seed)


def to_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, num_classes)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def uses_tta(config: TrainConfig) -> bool:
    """Recipes trained with flips and translations are evaluated, and served, with test-time augmentation:
    the image, its mirror, and both shifted one pixel up-left and down-right (as airbench evaluates)."""
    return config.model in ("cnn-bn", "fast") and bool(config.augment)


def evaluate(model: keras.Model, config: TrainConfig, data: Dataset) -> dict[str, Any]:
    """Test and train metrics through the same compiled inference function the service uses.

    Train accuracy, and with test-time augmentation a second test accuracy, use one view per image.
    """
    tta = uses_tta(config)
    predict = store.compile_inference(model, "uint8", flip_tta=tta, translate_tta=tta)
    single_view = store.compile_inference(model, "uint8", flip_tta=False) if tta else predict

    def probabilities(function: Any, x: np.ndarray) -> np.ndarray:
        return np.concatenate([function(x[i : i + 1024]) for i in range(0, len(x), 1024)])

    test = report.evaluation_report(probabilities(predict, data.x_test), data.y_test, data.class_names)
    train_probabilities = probabilities(single_view, data.x_train)
    results = {
        "test": test,
        "train_accuracy": report.accuracy(train_probabilities, data.y_train),
        "train_loss": report.cross_entropy(train_probabilities, data.y_train),
    }
    if tta:
        results["test_accuracy_single_view"] = report.accuracy(probabilities(single_view, data.x_test), data.y_test)
    return results


def train(config: TrainConfig, data: Dataset, run_dir: Path, console: Console, resume: bool = False) -> RunResult:
    devices = scale.configure_devices()
    on_gpu = devices[0].startswith("/gpu")
    policy = scale.set_precision(config.mixed_precision, on_gpu, cpu_default=config.model in BF16_ON_CPU)
    if policy == "mixed_bfloat16" and not scale.cpu_has_bf16():
        console.print("[yellow]warning: this CPU has no native bfloat16 (AVX512-BF16 or AMX); mixed precision "
                      "is emulated and training runs many times slower: drop --mixed-precision[/]")
    strategy = scale.build_strategy(config.distribute, devices)
    keras.utils.set_random_seed(config.seed)

    checkpoint_dir = run_dir / "checkpoints"
    resume_state = read_resume_state(checkpoint_dir) if resume else None
    if resume and resume_state is None:
        console.print(f"[yellow]no checkpoint in {checkpoint_dir}; starting this run from epoch 1[/]")
    initial_epoch = resume_state["epoch"] + 1 if resume_state else 0
    previous_time = resume_state.get("train_time_s", 0.0) if resume_state else 0.0

    num_classes = len(data.class_names)
    steps_per_epoch = int(np.ceil(len(data.x_train) / config.batch_size))
    with strategy.scope():
        if resume_state:
            model = keras.saving.load_model(checkpoint_dir / CHECKPOINT_FILE, safe_mode=True)
        else:
            model = build_model(config, data)
            model.compile(
                optimizer=build_optimizer(config, steps_per_epoch),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                metrics=["accuracy"],
            )
    train_data = to_dataset(data.x_train, data.y_train, num_classes, config.batch_size, config.seed)
    val_data = (
        to_dataset(data.x_val, data.y_val, num_classes, config.batch_size, None) if config.uses_validation else None
    )
    label = f"{config.model}/{config.optimizer}"
    progress = RichProgress(label, config.epochs, steps_per_epoch, console)
    callbacks = build_callbacks(config, run_dir, resume_state, progress, steps_per_epoch)
    checkpoint = next(c for c in callbacks if hasattr(c, "resume_state"))

    check_disk_space([run_dir, store.model_store_dir()], int(model.count_params()))
    started = time.perf_counter()
    finished_before = resume_state is not None and (resume_state.get("stopped") or initial_epoch >= config.epochs)
    if not finished_before:
        try:
            model.fit(train_data, validation_data=val_data, epochs=config.epochs, initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=0)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            raise RunError(
                f"cannot write the run's files ({error.strerror}); the last finished epoch is kept: "
                f"free space or fix permissions, then: train-cifar --resume {run_dir}"
            ) from None
    elif checkpoint.early_stopping is not None and checkpoint.early_stopping.best_weights is not None:
        model.set_weights(checkpoint.early_stopping.best_weights)
    train_time = previous_time + time.perf_counter() - started
    history = checkpoint.history

    results = evaluate(model, config, data)
    val_accuracy = history.get("val_accuracy", [])
    metrics = {
        "test_accuracy": results["test"]["accuracy"],
        "test_loss": results["test"]["loss"],
        "train_accuracy": results["train_accuracy"],
        "train_loss": results["train_loss"],
        "best_val_accuracy": max(val_accuracy) if val_accuracy else None,
        "epochs_run": len(history.get("loss", [])),
    }
    if "test_accuracy_single_view" in results:
        metrics["test_accuracy_single_view"] = results["test_accuracy_single_view"]
    parameters = int(model.count_params())
    title = f"{config.model} / {config.optimizer}: test accuracy {metrics['test_accuracy']:.2%}"
    report.plot_curves(history, run_dir / "curves.png", title)
    report.plot_confusion_matrix(
        np.array(results["test"]["confusion_matrix"]), data.class_names, run_dir / "confusion_matrix.png", title
    )
    full_report = {
        "metrics": metrics,
        "per_class": results["test"]["per_class"],
        "confusion_matrix": results["test"]["confusion_matrix"],
        "class_names": data.class_names,
        "parameters": parameters,
        "training_time_s": train_time,
        "precision_policy": policy,
        "devices": list(devices if config.distribute != "none" else devices[:1]),
        "data": {"source": data.source, **data.sizes()},
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(full_report, indent=2))
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))

    model_path = run_dir / MODEL_FILE
    model.save(model_path)
    tta = uses_tta(config)
    metadata = {
        "class_names": data.class_names,
        "architecture": config.model,
        "parameters": parameters,
        "preprocessing": PREPROCESSING[config.model] + (TTA_DESCRIPTION if tta else ""),
        "input_scaling": "uint8",
        "flip_tta": tta,
        "translate_tta": tta,
        "config": json.loads(config.model_dump_json()),
        "optimizer": optimizer_summary(model.optimizer),
        "metrics": metrics,
        "per_class": results["test"]["per_class"],
        "training_time_s": round(train_time, 2),
        "precision_policy": policy,
        "distribute": config.distribute,
        "data": {"source": data.source, **data.sizes()},
        "run_dir": str(run_dir.resolve()),
    }
    labels = {"architecture": config.model, "optimizer": config.optimizer, "framework": "keras"}
    tag = store.save_model(config.name, model_path, "keras", metadata, labels)
    return RunResult(config, run_dir, tag, metrics, parameters, history)
