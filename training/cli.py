"""`train-cifar`: flags -> config -> training run(s) -> console summary and the model store."""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path
from enum import Enum
from typing import Annotated, Optional, get_args

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from training.config import Distribute, ModelName, OptimizerName, TrainConfig
from training.config import Schedule as ScheduleName

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


def make_config(**flags: object) -> TrainConfig:
    values = {key: value.value if isinstance(value, Enum) else value for key, value in flags.items()}
    try:
        return TrainConfig(**{key: value for key, value in values.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        field = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "flags"
        raise UserError(f"invalid value for {field}: {first['msg']}") from None


@app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context,
    data: Annotated[Optional[str], typer.Option(help="CIFAR-10 source: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image tree (train/<class>/, test/<class>/) as a folder or .tar.gz. Default: the Keras download.")] = None,
    model: Annotated[Model, typer.Option( help="Architecture: cnn (published small CNN), cnn-bn (BatchNorm + augmentation), mlp (deep MLP), fast (airbench-style).")] = Model.cnn,
    optimizer: Annotated[Optional[list[Optimizer]], typer.Option( help="Optimizer; repeat to train one model per optimizer and compare them. Default: adam (sgd for --model fast).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (peak rate for schedules). Default: Keras' default for the optimizer.")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="Momentum (sgd, rmsprop). Default 0.0.")] = None,
    nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (sgd).")] = None,
    beta_1: Annotated[Optional[float], typer.Option(help="beta_1 (adam, adamw). Default 0.9.")] = None,
    beta_2: Annotated[Optional[float], typer.Option(help="beta_2 (adam, adamw). Default 0.999.")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="epsilon (adam, adamw, rmsprop). Default 1e-7.")] = None,
    amsgrad: Annotated[Optional[bool], typer.Option("--amsgrad/--no-amsgrad", help="AMSGrad variant (adam, adamw).")] = None,
    rho: Annotated[Optional[float], typer.Option(help="rho (rmsprop). Default 0.9.")] = None,
    centered: Annotated[Optional[bool], typer.Option("--centered/--no-centered", help="Centered RMSprop.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Decoupled weight decay. Default: none (0.004 for adamw).")] = None,
    clipnorm: Annotated[Optional[float], typer.Option(help="Clip each gradient to this norm.")] = None,
    clipvalue: Annotated[Optional[float], typer.Option(help="Clip each gradient value to this magnitude.")] = None,
    global_clipnorm: Annotated[Optional[float], typer.Option(help="Clip all gradients together to this norm.")] = None,
    use_ema: Annotated[Optional[bool], typer.Option("--use-ema/--no-use-ema", help="Keep an exponential moving average of the weights (Keras use_ema). Default off.")] = None,
    ema_momentum: Annotated[Optional[float], typer.Option(help="EMA momentum. Default 0.99.")] = None,
    lookahead: Annotated[Optional[bool], typer.Option("--lookahead/--no-lookahead", help="Lookahead weight averaging every 5 steps, as in airbench (on for fast).")] = None,
    lr_schedule: Annotated[Optional[Schedule], typer.Option( help="constant (with ReduceLROnPlateau), cosine decay, or one-cycle (warm-up then cosine). Default constant (one-cycle for fast).")] = None,
    l2: Annotated[Optional[float], typer.Option(help="L2 factor on convolution kernels. Default per model (cnn 1e-3).")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout rate. Default per model (cnn 0.5).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random flip + translation during training (cnn-bn, fast).")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing. Default 0 (0.2 for fast).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs. Default per model (cnn 50, mlp 30).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size. Default per model (cnn 64, mlp 128).")] = None,
    validation_split: Annotated[Optional[float], typer.Option(help="Shuffled, stratified share of the training set held out for validation. Default 0.2.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Train and test on a stratified subset of N images each (quick runs).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for the split, initialisation and shuffling.")] = 42,
    early_stopping_patience: Annotated[Optional[int], typer.Option(help="EarlyStopping patience on val_loss (best weights restored); 0 turns it off. Default 5.")] = None,
    reduce_lr_factor: Annotated[float, typer.Option(help="ReduceLROnPlateau factor.")] = 0.5,
    reduce_lr_patience: Annotated[int, typer.Option(help="ReduceLROnPlateau patience.")] = 3,
    min_lr: Annotated[float, typer.Option(help="ReduceLROnPlateau lower bound.")] = 1e-6,
    name: Annotated[str, typer.Option(help="Name in the BentoML model store.")] = "cifar10-cnn",
    output: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<name>-<model>-<optimizer>-<time>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its folder's last checkpoint (its saved flags are used).")] = None,
    distribute: Annotated[Strategy, typer.Option( help="tf.distribute strategy; multi-worker reads TF_CONFIG.")] = Strategy.none,
    mixed_precision: Annotated[Optional[bool], typer.Option("--mixed-precision/--no-mixed-precision", help="Mixed precision (default: on with a GPU).")] = None,
) -> None:
    """Train (the default command)."""
    if ctx.invoked_subcommand is not None:
        return
    from training.data import DataError, load_dataset
    from training.scale import configure_devices
    from training.train import RunError

    configure_devices()  # before any TensorFlow op, data loading included
    try:
        if resume is not None:
            runs = [load_resumed(resume)]
        else:
            base = make_config(
                data=data, model=model, lr=lr, momentum=momentum, nesterov=nesterov, beta_1=beta_1,
                beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad, rho=rho, centered=centered,
                weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                use_ema=use_ema, ema_momentum=ema_momentum, lookahead=lookahead, lr_schedule=lr_schedule, l2=l2, dropout=dropout,
                augment=augment, label_smoothing=label_smoothing, epochs=epochs, batch_size=batch_size,
                validation_split=validation_split, limit=limit, seed=seed,
                early_stopping_patience=early_stopping_patience, reduce_lr_factor=reduce_lr_factor,
                reduce_lr_patience=reduce_lr_patience, min_lr=min_lr, name=name, output=output,
                distribute=distribute, mixed_precision=mixed_precision,
            )
            runs = plan_runs(base, list(dict.fromkeys([o.value for o in optimizer or []] or [None])))
        first = runs[0][0]
        console.print(f"loading CIFAR-10 from {first.data or 'the Keras download'} ...")
        dataset = load_dataset(first.data, first.validation_split, first.seed, first.limit)
        console.print(
            f"{len(dataset.y_train)} training, {len(dataset.y_val)} validation, {len(dataset.y_test)} test images"
        )
        results = [run_one(config, run_dir, dataset, resume is not None) for config, run_dir in runs]
    except (DataError, RunError, UserError) as error:
        raise UserError(str(error)) from None
    if len(results) > 1:
        print_comparison(results, comparison_dir(runs[0][0], output))


def load_resumed(run_dir: Path):
    from training.train import load_run_config

    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    return load_run_config(run_dir), run_dir


def plan_runs(base: TrainConfig, optimizers: list[str | None]) -> list[tuple[TrainConfig, Path]]:
    """One resolved config and run folder per optimizer; everything else equal."""
    from training.train import default_run_dir, prepare_run_dir

    runs = []
    for name in optimizers:
        config = base.model_copy(update={"optimizer": name}).resolved()
        if base.output is None:
            run_dir = default_run_dir(config)
        else:
            run_dir = base.output / config.optimizer if len(optimizers) > 1 else base.output
        config = config.model_copy(update={"output": run_dir})
        prepare_run_dir(run_dir, config)
        runs.append((config, run_dir))
    return runs


def run_one(config: TrainConfig, run_dir: Path, dataset, resume: bool):
    from training.train import train

    console.rule(f"{config.model} / {config.optimizer} -> {run_dir}")
    try:
        result = train(config, dataset, run_dir, console, resume=resume)
    except KeyboardInterrupt:
        console.print(f"\ninterrupted; the last finished epoch is saved. Continue with:\n  train-cifar --resume {run_dir}")
        raise typer.Exit(130) from None
    m = result.metrics
    console.print(
        f"[bold]{config.model}/{config.optimizer}[/]: train accuracy {m['train_accuracy']:.2%}, "
        f"test accuracy {m['test_accuracy']:.2%}, {result.parameters:,} parameters, "
        f"{m['epochs_run']} epochs in {result_time(result):.0f} s"
    )
    console.print(f"saved to the model store as [bold]{result.tag}[/]; run folder {run_dir}")
    return result


def result_time(result) -> float:
    return json.loads((result.run_dir / "report.json").read_text())["training_time_s"]


def comparison_dir(config: TrainConfig, output: Path | None) -> Path:
    if output is not None:
        return output
    return Path("runs") / f"compare-{config.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def print_comparison(results: list, folder: Path) -> None:
    from training.report import plot_comparison

    table = Table(title=f"optimizer comparison ({results[0].config.model})")
    for column in ("optimizer", "best val acc", "test acc", "epochs", "wall time (s)", "model tag"):
        table.add_column(column)
    rows = []
    for result in results:
        m = result.metrics
        row = {
            "optimizer": result.config.optimizer,
            "best_val_accuracy": m["best_val_accuracy"],
            "test_accuracy": m["test_accuracy"],
            "epochs_run": m["epochs_run"],
            "wall_time_s": round(result_time(result), 1),
            "tag": result.tag,
        }
        rows.append(row)
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
) -> None:
    """Register a model trained elsewhere, checked and evaluated, with the same metadata."""
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
        result = import_model(path, name, input_scaling.value, dataset)
    except ModelImportError as error:
        raise UserError(str(error)) from None
    accuracy = result.metrics.get("test_accuracy")
    console.print(
        f"imported {path} ({result.model_format}, input {result.input_scaling}, {result.parameters:,} parameters"
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
