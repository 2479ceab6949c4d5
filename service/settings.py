"""Service settings: every environment variable the service reads, read once here and validated.

A bad value is one line naming the variable (`SettingsError`), which the service turns into a
start-up failure without a traceback.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

DEFAULT_MODEL_NAME = "cifar10-cnn"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
T = TypeVar("T", int, float)


class SettingsError(ValueError):
    """An environment variable with a value the service cannot use."""


def _number_env(env: Mapping[str, str], name: str, parse: Callable[[str], T], kind: str) -> T | None:
    """The variable parsed by `parse` (int or float), None when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {kind}") from None


def _int_env(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    value = _number_env(env, name, int, "an integer")
    if value is None:
        return default
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _float_env(env: Mapping[str, str], name: str) -> float | None:
    value = _number_env(env, name, float, "a number")
    if value is not None and not math.isfinite(value):
        raise SettingsError(f"{name}={value} must be a finite number")
    return value


def _bool_env(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in TRUE_WORDS + FALSE_WORDS:
        raise SettingsError(f"{name}={raw!r} is not a switch: use 1 or 0")
    return raw in TRUE_WORDS


def as_tag(name_or_tag: str) -> str:
    return name_or_tag if ":" in name_or_tag else f"{name_or_tag}:latest"


def model_tags(env: Mapping[str, str] = os.environ) -> list[str]:
    """The served models: CIFAR10_MODELS (comma-separated names or name:version tags, the first is the
    default), else CIFAR10_MODEL, else the latest cifar10-cnn."""
    listed = [item.strip() for item in env.get("CIFAR10_MODELS", "").split(",") if item.strip()]
    tags = [as_tag(item) for item in listed or [env.get("CIFAR10_MODEL", "").strip() or DEFAULT_MODEL_NAME]]
    names = [tag.split(":", 1)[0] for tag in tags]
    if len(set(names)) != len(names):
        raise SettingsError(f"CIFAR10_MODELS={env.get('CIFAR10_MODELS')!r} names a model twice: one version per name")
    return tags


def model_tag(env: Mapping[str, str] = os.environ) -> str:
    """The default model's tag (the first of `model_tags`)."""
    return model_tags(env)[0]


def gpu_count(env: Mapping[str, str] = os.environ) -> int:
    """GPUs this machine offers, without importing TensorFlow (decides the worker count at import)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


@dataclass(frozen=True)
class Settings:
    model_tags: list[str]  # served models; the first is the default
    max_batch_size: int  # images per model call
    max_latency_ms: int  # how long the batcher waits to fill a batch
    max_batch_files: int  # files per /classify_batch request
    max_image_pixels: int  # width * height before decoding (decompression bombs)
    max_body_bytes: int  # whole request body
    decode_threads: int  # Pillow decoding threads per worker
    large_image_pixels: int  # an image over this (after JPEG's draft scale) decodes in the large lane
    max_large_images: int  # large images a worker holds at once (decoding or waiting to)
    max_inflight_bytes: int  # request bodies a worker holds at once
    max_inflight_images: int  # images a worker holds at once, from decoding to the answer
    gpus: int  # GPUs on this machine (CUDA_VISIBLE_DEVICES, else the driver's list)
    workers: int  # API worker processes (CIFAR10_WORKERS); default one per GPU, else one
    inference_threads: int  # CPU threads for one model call; default half the cores
    trust_model_code: bool = False  # CIFAR10_TRUST_MODEL_CODE: serve entries whose loading can run code
    model_control: bool = False  # CIFAR10_MODEL_CONTROL: the /v2/repository load and unload routes
    api_key: str | None = field(default=None, repr=False)  # CIFAR10_API_KEY: Bearer key, unset = open
    ood_threshold: float | None = None  # CIFAR10_OOD_THRESHOLD: in-distribution threshold over every card's
    bentoml_home: str = "~/bentoml"  # where the model store is, for messages

    @property
    def model_tag(self) -> str:
        return self.model_tags[0]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        gpus = gpu_count(env)
        max_batch_size = _int_env(env, "CIFAR10_MAX_BATCH_SIZE", 64)
        max_body_bytes = _int_env(env, "CIFAR10_MAX_BODY_BYTES", 10 * 1024 * 1024)
        return cls(
            model_tags=model_tags(env),
            max_batch_size=max_batch_size,
            max_latency_ms=_int_env(env, "CIFAR10_MAX_LATENCY_MS", 2, minimum=0),
            max_batch_files=_int_env(env, "CIFAR10_MAX_BATCH_FILES", 64),
            max_image_pixels=_int_env(env, "CIFAR10_MAX_IMAGE_PIXELS", 40_000_000),
            max_body_bytes=max_body_bytes,
            decode_threads=_int_env(env, "CIFAR10_DECODE_THREADS", min(4, os.cpu_count() or 1)),
            large_image_pixels=_int_env(env, "CIFAR10_LARGE_IMAGE_PIXELS", 4_000_000),
            max_large_images=_int_env(env, "CIFAR10_MAX_LARGE_IMAGES", 4),
            max_inflight_bytes=_int_env(env, "CIFAR10_MAX_INFLIGHT_BYTES", 4 * max_body_bytes),
            max_inflight_images=_int_env(env, "CIFAR10_MAX_INFLIGHT_IMAGES", 8 * max_batch_size),
            gpus=gpus,
            workers=_int_env(env, "CIFAR10_WORKERS", max(1, gpus)),
            inference_threads=_int_env(env, "CIFAR10_INFERENCE_THREADS", max(1, (os.cpu_count() or 2) // 2)),
            trust_model_code=_bool_env(env, "CIFAR10_TRUST_MODEL_CODE"),
            model_control=_bool_env(env, "CIFAR10_MODEL_CONTROL"),
            api_key=env.get("CIFAR10_API_KEY", "").strip() or None,
            ood_threshold=_float_env(env, "CIFAR10_OOD_THRESHOLD"),
            bentoml_home=env.get("BENTOML_HOME", "~/bentoml"),
        )


@functools.cache
def service_settings() -> Settings:
    """This process's settings, read once; a bad value stops `bentoml serve` with one line."""
    try:
        return Settings.from_env()
    except SettingsError as error:
        import bentoml

        raise bentoml.exceptions.InvalidArgument(str(error)) from None
