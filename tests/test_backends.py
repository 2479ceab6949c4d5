"""The service's model under Keras' TensorFlow backend (the default) and its JAX backend, on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import PROJECT_ROOT, ModelStore, start_server
from inprocess import bentoml_home

pytestmark = pytest.mark.timeout(300)

# Keras picks its backend once per process: the TensorFlow one is this process's, the JAX one a process's own.
PREDICT = """
import json, sys
import numpy as np
from contract.calibration import calibrated_predict
from contract.predictor import load_predictor
import keras
images = np.random.default_rng(11).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
predictor = load_predictor(sys.argv[1])
served = calibrated_predict(predictor.logits, predictor.card.calibration, None)(images)["probabilities"]
print("OUT " + json.dumps({"backend": keras.backend.backend(), "p": served.tolist()}))
"""


def predictions(store: ModelStore, backend: str) -> tuple[str, np.ndarray]:
    """The stored model's served (calibrated) probabilities for PREDICT's images, in a process with
    KERAS_BACKEND=`backend`."""
    result = subprocess.run([sys.executable, "-c", PREDICT, store.tag], cwd=PROJECT_ROOT,
                            env=store.env(KERAS_BACKEND=backend), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(line[4:] for line in result.stdout.splitlines() if line.startswith("OUT ")))
    return out["backend"], np.array(out["p"])


def predictions_here(store: ModelStore) -> tuple[str, np.ndarray]:
    """PREDICT in this process, under its backend."""
    import keras

    from contract.calibration import calibrated_predict
    from contract.predictor import load_predictor

    images = np.random.default_rng(11).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
    with bentoml_home(store.home):
        predictor = load_predictor(store.tag)
    served = calibrated_predict(predictor.logits, predictor.card.calibration, None)  # the registry's model call
    return keras.backend.backend(), served(images)["probabilities"]


def test_both_backends_agree(cifar_model_store: ModelStore) -> None:
    """The same stored model, test-time augmentation included, 37 images (an odd batch: JAX pads it)."""
    backend_tf, on_tf = predictions_here(cifar_model_store)
    backend_jax, on_jax = predictions(cifar_model_store, "jax")
    assert (backend_tf, backend_jax) == ("tensorflow", "jax")
    assert on_tf.shape == on_jax.shape == (37, 10)
    assert np.abs(on_tf - on_jax).max() < 1e-4


def test_service_under_jax(cifar_model_store: ModelStore, cifar_server, image_bytes: dict[str, bytes],
                           tmp_path: Path) -> None:
    server = start_server(cifar_model_store, tmp_path / "serve.log", KERAS_BACKEND="jax")
    try:
        server.require_running()
        metadata = httpx.get(f"{server.url}/metadata", timeout=30).json()
        answers = [httpx.post(f"{url}/classify", files={"image": ("x", image_bytes[name])}, data={"top_k": "10"},
                              timeout=30).json() for name in ("png", "jpeg", "large") for url in (server.url, cifar_server.url)]
    finally:
        server.stop()
    assert metadata["backend"] == "jax" and metadata["device_type"] == "CPU"
    for on_jax, on_tf in zip(answers[::2], answers[1::2]):
        assert on_jax["label"] == on_tf["label"] and on_jax["model"] == on_tf["model"]
        jax_p = {p["label"]: p["probability"] for p in on_jax["top_k"]}
        tf_p = {p["label"]: p["probability"] for p in on_tf["top_k"]}
        assert jax_p == pytest.approx(tf_p, abs=1e-4)
