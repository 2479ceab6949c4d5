"""Service access: the optional API key (server, clients, CLI) and Keras safe-mode model loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bad_files import corpus
from benchmarks.harness import ServerProcess
from clients.cli import app
from clients.client import AsyncCIFAR10Client, CIFAR10Client, ServiceError
from conftest import API_KEY, PROJECT_ROOT, ModelStore, assert_same_answer

pytestmark = pytest.mark.timeout(300)

PNG = corpus()["one_pixel"][0]
# keyed_server (conftest): CIFAR10_API_KEY=API_KEY, shared with tests/test_model_swap.py's model control


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_401(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert message in error and "\n" not in error and API_KEY not in error


def test_with_the_key_everything_answers(keyed_server: ServerProcess, cifar_model_store: ModelStore) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=30, headers=bearer(API_KEY)) as http:
        single = http.post("/classify", files={"image": ("a.png", PNG)})
        assert single.status_code == 200 and single.json()["model"] == cifar_model_store.tag, single.text
        batch = http.post("/classify_batch", files=[("images", ("a.png", PNG))] * 2)
        assert batch.status_code == 200 and len(batch.json()) == 2, batch.text
        for answer in batch.json():  # the key changes who may ask, not the answers
            assert_same_answer(answer, single.json())
        meta = http.get("/metadata")
        assert meta.status_code == 200 and meta.json()["tag"] == cifar_model_store.tag
        assert http.post("/metadata").json() == meta.json()
        # with a key, bad input is still the usual 4xx
        assert http.post("/classify", files={"image": ("a", b"text")}).status_code == 415
        raw = http.post("/classify", content=PNG, headers={"Content-Type": "image/png"})  # the raw-body path
        assert_same_answer(raw.json(), single.json())
    unkeyed = httpx.post(f"{keyed_server.url}/classify", content=PNG, headers={"Content-Type": "image/png"}, timeout=30)
    assert_401(unkeyed, "missing API key")


@pytest.mark.parametrize(
    "headers, message",
    [
        ({}, "missing API key"),
        (bearer("wrong"), "invalid API key"),
        (bearer(API_KEY[:-1]), "invalid API key"),
        (bearer(API_KEY + "x"), "invalid API key"),
        ({"Authorization": API_KEY}, "invalid API key"),  # no scheme
        ({"Authorization": f"Basic {API_KEY}"}, "invalid API key"),
        ({"X-API-Key": API_KEY}, "missing API key"),
    ],
)
def test_without_the_right_key_inference_and_metadata_are_401(keyed_server: ServerProcess, headers: dict, message: str) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=30, headers=headers) as http:
        assert_401(http.post("/classify", files={"image": ("a.png", PNG)}), message)
        assert_401(http.post("/classify_batch", files=[("images", ("a.png", PNG))]), message)
        assert_401(http.get("/metadata"), message)
        assert_401(http.post("/metadata"), message)


def test_unauthenticated_upload_is_refused_before_the_body_is_parsed(keyed_server: ServerProcess) -> None:
    response = httpx.post(f"{keyed_server.url}/classify", files={"image": ("big", bytes(512 * 1024))}, timeout=30)
    assert_401(response, "missing API key")


def test_probes_metrics_and_docs_stay_open(keyed_server: ServerProcess) -> None:
    for path in ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json"):
        assert httpx.get(f"{keyed_server.url}{path}", timeout=30).status_code == 200, path
    metrics = httpx.get(f"{keyed_server.url}/metrics", timeout=30).text
    assert 'http_response_code="401"' in metrics  # refusals are counted


def test_clients_and_cli_send_the_key(
    keyed_server: ServerProcess, cifar_model_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CIFAR10_API_KEY", raising=False)
    with CIFAR10Client(keyed_server.url, api_key=API_KEY) as client:
        alone = client.classify(PNG)
        assert alone.model == cifar_model_store.tag and client.metadata().tag == cifar_model_store.tag
        batch = client.classify_batch([PNG, PNG])
        assert len(batch) == 2
        for answer in batch:
            assert_same_answer(answer, alone)
    with CIFAR10Client(keyed_server.url) as client, pytest.raises(ServiceError) as info:
        client.classify(PNG)
    assert info.value.status_code == 401 and "missing API key" in info.value.message
    with CIFAR10Client(keyed_server.url, api_key="nope") as client, pytest.raises(ServiceError, match="invalid API key"):
        client.metadata()

    async def run_async() -> None:
        async with AsyncCIFAR10Client(keyed_server.url, api_key=API_KEY) as client:
            assert_same_answer(await client.classify(PNG), alone)

    import asyncio

    asyncio.run(run_async())
    monkeypatch.setenv("CIFAR10_API_KEY", API_KEY)  # the default comes from the environment
    with CIFAR10Client(keyed_server.url) as client:
        assert client.metadata().name == "cifar10-cnn"

    image = tmp_path / "a.png"
    image.write_bytes(PNG)
    runner = CliRunner()
    monkeypatch.delenv("CIFAR10_API_KEY")
    result = runner.invoke(app, ["classify", str(image), "--url", keyed_server.url, "--api-key", API_KEY, "--json"])
    assert result.exit_code == 0, result.output
    assert_same_answer(json.loads(result.output), alone)
    refused = runner.invoke(app, ["metadata", "--url", keyed_server.url])
    assert refused.exit_code == 1 and "401" in refused.output and "missing API key" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    from_env = runner.invoke(app, ["metadata", "--url", keyed_server.url, "--json"], env={"CIFAR10_API_KEY": API_KEY})
    assert from_env.exit_code == 0, from_env.output
    assert json.loads(from_env.output)["tag"] == cifar_model_store.tag


def test_no_key_configured_means_open(cifar_server: ServerProcess, cifar_model_store: ModelStore) -> None:
    """The session server runs without CIFAR10_API_KEY: no header needed, and a stray one is ignored."""
    answer = httpx.post(f"{cifar_server.url}/classify", files={"image": ("a", PNG)}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] == cifar_model_store.tag, answer.text
    meta = httpx.get(f"{cifar_server.url}/metadata", headers=bearer("anything"), timeout=30)
    assert meta.status_code == 200 and meta.json()["tag"] == cifar_model_store.tag, meta.text


LAMBDA_MODEL = """
import os, sys
from pathlib import Path
import keras
from contract.card import CIFAR10_CLASSES, ModelCard
from contract.predictor import load_predictor
from training.store import save_model

inputs = keras.Input((32, 32, 3), dtype="uint8")
x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") / 255.0)(inputs)  # arbitrary code
outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
path = Path(sys.argv[1]) / "lambda.keras"
keras.Model(inputs, outputs).save(path)
card = ModelCard(class_names=CIFAR10_CLASSES, architecture="lambda", parameters=0, preprocessing="")
tag = save_model("lambda-model", path, card, labels={})
try:
    load_predictor(tag)
except Exception as exc:
    print("REFUSED", type(exc).__name__, " ".join(str(exc).split())[:300])
else:
    print("LOADED")
"""


def test_a_model_with_a_lambda_layer_is_refused(tmp_path: Path) -> None:
    """Keras safe mode: a stored .keras file cannot run arbitrary Python (Lambda) when loaded."""
    store = ModelStore(home=tmp_path / "bentoml", tag="")
    result = subprocess.run(
        [sys.executable, "-c", LAMBDA_MODEL, str(tmp_path)], cwd=PROJECT_ROOT, env=store.env(),
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED" in result.stdout and "LOADED" not in result.stdout, result.stdout
    assert "Lambda" in result.stdout and "safe_mode" in result.stdout, result.stdout
