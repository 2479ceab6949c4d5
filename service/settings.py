"""Service settings, read once from environment variables so the same code runs everywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_MODEL_NAME = "cifar10-cnn"


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def model_tag() -> str:
    """The model the service serves: CIFAR10_MODEL (a name or name:version), else the latest cifar10-cnn."""
    tag = os.environ.get("CIFAR10_MODEL", "").strip() or DEFAULT_MODEL_NAME
    return tag if ":" in tag else f"{tag}:latest"


@dataclass(frozen=True)
class Settings:
    model_tag: str
    max_batch_size: int  # images per model call
    max_latency_ms: int  # how long the batcher waits to fill a batch
    max_batch_files: int  # files per /classify_batch request
    max_image_pixels: int  # width * height before decoding (decompression bombs)
    max_body_bytes: int  # whole request body
    decode_threads: int  # Pillow decoding threads per worker
    api_key: str | None = field(default=None, repr=False)  # CIFAR10_API_KEY: Bearer key, unset = open

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            model_tag=model_tag(),
            max_batch_size=_int_env("CIFAR10_MAX_BATCH_SIZE", 64),
            max_latency_ms=_int_env("CIFAR10_MAX_LATENCY_MS", 2, minimum=0),
            max_batch_files=_int_env("CIFAR10_MAX_BATCH_FILES", 64),
            max_image_pixels=_int_env("CIFAR10_MAX_IMAGE_PIXELS", 40_000_000),
            max_body_bytes=_int_env("CIFAR10_MAX_BODY_BYTES", 10 * 1024 * 1024),
            decode_threads=_int_env("CIFAR10_DECODE_THREADS", min(4, os.cpu_count() or 1)),
            api_key=os.environ.get("CIFAR10_API_KEY", "").strip() or None,
        )
