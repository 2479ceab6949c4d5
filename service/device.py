"""Which device this worker infers on: one GPU per worker with memory growth, else the CPU.

Must run before any TensorFlow op: visible devices and memory growth cannot change afterwards.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Device:
    type: str  # "GPU" or "CPU"
    name: str

    def __str__(self) -> str:
        return f"{self.type}: {self.name}"


def gpu_count() -> int:
    """GPUs this machine offers, without importing TensorFlow (decides the worker count at import)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_inference_threads() -> int:
    """Threads for one model call on the CPU: CIFAR10_INFERENCE_THREADS, else half the cores,
    so that HTTP parsing and image decoding keep the other half."""
    raw = os.environ.get("CIFAR10_INFERENCE_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, (os.cpu_count() or 2) // 2)


def configure_device(worker_index: int | None, tf: Any = None) -> Device:
    """Pin this worker to GPU (worker_index - 1) mod n with memory growth; the CPU when there is none.

    `worker_index` is BentoML's 1-based `server_context.worker_index`; `tf` is injectable for tests.
    """
    if tf is None:
        import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        tf.config.threading.set_intra_op_parallelism_threads(cpu_inference_threads())
        return Device("CPU", cpu_name())
    gpu = gpus[((worker_index or 1) - 1) % len(gpus)]
    tf.config.set_visible_devices([gpu], "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpu) or {}
    return Device("GPU", str(details.get("device_name") or gpu.name))
