"""Devices, mixed precision and tf.distribute strategies, set up before any model is built."""

from __future__ import annotations

import functools
import os

import keras
import tensorflow as tf

from training import cpu_kernels
from training.config import Distribute

# For tests and CPU experiments: split the CPU into this many logical devices (a stand-in for GPUs).
LOGICAL_CPUS_ENV = "TRAIN_CIFAR_LOGICAL_CPUS"


@functools.cache
def configure_devices() -> tuple[str, ...]:
    """Turn on GPU memory growth (or split the CPU if asked); returns the devices training may use.

    Must run before TensorFlow initialises its devices (before any op); cached, so later calls are free.
    Without a GPU it also turns on the CPU speed-ups of `cpu_kernels`.
    """
    cpu_kernels.use_bfc_allocator()  # CPU memory only; before the first op, which creates the allocator
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        return tuple(f"/gpu:{i}" for i in range(len(gpus)))
    cpu_kernels.use_forward_conv_for_input_gradient()
    logical_cpus = max(1, int(os.environ.get(LOGICAL_CPUS_ENV, "1")))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    return tuple(f"/cpu:{i}" for i in range(logical_cpus))


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX), where mixed precision roughly doubles CPU speed."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_precision(requested: bool | None, on_gpu: bool, cpu_default: bool = False) -> str:
    """Mixed precision: on by default on a GPU (float16); on a CPU (bfloat16) when asked, or by
    default for recipes that want it (`cpu_default`) where the CPU has native bfloat16."""
    enabled = requested if requested is not None else (on_gpu or (cpu_default and cpu_has_bf16()))
    policy = ("mixed_float16" if on_gpu else "mixed_bfloat16") if enabled else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def build_strategy(kind: Distribute, devices: tuple[str, ...]) -> tf.distribute.Strategy:
    """The --distribute strategy; "none" is TensorFlow's default, so the same code runs in every case."""
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices))
    if kind == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--distribute multi-worker needs the TF_CONFIG environment variable of each worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
