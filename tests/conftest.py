"""Shared pytest fixtures."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# BEGIN service fixtures (owned by the serving half: service/, clients/, tests/test_service*.py)
#
# `cifar_model_store`: a temporary BENTOML_HOME holding a tiny, really trained `cifar10-cnn`
#     model saved through training.store.save_model (made in a subprocess so this pytest
#     process's bentoml keeps its own home).
# `cifar_server`: a real `bentoml serve service.service:CIFAR10Classifier` on a free port.
# `image_bytes`: small images in every format/mode the service accepts, built with Pillow.
# ---------------------------------------------------------------------------------------------

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE_IMPORT = "service.service:CIFAR10Classifier"
MODEL_NAME = "cifar10-cnn"


def make_tiny_model(home: str, workdir: str) -> str:
    """Train a tiny Keras 3 model for one epoch and store it; returns its tag (runs in a subprocess)."""
    os.environ["BENTOML_HOME"] = home
    import keras

    from training.store import CIFAR10_CLASSES, save_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y_train = rng.integers(0, 10, (64,))
    history = model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    path = Path(workdir) / "model.keras"
    model.save(path)
    accuracy = float(history.history["accuracy"][-1])
    metadata = {
        "class_names": CIFAR10_CLASSES,
        "architecture": "tiny_cnn",
        "parameters": int(model.count_params()),
        "preprocessing": "rescale 1/255 inside the model",
        "input_scaling": "uint8",
        "flip_tta": True,
        "config": {"model": "tiny", "optimizer": "adam", "lr": 1e-3, "epochs": 1, "batch_size": 32},
        "metrics": {
            "test_accuracy": 0.1,
            "test_loss": 2.3,
            "train_accuracy": accuracy,
            "best_val_accuracy": 0.1,
            "epochs_run": 1,
        },
        "training_time_s": 1.0,
        "data": {"source": "random", "train_size": 64, "val_size": 0, "test_size": 0},
    }
    return save_model(MODEL_NAME, path, "keras", metadata=metadata, labels={"architecture": "tiny_cnn", "optimizer": "adam"})


@dataclass(frozen=True)
class ModelStore:
    home: Path
    tag: str

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that uses this store (bentoml reads BENTOML_HOME at import)."""
        env = {**os.environ, "BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true"}
        env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)})
        env.pop("CIFAR10_MODEL", None)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def cifar_model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A temporary BENTOML_HOME with one tiny trained `cifar10-cnn` model in it."""
    home = tmp_path_factory.mktemp("bentoml_home")
    work = tmp_path_factory.mktemp("tiny_model")
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import conftest; "
        "print('TAG=' + conftest.make_tiny_model(sys.argv[1], sys.argv[2]))"
    )
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(home), str(work), str(Path(__file__).parent)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = next(line[4:] for line in result.stdout.splitlines() if line.startswith("TAG="))
    return ModelStore(home=home, tag=tag)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log: Path
    store: ModelStore

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(store: ModelStore, log: Path, timeout: float = 120, **env: str) -> Server:
    """`bentoml serve` in a subprocess; waits for /readyz (or for the process to die)."""
    port = free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", "127.0.0.1", "--port", str(port)]
    handle = log.open("w")
    process = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, env=store.env(**env), stdout=handle, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log, store)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return server  # died: the caller inspects the log
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_server(server)
    raise TimeoutError(f"server not ready in {timeout}s:\n{server.log_text()[-3000:]}")


def stop_server(server: Server) -> None:
    """Stop the server and its workers (its own process group, started above)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, 15)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, 9)
            server.process.wait()


@pytest.fixture(scope="session")
def cifar_server(cifar_model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One live server for the session, against the tiny model."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    limits = {"CIFAR10_MAX_BODY_BYTES": str(1024 * 1024), "CIFAR10_MAX_IMAGE_PIXELS": "4000000", "CIFAR10_MAX_BATCH_FILES": "8"}
    server = start_server(cifar_model_store, log, **limits)
    if server.process.poll() is not None:
        pytest.fail(f"server exited at start-up:\n{server.log_text()[-3000:]}")
    yield server
    stop_server(server)


def _encode(image: "Image.Image", fmt: str, **options: object) -> bytes:  # noqa: F821
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_bytes() -> dict[str, bytes]:
    """Small test images: every accepted format and colour mode, keyed by a short name."""
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    gif = _encode(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.rotate(90).convert("P")])
    sixteen = Image.fromarray(rng.integers(0, 65536, (36, 36)).astype(np.uint16))
    return {
        "png": _encode(rgb, "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=90),
        "gif": gif,
        "bmp": _encode(rgb, "BMP"),
        "webp": _encode(rgb, "WEBP"),
        "tiff": _encode(rgb, "TIFF"),
        "mode_l": _encode(rgb.convert("L"), "PNG"),
        "mode_la": _encode(rgb.convert("LA"), "PNG"),
        "mode_p": _encode(rgb.convert("P"), "PNG"),
        "mode_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "mode_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "mode_16bit": _encode(sixteen, "PNG"),
        "large": _encode(Image.new("RGB", (1600, 1200), (200, 30, 30)), "JPEG"),
    }


def metadata_json(server: Server) -> dict[str, object]:
    return json.loads(httpx.get(f"{server.url}/metadata", timeout=10).text)


# END service fixtures
# ---------------------------------------------------------------------------------------------
