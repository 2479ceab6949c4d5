"""What `train-cifar` does once its flags are a config: every check that needs no TensorFlow, then TensorFlow,
the cluster, the data, one run per optimizer and their comparison; and the same order for `import`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from contract.card import Calibration, ScoreName
from training import cpu_info
from training.cluster import ClusterError, ClusterRole, read_cluster_role
from training.comparison import comparison_dir, print_comparison
from training.config import TrainConfig
from training.data import DataError, check_source
from training.runs import RUNS_ROOT, RunError, check_run_folder, load_run_config, plan_runs
from training.tf_start import start_tensorflow
from training.workspace import worker_copy, worker_workspace

if TYPE_CHECKING:
    from training.data import Dataset
    from training.train import RunResult

console = Console()


class UserError(Exception):
    """An error the user can fix: printed as one line, exit code 2."""


@dataclass(frozen=True)
class TrainRequest:
    """One `train-cifar` call: a new config with the optimizers to compare, or a run folder to resume."""

    start: TrainConfig | Path
    optimizers: tuple[str | None, ...] = (None,)
    cache: bool = True
    verbose: bool = False

    @property
    def resume_dir(self) -> Path | None:
        """The run folder to resume, if this call resumes one."""
        return self.start if isinstance(self.start, Path) else None


@dataclass(frozen=True)
class Checked:
    """What the checks before TensorFlow found: the config to train, this worker's role, the CPU speed-ups."""

    config: TrainConfig
    role: ClusterRole | None
    speedups: tuple[cpu_info.Speedup, ...]


def run_training(request: TrainRequest) -> None:
    """Check what needs no TensorFlow, start it, then join the cluster, load the data once, train one model
    per optimizer and compare them if several; every error the user can fix is a UserError."""
    checked = check_before_tensorflow(request)
    start_tensorflow(request.verbose, checked.speedups)  # before any TensorFlow op, data loading included
    from training.scale import leave_cluster

    try:
        join_cluster_if_asked(checked.role)
        with worker_workspace(checked.role) as workspace:
            runs = planned_runs(request, checked.config, workspace)
            dataset = load_data(runs[0][0], cache=request.cache)
            results = [run_one(config, run_dir, dataset, request.resume_dir is not None) for config, run_dir in runs]
            if len(results) > 1 and workspace is None:
                print_comparison([r for r in results if r is not None],
                                 comparison_dir(runs[0][0], checked.config.output), console)
        leave_cluster()
    except (DataError, RunError, ClusterError) as error:
        raise UserError(str(error)) from None


def check_before_tensorflow(request: TrainRequest) -> Checked:
    """The resume folder, the data path, TF_CONFIG, the run folder's place and $CIFAR_SERVE_CPU_SPEEDUPS, checked
    in a second where TensorFlow would take several to load first."""
    try:
        config = load_run_config(request.start) if isinstance(request.start, Path) else request.start
        check_source(config.data)
        role = read_cluster_role(os.environ.get("TF_CONFIG")) if config.distribute == "multi-worker" else None
        if request.resume_dir is None and (role is None or role.is_chief):  # the others write a temporary folder
            check_run_folder(config.output or RUNS_ROOT)
        return Checked(config, role, cpu_info.chosen_speedups(config.model))
    except (RunError, DataError, ClusterError, cpu_info.SpeedupError) as error:
        raise UserError(str(error)) from None


def join_cluster_if_asked(role: ClusterRole | None) -> None:
    """Form the cluster now, before the data is loaded, so a missing peer ends the command in bounded time."""
    if role is None:
        return
    from training.scale import join_cluster

    console.print(f"joining a cluster of {role.workers} workers as {role.name} ({role.address}) ...")
    join_cluster(role)
    console.print("cluster formed; " + ("this worker is the chief: it writes the run folder and stores the model"
                                        if role.is_chief else "the chief writes the run folder and stores the model, "
                                        "this worker's own files are temporary"))


def planned_runs(request: TrainRequest, config: TrainConfig,
                 workspace: Path | None) -> list[tuple[TrainConfig, Path]]:
    """The runs to train: the resumed one (a worker's copy of it outside the chief), or one per optimizer."""
    if request.resume_dir is not None:
        resumed = (config, request.resume_dir)
        return [resumed if workspace is None else worker_copy(resumed, workspace)]
    return plan_runs(config, list(request.optimizers), workspace)


def load_data(config: TrainConfig, cache: bool = True) -> Dataset:
    """The run's data, said before and after: loading the full set takes a while."""
    from training.data import load_dataset

    console.print(f"loading CIFAR-10 from {config.data or 'the Keras download'} ...")
    dataset = load_dataset(config.data, config.validation_split, config.seed, config.limit, cache=cache)
    console.print(f"{len(dataset.y_train)} training, {len(dataset.y_val)} validation, {len(dataset.y_test)} test images")
    return dataset


def calibration_summary(calibration: Calibration) -> str:
    """What a calibrated model prints: the temperature, ECE and NLL before and after, the threshold's flag rates."""
    text = f"calibration: temperature {calibration.temperature:.3f}"
    if calibration.test is not None:
        t = calibration.test
        text += (f"; test ECE {t.ece_before:.2%} -> {t.ece_after:.2%} (15 bins), NLL {t.nll_before:.4f} -> "
                 f"{t.nll_after:.4f} on {t.size} images")
    text += (f"\nout of distribution: {calibration.score} below {calibration.threshold:.4g} flags "
             f"{calibration.val_flag_rate:.2%} of {calibration.val_size} held-out images")
    if calibration.test is not None:
        text += f" and {calibration.test.flag_rate:.2%} of the test images"
    return text


def run_one(config: TrainConfig, run_dir: Path, dataset: Dataset, resume: bool) -> RunResult | None:
    """Train one config; Ctrl-C ends with the command that resumes it."""
    from training.train import train

    resume_dir = config.output or run_dir
    console.rule(f"{config.model} / {config.optimizer} -> {run_dir}")
    try:
        result = train(config, dataset, run_dir, console, resume=resume)
    except KeyboardInterrupt:
        console.print(f"\ninterrupted; the last finished epoch is saved. Continue with:\n"
                      f"  train-cifar --resume {resume_dir}")
        raise typer.Exit(130) from None
    if result is None:
        console.print(f"{config.model}/{config.optimizer}: this worker's share of the training is done; the chief "
                      f"evaluates and stores the model (run folder {resume_dir})")
        return None
    m = result.metrics
    console.print(
        f"[bold]{config.model}/{config.optimizer}[/]: train accuracy {m['train_accuracy']:.2%}, "
        f"test accuracy {m['test_accuracy']:.2%}, {result.parameters:,} parameters, "
        f"{m['epochs_run']} epochs in {result.training_time_s:.0f} s"
    )
    if result.calibrated is not None:
        console.print(calibration_summary(result.calibrated.calibration)
                      + f" (calibration step {result.calibrated.seconds:.1f} s)")
    console.print(f"saved to the model store as [bold]{result.tag}[/]; run folder {run_dir}")
    return result


def print_warning(message: str) -> None:
    """A warning of the calibration step (a score the model cannot give, and what stands in), in yellow."""
    console.print(f"[yellow]warning: {escape(message)}[/]")


def run_import(path: Path, name: str, input_scaling: str, data: str | None, limit: int | None,
               trust_model_code: bool, verbose: bool, ood: tuple[float, ScoreName]) -> None:
    """`train-cifar import`: a bad --data fails before TensorFlow loads; without --data, a failed Keras
    download only costs the stored model its test metrics."""
    try:
        check_source(data)
    except DataError as error:
        raise UserError(str(error)) from None
    start_tensorflow(verbose)
    from training.data import load_dataset
    from training.importer import ModelImportError, import_model

    try:
        dataset = load_dataset(data, 0.0, 0, limit)
    except DataError as error:
        if data is not None:
            raise UserError(str(error)) from None
        console.print(f"[yellow]no test data ({error}); the model is stored without test metrics[/]")
        dataset = None
    try:
        result = import_model(path, name, input_scaling, dataset, trust_model_code,
                              warn=print_warning, ood=ood)
    except ModelImportError as error:
        raise UserError(str(error)) from None
    accuracy = result.metrics.test_accuracy
    stored_as = f"{result.model_format} converted to keras" if result.converted else result.model_format
    console.print(
        f"imported {path} ({stored_as}, input {result.input_scaling}, {result.parameters:,} parameters"
        + (f", test accuracy {accuracy:.2%}" if accuracy is not None else "")
        + f") as [bold]{result.tag}[/]"
    )
    if result.calibration is not None:
        console.print(calibration_summary(result.calibration))


def run_calibrate(tag: str, data: str, flag_rate: float, score: ScoreName, trust_model_code: bool,
                  verbose: bool) -> None:
    """`train-cifar calibrate`: a bad --data fails before TensorFlow loads; a missing or untrusted entry is one line."""
    try:
        check_source(data)
    except DataError as error:
        raise UserError(str(error)) from None
    start_tensorflow(verbose)
    from bentoml.exceptions import NotFound

    from contract.predictor import UntrustedModel
    from training.recalibrate import recalibrate

    console.print(f"calibrating {tag} on {data} ...")
    try:
        new_tag, calibration = recalibrate(tag, data, flag_rate, score, trust_model_code,
                                           warn=print_warning)
    except NotFound:
        raise UserError(f"no model {tag} in the model store") from None
    except (UntrustedModel, DataError) as error:
        raise UserError(str(error)) from None
    console.print(calibration_summary(calibration))
    console.print(f"saved to the model store as [bold]{new_tag}[/]")
