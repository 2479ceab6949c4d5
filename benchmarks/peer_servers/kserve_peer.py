"""KServe 0.21's Python ModelServer (OIP v2 with binary tensors), serving our model as a `kserve.Model`.

Image files come as base64 strings in JSON (its binary BYTES input must be UTF-8 text). KServe's Python
server has no request batcher (in a cluster batching is an agent beside the pod), so each
request is one model call; `workers` is its uvicorn worker processes (spawned, each unpickles the model
and loads it itself).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from benchmarks.peer_servers.common import FILES_INPUT, MODEL_NAME, OUTPUT, PeerSettings, decode_files, load_predict


class CifarModel(Model):
    def __init__(self, settings: PeerSettings) -> None:
        super().__init__(MODEL_NAME)
        self.settings = settings
        self._predict: Any = None

    def load(self) -> bool:
        if self.settings.workers == 1:  # else each spawned worker loads its own (see __setstate__)
            self._predict = load_predict(self.settings)
        self.ready = True
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_predict": None}  # a compiled TensorFlow function does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._predict = load_predict(self.settings)

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        tensor = payload.inputs[0]
        if tensor.name == FILES_INPUT:  # base64 strings in JSON: KServe turns binary BYTES into UTF-8 text
            images = decode_files([base64.b64decode(item) for item in tensor.as_numpy().reshape(-1)])
        else:
            images = tensor.as_numpy()
        probabilities = np.asarray(self._predict(images), dtype=np.float32)
        output = InferOutput(name=OUTPUT, shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities, binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=MODEL_NAME, infer_outputs=[output])


def main() -> None:
    settings = PeerSettings.from_env()
    model = CifarModel(settings)
    model.load()
    ModelServer(http_port=settings.port, workers=settings.workers, enable_grpc=False,
                enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
