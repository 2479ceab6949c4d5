"""Several models side by side, and a new version swapped in under load with no failed request.

The servers are the session's (conftest): control_server (two models, model control on) and
keyed_server (model control, the API key, two workers). The swap and the load on every worker change
their server for good, so conftest runs them after every other test of the session (SHARED_SERVER_LAST).
The new versions are trained in this process (the seeds and environment put back after).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.http as triton
from typer.testing import CliRunner

from clients.cli import app
from clients.client import CIFAR10Client, ServiceError
from benchmarks.harness import ServerProcess
from conftest import API_KEY, LEGACY_MODEL_NAME, MODEL_NAME, ModelStore, store_tiny_model
from inprocess import bentoml_home, process_state_kept
from service.inference.control import CONTROL_DIR_ENV

pytestmark = pytest.mark.timeout(400)

CLIENTS = 16
LOAD_SECONDS = 20.0
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # keyed_server's key


def train_and_store(home: Path, name: str, seed: int) -> str:
    """conftest.store_tiny_model in this process, into the store at `home`; returns the tag."""
    import keras

    with bentoml_home(home), process_state_kept():
        tag = store_tiny_model(str(home), str(home), name, seed)[0]
    keras.backend.clear_session()
    return tag


def test_two_models_side_by_side(control_server: ServerProcess, cifar_model_store: ModelStore,
                                 image_bytes: dict[str, bytes]) -> None:
    server = control_server  # CIFAR10_MODELS=cifar10-cnn,<the legacy tag>
    assert server.process.poll() is None, server.log_text()[-3000:]
    files = {"image": ("x.png", image_bytes["png"])}
    default = httpx.post(f"{server.url}/classify", files=files, timeout=30).json()
    legacy = httpx.post(f"{server.url}/classify", files=files, data={"model": LEGACY_MODEL_NAME}, timeout=30).json()
    batch = httpx.post(f"{server.url}/classify_batch", files=[("images", ("x.png", image_bytes["png"]))],
                       data={"model": LEGACY_MODEL_NAME}, timeout=30).json()
    unknown = httpx.post(f"{server.url}/classify", files=files, data={"model": "nope"}, timeout=30)
    index = triton.InferenceServerClient(server.url.removeprefix("http://")).get_model_repository_index()
    card = httpx.get(f"{server.url}/metadata", params={"model": LEGACY_MODEL_NAME}, timeout=30).json()
    assert default["model"] == cifar_model_store.tag
    assert legacy["model"] == batch[0]["model"] == cifar_model_store.legacy_tag
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert [(m["name"], m["version"]) for m in index] == [
        tuple(cifar_model_store.tag.split(":")), tuple(cifar_model_store.legacy_tag.split(":"))]
    assert card["tag"] == cifar_model_store.legacy_tag


async def classify_until(url: str, data: bytes, stop: float, answers: list[tuple[float, float, int, str]]) -> None:
    """One client: classify back to back until `stop`, recording (sent, answered, status, model)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < stop:
            sent = time.monotonic()
            try:
                response = await client.post("/classify", files={"image": ("x.png", data)})
                model = response.json().get("model", "") if response.status_code == 200 else response.text[:200]
                answers.append((sent, time.monotonic(), response.status_code, model))
            except httpx.HTTPError as error:
                answers.append((sent, time.monotonic(), 0, repr(error)))


async def swap_under_load(url: str, data: bytes, new_version: str) -> tuple[list, float, float, int]:
    answers: list[tuple[float, float, int, str]] = []
    stop = time.monotonic() + LOAD_SECONDS
    clients = [asyncio.create_task(classify_until(url, data, stop, answers)) for _ in range(CLIENTS)]
    await asyncio.sleep(LOAD_SECONDS / 4)
    async with httpx.AsyncClient(base_url=url, timeout=120) as control:
        asked = time.monotonic()
        response = await control.post(f"/v2/repository/models/{MODEL_NAME}/load",
                                      json={"parameters": {"version": new_version}})
        loaded = time.monotonic()
    await asyncio.gather(*clients)
    return answers, asked, loaded, response.status_code


def test_swap_under_load_loses_no_request(control_server: ServerProcess, control_store: ModelStore,
                                          image_bytes: dict[str, bytes]) -> None:
    """Runs after every other user of control_server (conftest's SHARED_SERVER_LAST): it serves the new
    version from here on."""
    server, own_store = control_server, control_store
    assert server.process.poll() is None, server.log_text()[-3000:]
    new_tag = train_and_store(own_store.home, MODEL_NAME, seed=1)  # newly trained, same name
    answers, asked, loaded, status = asyncio.run(swap_under_load(server.url, image_bytes["png"], new_tag.split(":")[1]))
    failed_load = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/load",
                             json={"parameters": {"version": "doesnotexist"}}, timeout=60)
    after_failed = httpx.post(f"{server.url}/classify", files={"image": ("x.png", image_bytes["png"])}, timeout=30)
    assert status == 200
    failures = [a for a in answers if a[2] != 200]
    assert not failures, failures[:5]
    assert {model for *_, model in answers} == {own_store.tag, new_tag}, "both versions answered"
    assert all(model == new_tag for sent, _, _, model in answers if sent > loaded), "new version after the load"
    assert all(model == own_store.tag for _, done, _, model in answers if done < asked), "old version before it"
    assert len(answers) > CLIENTS * 10
    assert failed_load.status_code == 404 and "doesnotexist" in failed_load.json()["error"]
    assert after_failed.json()["model"] == new_tag  # a failed load left the running version serving


def test_unload_load_and_the_clients(keyed_server: ServerProcess, keyed_store: ModelStore,
                                     image_bytes: dict[str, bytes]) -> None:
    """Model control through the Python client and `cifar-client`, behind the API key. It loads the model
    back before it ends: keyed_server's other users find it as it started."""
    server, own_store = keyed_server, keyed_store
    cli = ["--url", server.url, "--api-key", API_KEY]
    try:
        refused = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/unload", timeout=30)
        with CIFAR10Client(server.url, api_key=API_KEY) as client:
            unloaded = client.unload(MODEL_NAME)
            with pytest.raises(ServiceError) as gone:
                client.classify(image_bytes["png"])
            index = client.models()
            listed = CliRunner().invoke(app, ["models", "--json", *cli])
            reloaded = CliRunner().invoke(app, ["load", MODEL_NAME, *cli])
            back = client.classify(image_bytes["png"])
            bad = CliRunner().invoke(app, ["load", MODEL_NAME, "--version", "nope", *cli])
    finally:  # whatever happened above, the next user finds the model served
        httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/load", headers=AUTH, timeout=300)
    assert refused.status_code == 401
    assert (unloaded.name, unloaded.state) == (MODEL_NAME, "UNAVAILABLE")
    assert gone.value.status_code == 404 and "unloaded" in gone.value.message
    assert [(m.name, m.state, m.reason) for m in index] == [(MODEL_NAME, "UNAVAILABLE", "unloaded")]
    assert listed.exit_code == 0 and json.loads(listed.stdout) == [
        {"name": MODEL_NAME, "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert reloaded.exit_code == 0 and own_store.tag in reloaded.stdout.replace("\n", "")
    assert back.model == own_store.tag
    assert bad.exit_code == 1 and "nope" in bad.stderr


def test_every_worker_follows_a_load(keyed_server: ServerProcess, keyed_store: ModelStore,
                                     image_bytes: dict[str, bytes]) -> None:
    """A load reaches one worker; when it returns, all workers answer with the new version. The last user of
    keyed_server (conftest's SHARED_SERVER_LAST): it stops the server to see the control folder go."""
    server, own_store = keyed_server, keyed_store  # two workers, model control on, behind the API key
    try:
        assert server.process.poll() is None, server.log_text()[-3000:]
        folders = {worker.environ().get(CONTROL_DIR_ENV) for worker in server.worker_processes()}
        assert len(folders) == 1, folders  # the workers share one, made by the server before they started
        folder = Path(folders.pop())
        assert folder.name.startswith("cifar10-control-") and str(server.process.pid) not in folder.name
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.geteuid()
        new_tag = train_and_store(own_store.home, MODEL_NAME, seed=2)
        loaded = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/load", headers=AUTH, timeout=300)
        models = {classify_model(server.url, image_bytes["png"]) for _ in range(40)}
        unloaded = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/unload", headers=AUTH, timeout=300)
        statuses = {httpx.post(f"{server.url}/classify", files={"image": ("x.png", image_bytes["png"])},
                               headers=AUTH, timeout=30).status_code for _ in range(20)}
        workers = {line.split("[entry_service:cifar10_classifier:")[1].split("]")[0]  # this load's lines only:
                   for line in server.log_text().splitlines() if f"now serving {new_tag} " in line}  # not earlier ones
    finally:
        server.stop()
    assert loaded.status_code == 200 and loaded.json()["version"] == new_tag.split(":")[1]
    assert models == {new_tag}
    assert unloaded.status_code == 200 and statuses == {404}
    assert workers == {"1", "2"}, "both workers loaded the new version"
    assert not folder.exists(), "the control folder is removed when the server stops"


def classify_model(url: str, data: bytes) -> str:
    # a new connection each time, so the kernel can hand it to either worker
    return httpx.post(f"{url}/classify", files={"image": ("x.png", data)}, headers=AUTH, timeout=30).json()["model"]
