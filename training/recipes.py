"""Every number of each `--model` recipe in one frozen object, the way airbench keeps its `hyp` dict.

Models, optimizers and callbacks read these objects; nothing else states a recipe's numbers. The
`training` part holds the defaults a flag can override: `TrainConfig.resolved()` fills each flag the
user left unset from it, and `Recipe.with_choices` puts the resolved values back for the builders.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from typing_extensions import Self

ModelName = Literal["cnn", "cnn-bn", "mlp", "fast"]
OptimizerName = Literal["adam", "sgd", "rmsprop", "adamw"]
Schedule = Literal["constant", "cosine", "one-cycle"]


class Frozen(BaseModel):
    """Immutable and strict: a recipe is read, never changed in place, and a misspelt number fails."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainingDefaults(Frozen):
    """The recipe's published training settings; None leaves the choice to Keras' (or TrainConfig's) default."""

    epochs: int
    batch_size: int
    l2: float
    dropout: float
    augment: bool
    optimizer: OptimizerName | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    label_smoothing: float | None = None
    lr_schedule: Schedule | None = None
    use_ema: bool | None = None
    lookahead: bool | None = None
    early_stopping_patience: int | None = None
    validation_split: float | None = None

    def defaults(self) -> dict[str, object]:
        """Only the settings the recipe states, keyed by TrainConfig field."""
        return self.model_dump(exclude_none=True)


class OneCycle(Frozen):
    """The one-cycle schedule: linear warm-up from lr / start_divisor over warmup_share of the steps, then cosine."""

    warmup_share: float
    start_divisor: float


class LookaheadAveraging(Frozen):
    """airbench's Lookahead: sync a slow copy every `every` steps; its share grows to `final_decay`."""

    every: int
    final_decay: float


class Augmentation(Frozen):
    """Random horizontal flip and a translation of up to `translate` of the image side (reflect padding)."""

    translate: float


class BatchNorm(Frozen):
    """Keras BatchNormalization momentum (PyTorch's is 1 - this) and epsilon."""

    momentum: float
    epsilon: float


class Whitening(Frozen):
    """The frozen patch-whitening convolution: kernels from the patch covariance of the first `images` images."""

    patch: int
    images: int
    eps: float

    @property
    def width(self) -> int:
        """One filter per patch dimension (patch x patch x RGB) and its negative."""
        return 2 * self.patch * self.patch * 3


# Shared by every recipe: used whenever a run has --lr-schedule one-cycle or --lookahead.
ONE_CYCLE = OneCycle(warmup_share=1 / 5, start_divisor=10)
LOOKAHEAD = LookaheadAveraging(every=5, final_decay=0.95**5)


class Recipe(Frozen):
    """What every recipe has: its name, training defaults, schedule shape and Lookahead averaging."""

    name: ModelName
    training: TrainingDefaults
    one_cycle: OneCycle = ONE_CYCLE
    lookahead: LookaheadAveraging = LOOKAHEAD
    augmentation: Augmentation | None = None
    bf16_on_cpu: bool = False
    preprocessing: str

    def with_choices(self, l2: float | None, dropout: float | None, augment: bool | None) -> Self:
        """This recipe with a run's l2, dropout and augmentation (None keeps the recipe's), for the model
        builders; plain values, so recipes need not know the config that holds them."""
        chosen = {"l2": l2, "dropout": dropout, "augment": augment}
        training = self.training.model_copy(update={k: v for k, v in chosen.items() if v is not None})
        return self.model_copy(update={"training": training})

    @property
    def augments(self) -> bool:
        """Trained on flips and translations: then evaluated and served with test-time augmentation."""
        return self.augmentation is not None and self.training.augment


class CnnRecipe(Recipe):
    """The published small CNN: conv-pool blocks, a dense layer, dropout."""

    name: Literal["cnn"] = "cnn"
    filters: tuple[int, ...]
    kernel_size: int
    dense_units: int


class CnnBnRecipe(Recipe):
    """The CNN made deeper: blocks of convolution + BatchNorm, pooling and dropout, with augmentation."""

    name: Literal["cnn-bn"] = "cnn-bn"
    filters: tuple[int, ...]
    convs_per_block: int
    kernel_size: int


class MlpRecipe(Recipe):
    """The published deep MLP: the widths of its six hidden layers."""

    name: Literal["mlp"] = "mlp"
    widths: tuple[int, int, int, int, int, int]


class FastRecipe(Recipe):
    """airbench94 in plain Keras: patch whitening, conv-pool blocks, BatchNorm, temperature, identity init."""

    name: Literal["fast"] = "fast"
    widths: tuple[int, ...]
    kernel_size: int
    batchnorm: BatchNorm
    whitening: Whitening
    temperature: float
    dirac_init: bool
    activation: Literal["gelu", "relu"]


CNN = CnnRecipe(
    training=TrainingDefaults(epochs=50, batch_size=64, l2=1e-3, dropout=0.5, augment=False),
    filters=(32, 64),
    kernel_size=3,
    dense_units=128,
    preprocessing="uint8 RGB -> float / 255 (range [0, 1]), inside the model",
)

CNN_BN = CnnBnRecipe(
    training=TrainingDefaults(
        epochs=30, batch_size=128, l2=1e-4, dropout=0.25, augment=True,
        optimizer="adam", lr=3e-3, lr_schedule="one-cycle", label_smoothing=0.1,
    ),
    augmentation=Augmentation(translate=0.1),
    filters=(32, 64, 128),
    convs_per_block=2,
    kernel_size=3,
    preprocessing="uint8 RGB -> float / 255, random flip + translation (training only), inside the model",
)

MLP = MlpRecipe(
    training=TrainingDefaults(epochs=30, batch_size=128, l2=0.0, dropout=0.2, augment=False),
    widths=(128, 256, 1024, 2048, 1024, 1024),
    preprocessing="uint8 RGB -> float / 127.5 - 1 (range [-1, 1]), flattened, inside the model",
)

FAST = FastRecipe(
    # airbench94's decoupled hyperparameters (lr 11.5 and weight decay 0.0153 per 1024 examples,
    # summed loss) translated to Keras' mean loss at batch 512: lr 11.5 * 0.5 / (1 + 1 / 0.15)
    training=TrainingDefaults(
        epochs=10, batch_size=512, l2=6.5e-4, dropout=0.0, augment=True,
        optimizer="sgd", lr=0.75, momentum=0.85, nesterov=True, label_smoothing=0.2, lr_schedule="one-cycle",
        use_ema=False, lookahead=True, early_stopping_patience=0,
        validation_split=0.1,  # held out for calibration: the temperature and the out-of-distribution threshold
    ),
    augmentation=Augmentation(translate=2 / 32),
    bf16_on_cpu=True,  # bfloat16 mixed precision by default on CPUs that compute it natively
    widths=(64, 128, 128),
    kernel_size=3,
    batchnorm=BatchNorm(momentum=0.4, epsilon=1e-12),  # PyTorch momentum 0.6
    whitening=Whitening(patch=2, images=5000, eps=5e-4),
    temperature=1 / 9,
    dirac_init=True,
    # airbench's GELU took 18% of a CPU training step (erf and its gradient); ReLU measured 1.12-1.16x faster
    # per step at the same accuracy after 3 epochs (82.70% against 82.90%, docs/performance.md)
    activation="relu",
    preprocessing="uint8 RGB -> per-channel standardised, random flip + translation (training only), "
    "frozen 2x2 patch whitening, inside the model",
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (CNN, CNN_BN, MLP, FAST)}
