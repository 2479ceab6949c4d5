"""Every training choice in one validated, serialisable model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.card import ScoreName
from training.recipes import RECIPES, ModelName, OptimizerName, Recipe, Schedule

Distribute = Literal["none", "mirrored", "multi-worker"]

# Keras' own default learning rate for each optimizer.
KERAS_DEFAULT_LR: dict[str, float] = {"adam": 1e-3, "sgd": 1e-2, "rmsprop": 1e-3, "adamw": 1e-3}
KERAS_ADAMW_WEIGHT_DECAY = 0.004
# The out-of-distribution score stored in new cards, and the share of in-distribution validation images its
# threshold flags. feature_norm had the highest AUROC of the six scores against every set for fast
# (benchmarks/ood.py; docs/calibration.md); a network without penultimate features or logits falls back
# (training.calibration.FALLBACK).
OOD_SCORE: ScoreName = "feature_norm"
OOD_FLAG_RATE = 0.05


def store_name(model: str) -> str:
    """The model store name of a recipe's models, unless --name says otherwise: each recipe has its own, so a
    fast run never becomes the latest cifar10-cnn the service serves by default."""
    return f"cifar10-{model}"


class TrainConfig(BaseModel):
    """One training run. `None` means "the recipe's (or Keras') default", filled by `resolved()`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: str | None = Field(None, description="CIFAR-10 source; None = Keras download and cache")
    model: ModelName = "cnn"
    optimizer: OptimizerName | None = None
    lr: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool | None = None
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)
    epsilon: float = Field(1e-7, gt=0)
    amsgrad: bool = False
    rho: float = Field(0.9, ge=0, lt=1)
    centered: bool = False
    weight_decay: float | None = Field(None, ge=0)
    clipnorm: float | None = Field(None, gt=0)
    clipvalue: float | None = Field(None, gt=0)
    global_clipnorm: float | None = Field(None, gt=0)
    use_ema: bool | None = None
    ema_momentum: float | None = Field(None, ge=0, lt=1)
    lookahead: bool | None = None
    lr_schedule: Schedule | None = None
    l2: float | None = Field(None, ge=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    augment: bool | None = None
    label_smoothing: float | None = Field(None, ge=0, lt=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    validation_split: float | None = Field(None, ge=0, lt=1)
    limit: int | None = Field(None, ge=10)
    seed: int = 42
    early_stopping_patience: int | None = Field(None, ge=0)
    reduce_lr_factor: float = Field(0.5, gt=0, lt=1)
    reduce_lr_patience: int = Field(3, ge=1)
    min_lr: float = Field(1e-6, ge=0)
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="None = store_name(model)")
    output: Path | None = None
    distribute: Distribute = "none"
    mixed_precision: bool | None = None
    ood_flag_rate: float = Field(OOD_FLAG_RATE, gt=0, lt=0.5)
    ood_score: ScoreName = OOD_SCORE

    @model_validator(mode="after")
    def _clipping_is_exclusive(self) -> TrainConfig:
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError("--clipnorm and --global-clipnorm cannot be used together")
        return self

    def resolved(self) -> TrainConfig:
        """Fill every unset choice with the recipe's published value, then with Keras' default."""
        recipe = RECIPES[self.model].training.defaults()
        values = self.model_dump()
        optimizer = self.optimizer or str(recipe.get("optimizer", "adam"))
        values["optimizer"] = optimizer
        values["name"] = self.name or store_name(self.model)
        for key, value in recipe.items():
            if values.get(key) is None:
                values[key] = value
        uses_recipe_optimizer = optimizer == recipe.get("optimizer")
        fallbacks: dict[str, object] = {
            "lr": recipe["lr"] if uses_recipe_optimizer else KERAS_DEFAULT_LR[optimizer],
            "momentum": 0.0,
            "nesterov": False,
            "use_ema": False,
            "ema_momentum": 0.99,
            "lookahead": False,
            "lr_schedule": "constant",
            "label_smoothing": 0.0,
            "validation_split": 0.2,
            # a schedule sets the run's length; early stopping would cut it in its high-rate phase
            "early_stopping_patience": 5 if values.get("lr_schedule") in (None, "constant") else 0,
            "weight_decay": KERAS_ADAMW_WEIGHT_DECAY if optimizer == "adamw" else None,
        }
        if not uses_recipe_optimizer:
            # sgd-specific recipe values only make sense for the recipe's own optimizer
            for key in ("lr", "momentum", "nesterov"):
                if getattr(self, key) is None:
                    values[key] = fallbacks[key]
        for key, value in fallbacks.items():
            if values.get(key) is None:
                values[key] = value
        return TrainConfig(**values)

    @property
    def uses_validation(self) -> bool:
        return bool(self.validation_split)

    @property
    def recipe(self) -> Recipe:
        """The `--model` recipe carrying this run's l2, dropout and augmentation (resolve the config first)."""
        return RECIPES[self.model].with_choices(self.l2, self.dropout, self.augment)
