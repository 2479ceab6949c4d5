"""Which device this worker infers on: one GPU per worker with bounded memory, else the CPU;
under Keras' TensorFlow backend (the default) or its JAX backend (`KERAS_BACKEND=jax`).

Must run before the model loads: visible devices and memory settings cannot change afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from contract.machine import cpu_model


@dataclass(frozen=True)
class Device:
    type: str  # "GPU" or "CPU"
    name: str

    def __str__(self) -> str:
        return f"{self.type}: {self.name}"


def keras_backend() -> str:
    """The backend Keras will use, read as Keras reads it, without importing Keras."""
    return os.environ.get("KERAS_BACKEND", "").strip() or "tensorflow"


def configure_device(worker_index: int | None, inference_threads: int = 1, tf: Any = None) -> Device:
    """The worker's device for the running Keras backend."""
    if keras_backend() == "jax" and tf is None:
        return configure_jax_device(worker_index)
    return configure_tensorflow_device(worker_index, inference_threads, tf)


def configure_jax_device(worker_index: int | None) -> Device:
    """JAX: no preallocation of most of the GPU (several workers share one), this worker's GPU the default."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        return Device("CPU", cpu_model())
    gpu = gpus[((worker_index or 1) - 1) % len(gpus)]
    jax.config.update("jax_default_device", gpu)
    return Device("GPU", str(getattr(gpu, "device_kind", gpu)))


def configure_tensorflow_device(worker_index: int | None, inference_threads: int = 1, tf: Any = None) -> Device:
    """Pin this worker to GPU (worker_index - 1) mod n with memory growth; the CPU when there is none.

    `worker_index` is BentoML's 1-based `server_context.worker_index`; on the CPU one model call uses
    `inference_threads` threads; `tf` is injectable for tests.
    """
    if tf is None:
        import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        tf.config.threading.set_intra_op_parallelism_threads(inference_threads)
        return Device("CPU", cpu_model())
    gpu = gpus[((worker_index or 1) - 1) % len(gpus)]
    tf.config.set_visible_devices([gpu], "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpu) or {}
    return Device("GPU", str(details.get("device_name") or gpu.name))
