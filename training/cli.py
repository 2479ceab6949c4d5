"""`train-cifar`: flags -> config -> training run(s) -> console summary and the model store."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from training import cpu_info
from training.config import Distribute, ModelName, OptimizerName, TrainConfig
from training.config import Schedule as ScheduleName
from training.recipes import CNN, FAST, LOOKAHEAD, MLP

from training.cluster import ClusterError, ClusterRole, read_cluster_role

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Train a regularized, callback-tuned CIFAR-10 classifier and save it to the BentoML model store.",
)
console = Console()

Model = Enum("Model", {name: name for name in get_args(ModelName)}, type=str)
Optimizer = Enum("Optimizer", {name: name for name in get_args(OptimizerName)}, type=str)
Schedule = Enum("Schedule", {name: name for name in get_args(ScheduleName)}, type=str)
Strategy = Enum("Strategy", {name: name for name in get_args(Distribute)}, type=str)
Scaling = Enum("Scaling", {name: name for name in ("auto", "uint8", "0-1", "-1-1")}, type=str)


# click's UsageError, wherever Typer takes click from (recent Typer vendors its own copy)
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class UserError(Exception):
    """An error the user can fix: printed as one line, exit code 2."""


# TrainConfig's own defaults: the signature below reads them from here and restates none.
DEFAULTS = TrainConfig()


def short(number: float) -> str:
    """A recipe number as the help text writes it: 1e-3, not 0.001."""
    return f"{number:.0e}".replace("e-0", "e-") if 0 < number < 0.01 else f"{number:g}"


def make_config(**flags: object) -> TrainConfig:
    """The flags the user gave as a TrainConfig; a flag left unset (None) takes TrainConfig's default."""
    values = {key: value.value if isinstance(value, Enum) else value for key, value in flags.items()}
    try:
        return TrainConfig(**{key: value for key, value in values.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        field = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "flags"
        raise UserError(f"invalid value for {field}: {first['msg']}") from None


def config_from(params: dict[str, Any]) -> TrainConfig:
    """The command's parameters that are TrainConfig fields (the repeatable --optimizer is planned apart)."""
    fields = set(TrainConfig.model_fields) - {"optimizer"}
    return make_config(**{key: value for key, value in params.items() if key in fields})


# TensorFlow's log lines (absl format): severity, date, time, thread, file:line] message
TF_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (.*)$")
CUDA_PROBE = re.compile(r"cuda|cuInit|cuDNN|cuFFT|cuBLAS|TensorRT", re.IGNORECASE)


def is_tensorflow_noise(line: str) -> bool:
    """TensorFlow's start-up chatter: absl's pre-init banner, info and warnings, errors of the CUDA probe."""
    if line.startswith("WARNING: All log messages before absl::InitializeLog() is called"):
        return True
    match = TF_LOG_LINE.match(line)
    return bool(match) and (match[1] in "IW" or (match[1] == "E" and bool(CUDA_PROBE.search(match[2]))))


@contextlib.contextmanager
def filtered_stderr(noise: Callable[[str], bool]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ code writes there, not to sys.stderr), then pass on every line that
    is not noise, or every line if the block raised, so no error is ever hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        raised = True
        try:
            yield
            raised = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if raised or not noise(line)))
            sys.stderr.flush()


def start_tensorflow(verbose: bool, speedups: tuple[cpu_info.Speedup, ...] = ()) -> tuple[str, ...]:
    """Import TensorFlow, turn on the CPU speed-ups (`cpu_info.chosen_speedups`) and probe the devices,
    before any op; TensorFlow's C++ start-up log (CUDA probe, oneDNN notes), written before any Python
    setting applies, is filtered out of stderr unless --verbose."""
    with contextlib.nullcontext() if verbose else filtered_stderr(is_tensorflow_noise):
        from training.scale import configure_devices, use_cpu_speedups

        use_cpu_speedups(speedups)
        return configure_devices()


@app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context,
    data: Annotated[Optional[str], typer.Option(help="CIFAR-10 source: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image tree (train/<class>/, test/<class>/) as a folder or .tar.gz. Default: the Keras download.")] = None,
    model: Annotated[Model, typer.Option(help="Architecture: cnn (published small CNN), cnn-bn (BatchNorm + augmentation), mlp (deep MLP), fast (airbench-style).")] = Model(DEFAULTS.model),
    optimizer: Annotated[Optional[list[Optimizer]], typer.Option(help="Optimizer; repeat to train one model per optimizer and compare them. Default: adam (sgd for --model fast).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (peak rate for schedules). Default: Keras' default for the optimizer.")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="Momentum (sgd, rmsprop). Default 0.0.")] = None,
    nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (sgd).")] = None,
    beta_1: Annotated[Optional[float], typer.Option(help=f"beta_1 (adam, adamw). Default {DEFAULTS.beta_1}.")] = None,
    beta_2: Annotated[Optional[float], typer.Option(help=f"beta_2 (adam, adamw). Default {DEFAULTS.beta_2}.")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help=f"epsilon (adam, adamw, rmsprop). Default {short(DEFAULTS.epsilon)}.")] = None,
    amsgrad: Annotated[Optional[bool], typer.Option("--amsgrad/--no-amsgrad", help="AMSGrad variant (adam, adamw).")] = None,
    rho: Annotated[Optional[float], typer.Option(help=f"rho (rmsprop). Default {DEFAULTS.rho}.")] = None,
    centered: Annotated[Optional[bool], typer.Option("--centered/--no-centered", help="Centered RMSprop.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Decoupled weight decay. Default: none (0.004 for adamw).")] = None,
    clipnorm: Annotated[Optional[float], typer.Option(help="Clip each gradient to this norm.")] = None,
    clipvalue: Annotated[Optional[float], typer.Option(help="Clip each gradient value to this magnitude.")] = None,
    global_clipnorm: Annotated[Optional[float], typer.Option(help="Clip all gradients together to this norm.")] = None,
    use_ema: Annotated[Optional[bool], typer.Option("--use-ema/--no-use-ema", help="Keep an exponential moving average of the weights (Keras use_ema). Default off.")] = None,
    ema_momentum: Annotated[Optional[float], typer.Option(help="EMA momentum. Default 0.99.")] = None,
    lookahead: Annotated[Optional[bool], typer.Option("--lookahead/--no-lookahead", help=f"Lookahead weight averaging every {LOOKAHEAD.every} steps, as in airbench (on for fast).")] = None,
    lr_schedule: Annotated[Optional[Schedule], typer.Option(help="constant (with ReduceLROnPlateau), cosine decay, or one-cycle (warm-up then cosine). Default constant (one-cycle for fast).")] = None,
    l2: Annotated[Optional[float], typer.Option(help=f"L2 factor on convolution kernels. Default per model (cnn {short(CNN.training.l2)}).")] = None,
    dropout: Annotated[Optional[float], typer.Option(help=f"Dropout rate. Default per model (cnn {short(CNN.training.dropout)}).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random flip + translation during training (cnn-bn, fast).")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help=f"Label smoothing. Default 0 ({short(FAST.training.label_smoothing)} for fast).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Maximum epochs. Default per model (cnn {CNN.training.epochs}, mlp {MLP.training.epochs}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Batch size. Default per model (cnn {CNN.training.batch_size}, mlp {MLP.training.batch_size}).")] = None,
    validation_split: Annotated[Optional[float], typer.Option(help="Shuffled, stratified share of the training set held out for validation. Default 0.2.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Train and test on a stratified subset of N images each (quick runs).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for the split, initialisation and shuffling.")] = DEFAULTS.seed,
    early_stopping_patience: Annotated[Optional[int], typer.Option(help="EarlyStopping patience on val_loss (best weights restored); 0 turns it off. Default 5.")] = None,
    reduce_lr_factor: Annotated[float, typer.Option(help="ReduceLROnPlateau factor.")] = DEFAULTS.reduce_lr_factor,
    reduce_lr_patience: Annotated[int, typer.Option(help="ReduceLROnPlateau patience.")] = DEFAULTS.reduce_lr_patience,
    min_lr: Annotated[float, typer.Option(help="ReduceLROnPlateau lower bound.")] = DEFAULTS.min_lr,
    name: Annotated[str, typer.Option(help="Name in the BentoML model store.")] = DEFAULTS.name,
    output: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<name>-<model>-<optimizer>-<time>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its folder's last checkpoint (its saved flags are used).")] = None,
    distribute: Annotated[Strategy, typer.Option(help="tf.distribute strategy; multi-worker reads TF_CONFIG (docs/cluster.md).")] = Strategy(DEFAULTS.distribute),
    mixed_precision: Annotated[Optional[bool], typer.Option("--mixed-precision/--no-mixed-precision", help="Mixed precision (default: on with a GPU).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode --data again, without reading or writing the decoded-data cache (~/.cache/cifar-serve, or $CIFAR_SERVE_CACHE).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Also show TensorFlow's own start-up log (CUDA probe, oneDNN notes).")] = False,
) -> None:
    """Train (the default command)."""
    if ctx.invoked_subcommand is None:
        run_training(ctx.params)


def run_training(params: dict[str, Any]) -> None:
    """Validate the flags, load the data once, train one model per optimizer, compare them if several."""
    base = None if params["resume"] is not None else config_from(params)  # a bad flag fails before TensorFlow loads
    try:  # and so does a bad TF_CONFIG
        role = cluster_role_if_asked(base.distribute) if base is not None else None
    except ClusterError as error:
        raise UserError(str(error)) from None
    try:  # and so does a bad $CIFAR_SERVE_CPU_SPEEDUPS
        speedups = cpu_info.chosen_speedups(base.model if base is not None else recipe_of_run(params["resume"]))
    except cpu_info.SpeedupError as error:
        raise UserError(str(error)) from None
    start_tensorflow(params["verbose"], speedups)  # before any TensorFlow op, data loading included
    from training.data import DataError
    from training.scale import leave_cluster
    from training.train import RunError

    workspace = None
    try:
        resumed = load_resumed(params["resume"]) if base is None else None
        role = role or (cluster_role_if_asked(resumed[0].distribute) if resumed else None)
        join_cluster_if_asked(role)
        if role is not None and not role.is_chief:
            workspace = worker_workspace(f"{role.task_type}{role.index}")
        if resumed:
            runs = [resumed if workspace is None else worker_copy(resumed, workspace)]
        else:
            runs = plan_runs(base, list(dict.fromkeys([o.value for o in params["optimizer"] or []] or [None])),
                             workspace)
        dataset = load_data(runs[0][0], cache=not params["no_cache"])
        results = [run_one(config, run_dir, dataset, base is None) for config, run_dir in runs]
        if len(results) > 1 and workspace is None:
            print_comparison(results, comparison_dir(runs[0][0], params["output"]))
        leave_cluster()
    except (DataError, RunError, UserError, ClusterError) as error:
        raise UserError(str(error)) from None
    finally:
        if workspace is not None:
            shutil.rmtree(workspace, ignore_errors=True)


def recipe_of_run(run_dir: Path) -> str | None:
    """The `--model` a run folder to resume was started with, read before TensorFlow loads; None where it
    cannot be read (resuming then fails with its own message)."""
    try:
        return TrainConfig.model_validate_json((run_dir / "config.json").read_text()).model
    except (OSError, ValidationError):
        return None


def cluster_role_if_asked(distribute: str) -> ClusterRole | None:
    """For --distribute multi-worker: this worker's role from TF_CONFIG, checked without TensorFlow."""
    return read_cluster_role(os.environ.get("TF_CONFIG")) if distribute == "multi-worker" else None


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


def worker_workspace(name: str) -> Path:
    """A temporary folder for a worker's own files (the chief writes the real ones); those that killed
    workers left behind are removed first, as their process is gone."""
    from training.store import process_alive

    for leftover in Path(tempfile.gettempdir()).glob("train-cifar-*-*-*"):
        pid = leftover.name.split("-")[3]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"train-cifar-{name}-{os.getpid()}-"))


def worker_copy(resumed: tuple[TrainConfig, Path], workspace: Path) -> tuple[TrainConfig, Path]:
    """A non-chief worker resumes from a copy of the chief's checkpoints (the run folder every worker reads at
    the same path), so all workers start from the same state and only the chief writes to the run folder."""
    config, run_dir = resumed
    copy = workspace / "run"
    copy.mkdir()
    if (run_dir / "checkpoints").is_dir():
        shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    return config, copy


def load_data(config: TrainConfig, cache: bool = True) -> Any:
    """The run's data, said before and after: loading the full set takes a while."""
    from training.data import load_dataset

    console.print(f"loading CIFAR-10 from {config.data or 'the Keras download'} ...")
    dataset = load_dataset(config.data, config.validation_split, config.seed, config.limit, cache=cache)
    console.print(f"{len(dataset.y_train)} training, {len(dataset.y_val)} validation, {len(dataset.y_test)} test images")
    return dataset


def load_resumed(run_dir: Path) -> tuple[TrainConfig, Path]:
    """The interrupted run's own saved config, so a resume trains exactly what was started."""
    from training.train import load_run_config

    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    return load_run_config(run_dir), run_dir


def plan_runs(base: TrainConfig, optimizers: list[str | None],
              workspace: Path | None = None) -> list[tuple[TrainConfig, Path]]:
    """One resolved config and run folder per optimizer; everything else equal.

    A worker other than the chief writes under `workspace` (temporary), its config still naming the chief's
    run folder (what `--resume` takes).
    """
    from training.train import default_run_dir, prepare_run_dir

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


def run_one(config: TrainConfig, run_dir: Path, dataset: Any, resume: bool) -> Any:
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
    console.print(f"saved to the model store as [bold]{result.tag}[/]; run folder {run_dir}")
    return result


def comparison_dir(config: TrainConfig, output: Path | None) -> Path:
    """Where the optimizer comparison goes: --output itself, or a new folder under runs/."""
    if output is not None:
        return output
    return Path("runs") / f"compare-{config.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def comparison_row(result: Any) -> dict[str, Any]:
    """One optimizer's line of comparison.json."""
    m = result.metrics
    return {
        "optimizer": result.config.optimizer,
        "best_val_accuracy": m["best_val_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "epochs_run": m["epochs_run"],
        "wall_time_s": round(result.training_time_s, 1),
        "tag": result.tag,
    }


def print_comparison(results: list[Any], folder: Path) -> None:
    """A table of the optimizers, and comparison.json and .png in `folder`."""
    from training.report import plot_comparison

    table = Table(title=f"optimizer comparison ({results[0].config.model})")
    for column in ("optimizer", "best val acc", "test acc", "epochs", "wall time (s)", "model tag"):
        table.add_column(column)
    rows = [comparison_row(result) for result in results]
    for row in rows:
        best_val = "-" if row["best_val_accuracy"] is None else f"{row['best_val_accuracy']:.2%}"
        table.add_row(row["optimizer"], best_val, f"{row['test_accuracy']:.2%}", str(row["epochs_run"]),
                      f"{row['wall_time_s']:.0f}", row["tag"])
    console.print(table)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps(rows, indent=2))
    plot_comparison({r.config.optimizer: r.history for r in results}, folder / "comparison.png",
                    f"{results[0].config.model}: optimizers compared")
    console.print(f"comparison written to {folder / 'comparison.png'} and {folder / 'comparison.json'}")


@app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="A Keras 3 .keras file, a Keras 2 .h5 file, or a SavedModel folder.")],
    name: Annotated[str, typer.Option(help="Name in the BentoML model store.")] = "cifar10-cnn",
    input_scaling: Annotated[Scaling, typer.Option( help="How the model expects pixels: uint8 (it scales itself), 0-1, -1-1, or auto (detect; tries each on test data).")] = Scaling.auto,
    data: Annotated[Optional[str], typer.Option(help="CIFAR-10 source to evaluate on (as for training). Default: the Keras download, skipped if unavailable.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate on a stratified subset of N test images.")] = None,
    trust_model_code: Annotated[bool, typer.Option("--trust-model-code", help="Import a legacy file even though it holds code (Lambda layers, custom classes, file-system ops): it stays in its legacy format and the service needs CIFAR10_TRUST_MODEL_CODE=1 to serve it.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show TensorFlow's start-up log (CUDA probe, oneDNN notes).")] = False,
) -> None:
    """Register a model trained elsewhere, scanned for code, checked, converted to Keras 3 where safe, and evaluated."""
    from rich.markup import escape

    start_tensorflow(verbose)
    from training.data import DataError, load_dataset
    from training.importer import ModelImportError, import_model

    try:
        dataset = load_dataset(data, 0.0, 0, limit)
    except DataError as error:
        if data is not None:
            raise UserError(str(error)) from None
        console.print(f"[yellow]no test data ({error}); the model is stored without test metrics[/]")
        dataset = None
    try:
        result = import_model(path, name, input_scaling.value, dataset, trust_model_code,
                              warn=lambda message: console.print(f"[yellow]warning: {escape(message)}[/]"))
    except ModelImportError as error:
        raise UserError(str(error)) from None
    accuracy = result.metrics.test_accuracy
    stored_as = f"{result.model_format} converted to keras" if result.converted else result.model_format
    console.print(
        f"imported {path} ({stored_as}, input {result.input_scaling}, {result.parameters:,} parameters"
        + (f", test accuracy {accuracy:.2%}" if accuracy is not None else "")
        + f") as [bold]{result.tag}[/]"
    )


def main() -> None:
    """Entry point: usage and user errors become one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except UsageError as error:
        print(f"train-cifar: error: {error.format_message()}", file=sys.stderr)
        sys.exit(2)
    except UserError as error:
        print(f"train-cifar: error: {error}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
