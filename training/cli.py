"""`train-cifar`: the flags, typed all the way to a `TrainConfig`; `training.pipeline` carries the command out.

Every help default comes from the recipes and `TrainConfig` (`training.flag_help`), none is restated here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from pydantic import ValidationError

from training import flag_help as h
from contract.card import ScoreName
from training.config import Distribute, ModelName, OptimizerName, TrainConfig
from training.config import Schedule as ScheduleName
from training.pipeline import TrainRequest, UserError, run_calibrate, run_import, run_training
from training.recipes import LOOKAHEAD

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Train a regularized, callback-tuned CIFAR-10 classifier and save it to the BentoML model store.",
)

Model = Enum("Model", {name: name for name in get_args(ModelName)}, type=str)
Optimizer = Enum("Optimizer", {name: name for name in get_args(OptimizerName)}, type=str)
Schedule = Enum("Schedule", {name: name for name in get_args(ScheduleName)}, type=str)
Strategy = Enum("Strategy", {name: name for name in get_args(Distribute)}, type=str)
Scaling = Enum("Scaling", {name: name for name in ("auto", "uint8", "0-1", "-1-1")}, type=str)
Score = Enum("Score", {name: name for name in get_args(ScoreName)}, type=str)

# click's UsageError, wherever Typer takes click from (recent Typer vendors its own copy)
UsageError: type[Exception] = typer.BadParameter.__mro__[1]

# TrainConfig's own defaults: a flag whose field has one shows it; a flag left unset (None) takes the
# recipe's value when the config is resolved.
DEFAULTS = TrainConfig()

# --- the flags of training, one type each -------------------------------------------------------------
DataFlag = Annotated[Optional[str], typer.Option(help="CIFAR-10 source: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image tree (train/<class>/, test/<class>/) as a folder or .tar.gz. Default: the Keras download.")]
ModelFlag = Annotated[Model, typer.Option(help="Architecture: cnn (published small CNN), cnn-bn (BatchNorm + augmentation), mlp (deep MLP), fast (airbench-style).")]
OptimizerFlag = Annotated[Optional[list[Optimizer]], typer.Option(help=f"Optimizer; repeat to train one model per optimizer and compare them. {h.per_model('optimizer')}")]
LrFlag = Annotated[Optional[float], typer.Option(help=f"Learning rate (peak rate for schedules). {h.learning_rate()}")]
MomentumFlag = Annotated[Optional[float], typer.Option(help=f"Momentum (sgd, rmsprop). {h.per_model('momentum')}")]
NesterovFlag = Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help=f"Nesterov momentum (sgd). {h.per_model('nesterov')}")]
Beta1Flag = Annotated[float, typer.Option(help="beta_1 (adam, adamw).")]
Beta2Flag = Annotated[float, typer.Option(help="beta_2 (adam, adamw).")]
EpsilonFlag = Annotated[float, typer.Option(help="epsilon (adam, adamw, rmsprop).")]
AmsgradFlag = Annotated[bool, typer.Option("--amsgrad/--no-amsgrad", help="AMSGrad variant (adam, adamw).")]
RhoFlag = Annotated[float, typer.Option(help="rho (rmsprop).")]
CenteredFlag = Annotated[bool, typer.Option("--centered/--no-centered", help="Centered RMSprop.")]
WeightDecayFlag = Annotated[Optional[float], typer.Option(help=f"Decoupled weight decay. {h.weight_decay()}")]
ClipnormFlag = Annotated[Optional[float], typer.Option(help="Clip each gradient to this norm.")]
ClipvalueFlag = Annotated[Optional[float], typer.Option(help="Clip each gradient value to this magnitude.")]
GlobalClipnormFlag = Annotated[Optional[float], typer.Option(help="Clip all gradients together to this norm.")]
UseEmaFlag = Annotated[Optional[bool], typer.Option("--use-ema/--no-use-ema", help=f"Keep an exponential moving average of the weights (Keras use_ema). {h.per_model('use_ema')}")]
EmaMomentumFlag = Annotated[Optional[float], typer.Option(help=f"EMA momentum. {h.per_model('ema_momentum')}")]
LookaheadFlag = Annotated[Optional[bool], typer.Option("--lookahead/--no-lookahead", help=f"Lookahead weight averaging every {LOOKAHEAD.every} steps, as in airbench. {h.per_model('lookahead')}")]
LrScheduleFlag = Annotated[Optional[Schedule], typer.Option(help=f"constant (with ReduceLROnPlateau), cosine decay, or one-cycle (warm-up then cosine). {h.per_model('lr_schedule')}")]
L2Flag = Annotated[Optional[float], typer.Option(help=f"L2 factor on convolution kernels. {h.per_model('l2')}")]
DropoutFlag = Annotated[Optional[float], typer.Option(help=f"Dropout rate. {h.per_model('dropout')}")]
AugmentFlag = Annotated[Optional[bool], typer.Option("--augment/--no-augment", help=f"Random flip + translation during training (on by default for {h.recipes_where('augment')}).")]
LabelSmoothingFlag = Annotated[Optional[float], typer.Option(help=f"Label smoothing. {h.per_model('label_smoothing')}")]
EpochsFlag = Annotated[Optional[int], typer.Option(help=f"Maximum epochs. {h.per_model('epochs')}")]
BatchSizeFlag = Annotated[Optional[int], typer.Option(help=f"Batch size. {h.per_model('batch_size')}")]
ValidationSplitFlag = Annotated[Optional[float], typer.Option(help=f"Shuffled, stratified share of the training set held out for validation. {h.per_model('validation_split')}")]
LimitFlag = Annotated[Optional[int], typer.Option(help="Train and test on a stratified subset of N images each (quick runs).")]
SeedFlag = Annotated[int, typer.Option(help="Random seed for the split, initialisation and shuffling.")]
EarlyStoppingFlag = Annotated[Optional[int], typer.Option(help=f"EarlyStopping patience on val_loss (best weights restored); 0 turns it off, the default with a cosine or one-cycle schedule. {h.per_model('early_stopping_patience')}")]
ReduceLrFactorFlag = Annotated[float, typer.Option(help="ReduceLROnPlateau factor.")]
ReduceLrPatienceFlag = Annotated[int, typer.Option(help="ReduceLROnPlateau patience.")]
MinLrFlag = Annotated[float, typer.Option(help="ReduceLROnPlateau lower bound.")]
NameFlag = Annotated[Optional[str], typer.Option(help=f"Name in the BentoML model store. Default per model: {h.store_names()}.")]
OutputFlag = Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<name>-<model>-<optimizer>-<time>).")]
ResumeFlag = Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its folder's last checkpoint (its saved flags are used).")]
DistributeFlag = Annotated[Strategy, typer.Option(help="tf.distribute strategy; multi-worker reads TF_CONFIG (docs/cluster.md).")]
MixedPrecisionFlag = Annotated[Optional[bool], typer.Option("--mixed-precision/--no-mixed-precision", help=f"Mixed precision (default: on with a GPU; bfloat16 for {h.bf16_recipes()} on a CPU that computes it natively).")]
NoCacheFlag = Annotated[bool, typer.Option("--no-cache", help="Decode --data again, without reading or writing the decoded-data cache (~/.cache/cifar-serve, or $CIFAR_SERVE_CACHE).")]
OodFlagRateFlag = Annotated[float, typer.Option(help="Share of in-distribution validation images the stored out-of-distribution threshold flags (docs/calibration.md).")]
OodScoreFlag = Annotated[Score, typer.Option(help="The out-of-distribution score stored in the card, computed from the logits (the temperature for the probability scores; docs/calibration.md compares them).")]
VerboseFlag = Annotated[bool, typer.Option("--verbose", help="Also show TensorFlow's own start-up log (CUDA probe, oneDNN notes).")]


@app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context, data: DataFlag = None, model: ModelFlag = Model(DEFAULTS.model),
    optimizer: OptimizerFlag = None, lr: LrFlag = None, momentum: MomentumFlag = None, nesterov: NesterovFlag = None,
    beta_1: Beta1Flag = DEFAULTS.beta_1, beta_2: Beta2Flag = DEFAULTS.beta_2, epsilon: EpsilonFlag = DEFAULTS.epsilon,
    amsgrad: AmsgradFlag = DEFAULTS.amsgrad, rho: RhoFlag = DEFAULTS.rho, centered: CenteredFlag = DEFAULTS.centered,
    weight_decay: WeightDecayFlag = None, clipnorm: ClipnormFlag = None, clipvalue: ClipvalueFlag = None,
    global_clipnorm: GlobalClipnormFlag = None, use_ema: UseEmaFlag = None, ema_momentum: EmaMomentumFlag = None,
    lookahead: LookaheadFlag = None, lr_schedule: LrScheduleFlag = None, l2: L2Flag = None,
    dropout: DropoutFlag = None, augment: AugmentFlag = None, label_smoothing: LabelSmoothingFlag = None,
    epochs: EpochsFlag = None, batch_size: BatchSizeFlag = None, validation_split: ValidationSplitFlag = None,
    limit: LimitFlag = None, seed: SeedFlag = DEFAULTS.seed, early_stopping_patience: EarlyStoppingFlag = None,
    reduce_lr_factor: ReduceLrFactorFlag = DEFAULTS.reduce_lr_factor,
    reduce_lr_patience: ReduceLrPatienceFlag = DEFAULTS.reduce_lr_patience, min_lr: MinLrFlag = DEFAULTS.min_lr,
    name: NameFlag = None, output: OutputFlag = None, resume: ResumeFlag = None,
    distribute: DistributeFlag = Strategy(DEFAULTS.distribute), mixed_precision: MixedPrecisionFlag = None,
    ood_flag_rate: OodFlagRateFlag = DEFAULTS.ood_flag_rate, ood_score: OodScoreFlag = Score(DEFAULTS.ood_score),
    no_cache: NoCacheFlag = False, verbose: VerboseFlag = False,
) -> None:
    """Train (the default command)."""
    if ctx.invoked_subcommand is not None:
        return
    optimizers = tuple(dict.fromkeys(choice.value for choice in optimizer or [])) or (None,)
    if resume is not None:  # the run folder's saved config is used, and these flags are not
        return run_training(TrainRequest(resume, cache=not no_cache, verbose=verbose))
    config = checked(lambda: TrainConfig(
        data=data, model=model.value, lr=lr, momentum=momentum, nesterov=nesterov, beta_1=beta_1, beta_2=beta_2,
        epsilon=epsilon, amsgrad=amsgrad, rho=rho, centered=centered, weight_decay=weight_decay,
        clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum, lookahead=lookahead, lr_schedule=lr_schedule.value if lr_schedule else None,
        l2=l2, dropout=dropout, augment=augment, label_smoothing=label_smoothing, epochs=epochs, batch_size=batch_size,
        validation_split=validation_split, limit=limit, seed=seed, early_stopping_patience=early_stopping_patience,
        reduce_lr_factor=reduce_lr_factor, reduce_lr_patience=reduce_lr_patience, min_lr=min_lr, name=name,
        output=output, distribute=distribute.value, mixed_precision=mixed_precision,
        ood_flag_rate=ood_flag_rate, ood_score=ood_score.value,
    ))
    run_training(TrainRequest(config, optimizers, not no_cache, verbose))  # a bad flag failed before TensorFlow


def checked(build: Callable[[], TrainConfig]) -> TrainConfig:
    """The config `build` makes from the flags; a value pydantic refuses is one line naming its flag."""
    try:
        return build()
    except ValidationError as error:
        first = error.errors()[0]
        field = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "flags"
        raise UserError(f"invalid value for {field}: {first['msg']}") from None


@app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="A Keras 3 .keras file, a Keras 2 .h5 file, or a SavedModel folder.")],
    name: Annotated[str, typer.Option(help="Name in the BentoML model store.")] = "cifar10-cnn",
    input_scaling: Annotated[Scaling, typer.Option( help="How the model expects pixels: uint8 (it scales itself), 0-1, -1-1, or auto (detect; tries each on test data).")] = Scaling.auto,
    data: Annotated[Optional[str], typer.Option(help="CIFAR-10 source to evaluate on (as for training). Default: the Keras download, skipped if unavailable.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate on a stratified subset of N test images.")] = None,
    trust_model_code: Annotated[bool, typer.Option(help="Import a legacy file even though it holds code (Lambda layers, custom classes, file-system ops): it stays in its legacy format and the service needs CIFAR10_TRUST_MODEL_CODE=1 to serve it.")] = False,
    ood_flag_rate: OodFlagRateFlag = DEFAULTS.ood_flag_rate, ood_score: OodScoreFlag = Score(DEFAULTS.ood_score),
    verbose: Annotated[bool, typer.Option(help="Show TensorFlow's start-up log (CUDA probe, oneDNN notes).")] = False,
) -> None:
    """Register a model trained elsewhere, scanned for code, checked, converted to Keras 3 where safe, evaluated and
    calibrated (on half of the test images, measured on the other half: its training data is unknown)."""
    rate = checked(lambda: TrainConfig(ood_flag_rate=ood_flag_rate)).ood_flag_rate
    run_import(path, name, input_scaling.value, data, limit, trust_model_code, verbose, (rate, ood_score.value))


@app.command("calibrate")
def calibrate_command(
    model: Annotated[str, typer.Argument(help="The stored model: name or name:version.")],
    data: Annotated[str, typer.Option(help="The CIFAR-10 source the model was trained on (its validation split is rebuilt from the card), or for an imported model any CIFAR-10 source (half of its test images fit, half measure).")],
    ood_flag_rate: OodFlagRateFlag = DEFAULTS.ood_flag_rate, ood_score: OodScoreFlag = Score(DEFAULTS.ood_score),
    trust_model_code: Annotated[bool, typer.Option(help="Load an entry that needs it (a legacy or trusted import).")] = False,
    verbose: Annotated[bool, typer.Option(help="Show TensorFlow's start-up log (CUDA probe, oneDNN notes).")] = False,
) -> None:
    """Calibrate a stored model again (another --ood-flag-rate or --ood-score, or an entry from before calibration) and store it as a new version."""
    rate = checked(lambda: TrainConfig(ood_flag_rate=ood_flag_rate)).ood_flag_rate
    run_calibrate(model, data, rate, ood_score.value, trust_model_code, verbose)


def exit_code_of(error: BaseException | None, returned: object) -> tuple[int, str]:
    """The exit code and stderr message of a finished command: usage and user errors 2, Ctrl-C 130."""
    if isinstance(error, UsageError):
        return 2, f"train-cifar: error: {error.format_message()}\n"
    if isinstance(error, UserError):
        return 2, f"train-cifar: error: {error}\n"
    if isinstance(error, typer.Abort):
        return 130, ""
    if error is not None:
        raise error
    return (returned if isinstance(returned, int) else 0), ""


def main() -> None:
    """Entry point: usage and user errors become one line on stderr and exit code 2."""
    error: BaseException | None = None
    returned: object = None
    try:
        returned = app(standalone_mode=False)
    except (UsageError, UserError, typer.Abort) as caught:
        error = caught
    code, message = exit_code_of(error, returned)
    print(message, end="", file=sys.stderr)
    sys.exit(code)
