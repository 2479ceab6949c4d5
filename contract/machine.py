"""The CPU this runs on, read from /proc/cpuinfo without importing TensorFlow: the one reader of it, for
training's speed-up choice (`training.cpu_info`), the service's /metadata and every benchmark's table."""

from __future__ import annotations

import functools
import platform


@functools.cache
def cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return file.read()
    except OSError:
        return ""


def first_value(text: str, key: str) -> str | None:
    """The first processor's value of `key` (every core of these machines has the same)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_model(text: str | None = None) -> str:
    """The model name, e.g. "AMD EPYC 7B13" or "Intel(R) Xeon(R) Processor @ 2.50GHz"."""
    return first_value(cpuinfo() if text is None else text, "model name") or platform.processor() or platform.machine()


def cpu_flags(text: str | None = None) -> set[str]:
    """The instruction-set flags, e.g. {"avx2", "avx512_bf16", ...}."""
    return set((first_value(cpuinfo() if text is None else text, "flags") or "").split())
