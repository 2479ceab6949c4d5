"""What CPU this is, read from /proc/cpuinfo without importing TensorFlow: its model name, its *kind* (the
instruction sets that decide how fast training runs on it), and which of `cpu_kernels`' speed-ups measured
faster on that kind (benchmarks/train_step.py, docs/performance.md)."""

from __future__ import annotations

import os
from typing import Literal

from contract import machine
from contract.machine import cpuinfo

CpuKind = Literal["amx", "avx512-bf16", "avx512", "avx2", "other"]
Speedup = Literal["bfc-allocator", "conv-input-gradient"]
ALL_SPEEDUPS: tuple[Speedup, ...] = ("bfc-allocator", "conv-input-gradient")
SPEEDUPS_ENV = "CIFAR_SERVE_CPU_SPEEDUPS"

# What `benchmarks/train_step.py ab` measured as faster, per CPU kind and recipe (docs/performance.md has
# the A/Bs). A kind or recipe nobody has measured keeps them all, as every run did before they were measured.
MEASURED_FASTER: dict[tuple[CpuKind, str], tuple[Speedup, ...]] = {
    ("avx2", "fast"): ALL_SPEEDUPS,  # AMD EPYC: conv-input-gradient made a step 1.20x faster
    ("avx512", "fast"): (),  # Intel Xeon without BF16: bfc-allocator 0.89x, conv-input-gradient 1.02x (noise)
    ("avx512", "cnn"): (),  # the same machine: both together 1.00x (0.97-1.08)
}


class SpeedupError(ValueError):
    """A $CIFAR_SERVE_CPU_SPEEDUPS value that names no speed-up."""


def cpu_flags() -> set[str]:
    return machine.cpu_flags(cpuinfo())


def cpu_model() -> str:
    return machine.cpu_model(cpuinfo())


def cpu_kind() -> CpuKind:
    """The widest matrix arithmetic the CPU has: AMX tiles, AVX512 with bfloat16, AVX512, AVX2, or less."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def has_native_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX), where mixed precision roughly doubles CPU speed."""
    return cpu_kind() in ("amx", "avx512-bf16")


def describe_cpu() -> str:
    """One line for benchmark tables: model, kind, cores."""
    return f"{cpu_model()} ({cpu_kind()}, {os.cpu_count()} cores)"


def chosen_speedups(recipe: str | None) -> tuple[Speedup, ...]:
    """$CIFAR_SERVE_CPU_SPEEDUPS if set ("all", "none" or names joined by commas), else what measured faster
    for this recipe on this CPU's kind; none without a recipe (nothing is trained)."""
    if recipe is None:
        return ()
    value = os.environ.get(SPEEDUPS_ENV, "").strip().lower()
    if not value:
        return MEASURED_FASTER.get((cpu_kind(), recipe), ALL_SPEEDUPS)
    if value in ("all", "none"):
        return ALL_SPEEDUPS if value == "all" else ()
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_SPEEDUPS]
    if unknown:
        raise SpeedupError(f"{SPEEDUPS_ENV}={value!r}: unknown speed-up {unknown[0]!r}; "
                           f"use all, none, or some of {', '.join(ALL_SPEEDUPS)}")
    return tuple(name for name in ALL_SPEEDUPS if name in names)
