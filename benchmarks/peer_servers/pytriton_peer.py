"""PyTriton 0.7: NVIDIA's Triton server binary (OIP v2 with binary tensors) with our model as a Python
callable, batched by Triton's dynamic batcher (max batch size, max queue delay).

Two models: `cifar10` takes UINT8 images, `cifar10_files` one encoded image file per row (BYTES), decoded
in the callable. `workers` is Triton's model instances: each has its own stub process beside the server
and calls the model in its own thread of this process (PyTriton runs the Python model here, not in
separate Python processes).
"""

from __future__ import annotations

import os
import socket
import sysconfig
from collections.abc import Callable

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peer_servers.common import (FILES_INPUT, FILES_MODEL_NAME, IMAGES_INPUT, MODEL_NAME, OUTPUT,
                                            PeerSettings, decode_files, load_predict)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def callables(predict: Callable[[np.ndarray], np.ndarray]) -> tuple[Callable, Callable]:
    @batch
    def images(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {OUTPUT: np.asarray(predict(inputs[IMAGES_INPUT]), dtype=np.float32)}

    @batch
    def files(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        decoded = decode_files([bytes(row[0]) for row in inputs[FILES_INPUT]])
        return {OUTPUT: np.asarray(predict(decoded), dtype=np.float32)}

    return images, files


def use_our_libpython() -> None:
    """Triton's Python stub links `libpython3.x.so` by name: the loader must find this Python's (pyenv's, say),
    not an older system one whose C modules do not match this standard library."""
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)


def main() -> None:
    use_our_libpython()
    settings = PeerSettings.from_env()
    predict = load_predict(settings)
    images, files = callables(predict)
    config = ModelConfig(max_batch_size=settings.max_batch_size,
                         batcher=DynamicBatcher(max_queue_delay_microseconds=settings.max_latency_ms * 1000))
    output = [Tensor(name=OUTPUT, dtype=np.float32, shape=(-1,))]
    server = TritonConfig(http_address=HOST, http_port=settings.port, grpc_address=HOST, grpc_port=free_port(),
                          allow_metrics=False, log_verbose=0)
    with Triton(config=server) as triton:
        triton.bind(model_name=MODEL_NAME, infer_func=[images] * settings.workers,
                    inputs=[Tensor(name=IMAGES_INPUT, dtype=np.uint8, shape=(32, 32, 3))], outputs=output,
                    config=config)
        triton.bind(model_name=FILES_MODEL_NAME, infer_func=[files] * settings.workers,
                    inputs=[Tensor(name=FILES_INPUT, dtype=np.bytes_, shape=(1,))], outputs=output, config=config)
        triton.serve()


if __name__ == "__main__":
    main()
