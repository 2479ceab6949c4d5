"""LitServe 0.2: `POST /predict` with a JSON body {"image": "<base64 file>"} (LitServe hands a decoder the
parsed JSON, so a file travels as base64, as in its own image examples), answered {"probabilities": [...]}.
LitServe batches requests into `predict` (max_batch_size, batch_timeout); `workers` is its inference worker
processes on the CPU (`workers_per_device`); its ZeroMQ queue (`fast_queue`) is on, as its docs advise
above 100 requests/s. It speaks no OIP v2: it takes only the end-to-end workload.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as a live type, and
# `Request` means "hand me the parsed JSON".
import base64

import litserve as ls
import numpy as np
from starlette.requests import Request

from benchmarks.peer_servers.common import OUTPUT, PeerSettings, decode_files, load_predict


class CifarAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self._predict = load_predict(PeerSettings.from_env())

    def decode_request(self, request: Request) -> np.ndarray:  # the parsed JSON, not the Request
        return decode_files([base64.b64decode(request["image"])])[0]

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(images), dtype=np.float32)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, list[float]]:
        return {OUTPUT: output.tolist()}


def main() -> None:
    settings = PeerSettings.from_env()
    api = CifarAPI(max_batch_size=settings.max_batch_size, batch_timeout=settings.max_latency_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=settings.workers, fast_queue=True)
    server.run(host="127.0.0.1", port=settings.port, generate_client_file=False)


if __name__ == "__main__":
    main()
