"""Ray Serve 2.60: one deployment at `/classify` taking the image file as the raw body, answering
{"probabilities": [...]}; concurrent requests to a replica share a model call through `@serve.batch`
(max_batch_size, batch_wait_timeout_s); `workers` is its replicas (processes). A GET answers once the
application is deployed (the harness waits for it). It speaks no OIP v2: only the end-to-end workload.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from benchmarks.peer_servers.common import OUTPUT, PeerSettings, decode_files, load_predict

SETTINGS = PeerSettings.from_env()


@serve.deployment(num_replicas=SETTINGS.workers, max_ongoing_requests=2 * SETTINGS.max_batch_size)
class Cifar:
    def __init__(self) -> None:
        self._predict = load_predict(PeerSettings.from_env())

    @serve.batch(max_batch_size=SETTINGS.max_batch_size, batch_wait_timeout_s=SETTINGS.max_latency_ms / 1000)
    async def classify(self, images: list[np.ndarray]) -> list[list[float]]:
        return np.asarray(self._predict(np.stack(images)), dtype=np.float32).tolist()

    async def __call__(self, request: Request) -> dict[str, object]:
        if request.method == "GET":
            return {"ready": True}
        image = decode_files([await request.body()])[0]
        return {OUTPUT: await self.classify(image)}


def main() -> None:
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": SETTINGS.port})
    serve.run(Cifar.bind(), route_prefix="/classify")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
