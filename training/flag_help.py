"""The defaults `train-cifar --help` states, derived from the recipes and from `TrainConfig.resolved()`, so
the help never restates a number that can drift from recipes.py or config.py."""

from __future__ import annotations

import functools
from collections import Counter

from training.config import KERAS_ADAMW_WEIGHT_DECAY, KERAS_DEFAULT_LR, TrainConfig, store_name
from training.recipes import RECIPES


def short(number: float) -> str:
    """A recipe number as the help text writes it: 1e-3 and 6.5e-4, not 0.001 and 0.00065."""
    if not 0 < number < 0.1:
        return f"{number:g}"
    mantissa, exponent = f"{number:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def shown(value: object) -> str:
    """A default as the help writes it: short numbers, on/off for switches, none for an unset choice."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return short(value)
    return str(value)


@functools.cache
def resolved_recipes() -> dict[str, TrainConfig]:
    """What a run with no flag but --model resolves to, per recipe."""
    return {name: TrainConfig(model=name).resolved() for name in RECIPES}


def per_model(field: str) -> str:
    """'Default X.', 'Default X (fast: Y).' when most recipes agree, else every recipe's value."""
    values = {name: shown(getattr(config, field)) for name, config in resolved_recipes().items()}
    common, count = Counter(values.values()).most_common(1)[0]
    if count == len(values):
        return f"Default {common}."
    if 2 * count > len(values):
        others = ", ".join(f"{name}: {value}" for name, value in values.items() if value != common)
        return f"Default {common} ({others})."
    return "Default per model: " + ", ".join(f"{name} {value}" for name, value in values.items()) + "."


def recipes_where(field: str) -> str:
    """The recipes a switch is on for by default, e.g. "cnn-bn, fast"."""
    return ", ".join(name for name, config in resolved_recipes().items() if getattr(config, field))


def learning_rate() -> str:
    """--lr's default: the recipe's rate with its own optimizer, else Keras' default for the optimizer."""
    keras = ", ".join(f"{name} {short(lr)}" for name, lr in KERAS_DEFAULT_LR.items())
    return f"{per_model('lr')[:-1]}; with another --optimizer, Keras' default ({keras})."


def weight_decay() -> str:
    """--weight-decay's default, with adamw's own."""
    return f"{per_model('weight_decay')[:-1]} ({short(KERAS_ADAMW_WEIGHT_DECAY)} for adamw)."


def bf16_recipes() -> str:
    """The recipes that train in bfloat16 by default on a CPU that computes it natively."""
    return ", ".join(name for name, recipe in RECIPES.items() if recipe.bf16_on_cpu)


def store_names() -> str:
    """Every recipe's default store name."""
    return ", ".join(store_name(name) for name in RECIPES)
