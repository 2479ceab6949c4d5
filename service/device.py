"""Which device this worker infers on: one GPU per worker with memory growth, else the CPU.

Must run before any TensorFlow op: visible devices and memory growth cannot change afterwards.
"""

from __future__ import annotations

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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def configure_device(worker_index: int | None, inference_threads: int = 1, tf: Any = None) -> Device:
    """Pin this worker to GPU (worker_index - 1) mod n with memory growth; the CPU when there is none.

    `worker_index` is BentoML's 1-based `server_context.worker_index`; on the CPU one model call uses
    `inference_threads` threads; `tf` is injectable for tests.
    """
    if tf is None:
        import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        tf.config.threading.set_intra_op_parallelism_threads(inference_threads)
        return Device("CPU", cpu_name())
    gpu = gpus[((worker_index or 1) - 1) % len(gpus)]
    tf.config.set_visible_devices([gpu], "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpu) or {}
    return Device("GPU", str(details.get("device_name") or gpu.name))
