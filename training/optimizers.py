"""Config -> a Keras optimizer, with Keras' own names and defaults."""

from __future__ import annotations

import keras

from training.config import TrainConfig


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, a cosine decay over the whole run, or the recipe's one-cycle (linear warm-up, cosine down)."""
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=total_steps)
    if config.lr_schedule == "one-cycle":
        cycle = config.recipe.one_cycle
        warmup = max(1, int(total_steps * cycle.warmup_share))
        return keras.optimizers.schedules.CosineDecay(
            config.lr / cycle.start_divisor, decay_steps=max(1, total_steps - warmup),
            warmup_target=config.lr, warmup_steps=warmup,
        )
    return config.lr


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The chosen Keras optimizer with the run's schedule, clipping and EMA."""
    common = {
        "learning_rate": learning_rate(config, steps_per_epoch),
        "clipnorm": config.clipnorm,
        "clipvalue": config.clipvalue,
        "global_clipnorm": config.global_clipnorm,
        "use_ema": config.use_ema,
        "ema_momentum": config.ema_momentum,
    }
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay, **common
        )
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(
            rho=config.rho, momentum=config.momentum, epsilon=config.epsilon, centered=config.centered,
            weight_decay=config.weight_decay, **common,
        )
    adam_args = {"beta_1": config.beta_1, "beta_2": config.beta_2, "epsilon": config.epsilon, "amsgrad": config.amsgrad}
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, **adam_args, **common)
    return keras.optimizers.Adam(weight_decay=config.weight_decay, **adam_args, **common)


def optimizer_summary(optimizer: keras.optimizers.Optimizer) -> dict[str, object]:
    """The optimizer's own config, JSON-safe, for the store's metadata."""
    summary: dict[str, object] = {}
    for key, value in optimizer.get_config().items():
        if isinstance(value, dict):  # a serialised learning-rate schedule
            summary[key] = {"schedule": value.get("class_name"), **value.get("config", {})}
        elif isinstance(value, (int, float, str, bool)) or value is None:
            summary[key] = value
        else:
            summary[key] = str(value)
    return summary
