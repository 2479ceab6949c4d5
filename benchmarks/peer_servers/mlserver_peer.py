"""MLServer 1.7 (Seldon), OIP v2 over REST in JSON (its REST server has no binary tensor extension), with its
adaptive batching (max_batch_size, max_batch_time) and `parallel_workers` inference processes.

`python -m benchmarks.peer_servers.mlserver_peer` writes the settings into a folder and becomes
`mlserver start` on it; MLServer imports `CifarRuntime` below in each of its workers.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmarks.peer_servers.common import FILES_INPUT, MODEL_NAME, OUTPUT, PeerSettings, decode_files, load_predict

HOST = "127.0.0.1"


class CifarRuntime(MLModel):
    async def load(self) -> bool:
        self._predict = load_predict(PeerSettings.from_env())
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = payload.inputs[0]
        if tensor.name == FILES_INPUT:  # base64 strings (MLServer's "base64" content type)
            images = decode_files([base64.b64decode(item) for item in tensor.data.root])
        else:
            images = NumpyCodec.decode_input(tensor).astype(np.uint8, copy=False)
        probabilities = np.asarray(self._predict(images), dtype=np.float32)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(OUTPUT, probabilities)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_folder(settings: PeerSettings) -> Path:
    """settings.json (the server) and model-settings.json (the model and its adaptive batching)."""
    folder = Path(tempfile.mkdtemp(prefix="mlserver-peer-"))
    server = {"host": HOST, "http_port": settings.port, "grpc_port": free_port(), "metrics_endpoint": None,
              "parallel_workers": settings.workers, "debug": False}
    model = {"name": MODEL_NAME, "implementation": "benchmarks.peer_servers.mlserver_peer.CifarRuntime",
             "max_batch_size": settings.max_batch_size, "max_batch_time": settings.max_latency_ms / 1000}
    (folder / "settings.json").write_text(json.dumps(server))
    (folder / "model-settings.json").write_text(json.dumps(model))
    return folder


def main() -> None:
    folder = write_folder(PeerSettings.from_env())
    mlserver = Path(sys.executable).with_name("mlserver")
    os.execv(mlserver, [str(mlserver), "start", str(folder)])


if __name__ == "__main__":
    main()
