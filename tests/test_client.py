"""The Python clients and the `cifar-client` CLI against the live server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clients.cli import app
from clients.client import AsyncCIFAR10Client, CIFAR10Client, ServiceError
from conftest import LEGACY_MODEL_NAME, ModelStore, assert_same_answer, noise_images
from service.schemas import ModelMetadata

runner = CliRunner()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory, image_bytes: dict[str, bytes]) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name in ("png", "jpeg", "webp"):
        path = folder / f"{name}.{name}"
        path.write_bytes(image_bytes[name])
        paths.append(path)
    return paths


def test_sync_client(cifar_server, cifar_model_store: ModelStore, image_files: list[Path], image_bytes: dict[str, bytes]) -> None:
    with CIFAR10Client(cifar_server.url, timeout=30) as client:
        assert client.ready()
        by_path = client.classify(image_files[0], top_k=5)
        assert len(by_path.top_k) == 5 and by_path.model == cifar_model_store.tag
        assert by_path.in_distribution is not None and by_path.in_distribution_score is not None  # calibrated
        raw = httpx.post(f"{cifar_server.url}/classify", files={"image": ("a", image_bytes["png"])}, data={"top_k": "5"})
        assert_same_answer(by_path, raw.json())  # the client sends the file's bytes and parses the answer as is
        assert_same_answer(client.classify(image_bytes["png"], top_k=5), by_path)
        # a PIL image is sent as a PNG of its pixels: the JPEG file's own answer (it decodes to the same pixels)
        assert_same_answer(client.classify(Image.open(image_files[1])), client.classify(image_files[1]))
        batch = client.classify_batch(image_files)
        assert len(batch) == len(image_files)
        for answer, path in zip(batch, image_files):
            assert_same_answer(answer, client.classify(path))
        meta = client.metadata()
        assert meta.tag == cifar_model_store.tag and meta.calibrated and meta.calibration is not None
        assert meta == ModelMetadata.model_validate(httpx.get(f"{cifar_server.url}/metadata").json())
        with pytest.raises(ServiceError) as info:
            client.classify(b"not an image")
        assert info.value.status_code == 415 and "not a supported image" in info.value.message
        with pytest.raises(ServiceError, match="top_k"):
            client.classify(image_files[0], top_k=11)
    assert not CIFAR10Client("http://127.0.0.1:9", timeout=2).ready()


def test_async_client(cifar_server, image_files: list[Path]) -> None:
    async def run() -> None:
        async with AsyncCIFAR10Client(cifar_server.url) as client:
            assert await client.ready()
            results = await asyncio.gather(*(client.classify(p) for p in image_files))
            batch = await client.classify_batch(image_files)
            assert len(batch) == len(results) == len(image_files)
            for one, answer in zip(results, batch):
                assert_same_answer(answer, one)
            assert (await client.metadata()).name == "cifar10-cnn"
            with pytest.raises(ServiceError, match="empty file"):
                await client.classify(b"")

    asyncio.run(run())


def test_cli_classify_table_and_json(cifar_server, image_files: list[Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["classify", str(image_files[0]), "--url", cifar_server.url, "--top-k", "2"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "png.png" in result.output and "cifar10-cnn" in result.output and "in distribution" in result.output
    noise = tmp_path / "noise.png"
    Image.fromarray(noise_images(np.random.default_rng(9), 1)[0]).save(noise)
    result = runner.invoke(app, ["classify", str(noise), "--url", cifar_server.url], env={"COLUMNS": "200"})
    assert "NO: probably none of the classes" in result.output, result.output
    result = runner.invoke(app, ["classify", *map(str, image_files), "--url", cifar_server.url, "--json"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)
    assert [a["file"] for a in answers] == list(map(str, image_files)) and len(answers[0]["top_k"]) == 3
    assert all(isinstance(a["in_distribution"], bool) and isinstance(a["in_distribution_score"], float) for a in answers)
    with CIFAR10Client(cifar_server.url, timeout=30) as client:
        for answer, path in zip(answers, image_files):
            assert_same_answer(answer, client.classify(path))


def test_cli_metadata(cifar_server, cifar_model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR10_URL", cifar_server.url)  # the default URL comes from the environment
    result = runner.invoke(app, ["metadata"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tiny_cnn" in result.output and "CPU" in result.output
    assert "temperature" in result.output and "is flagged" in result.output and "ECE" in result.output
    assert json.loads(runner.invoke(app, ["metadata", "--json"]).output)["tag"] == cifar_model_store.tag


def test_cli_with_an_uncalibrated_model(control_server, image_files: list[Path]) -> None:
    """The entry stored before the model card has no calibration: the CLI says so instead of a flag."""
    url = ["--url", control_server.url, "--model", LEGACY_MODEL_NAME]
    result = runner.invoke(app, ["classify", str(image_files[0]), *url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "uncalibrated model" in result.output
    result = runner.invoke(app, ["metadata", *url], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "no out-of-distribution flag" in result.output, result.output


def test_cli_errors_are_one_line(cifar_server, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["classify", str(tmp_path / "nope.jpg"), "--url", cifar_server.url])
    assert missing.exit_code == 1 and "no such file" in missing.output and "Traceback" not in missing.output
    down = runner.invoke(app, ["metadata", "--url", "http://127.0.0.1:9", "--timeout", "2"])
    assert down.exit_code == 1 and "cannot reach the service" in down.output
    assert len(down.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"text")
    refused = runner.invoke(app, ["classify", str(bad), "--url", cifar_server.url])
    assert refused.exit_code == 1 and "415" in refused.output and "not a supported image" in refused.output


# In process, no server: both clients send the same request for each endpoint and read the answer the same way.

CLASSIFIED = {"label": "cat", "confidence": 0.5, "top_k": [{"label": "cat", "probability": 0.5}], "model": "m:v"}
ANSWERS: dict[str, object] = {
    "/classify": CLASSIFIED,
    "/classify_batch": [CLASSIFIED, CLASSIFIED],
    "/v2/repository/index": [{"name": "m", "version": "v", "state": "READY"}],
    "/v2/repository/models/m/load": {"name": "m", "version": "v2", "state": "READY"},
    "/v2/repository/models/m/unload": {"name": "m", "state": "UNAVAILABLE"},
    "/readyz": {"status": "ready"},
}
CALLS = [
    ("classify", (b"raw image bytes",), {"top_k": 5, "model": "m"}),
    ("classify_batch", ([b"one", b"two"],), {"model": "m"}),
    ("models", (), {}),
    ("load", ("m", "v2"), {}),
    ("unload", ("m",), {}),
    ("ready", (), {}),
]


def _fake_server(monkeypatch: pytest.MonkeyPatch, answer) -> list[httpx.Request]:
    """Route both clients' requests to `answer(request)` instead of the network; returns what was sent."""
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        return answer(request)

    async def handle_async(self: object, request: httpx.Request) -> httpx.Response:
        return handle(request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", lambda self, request: handle(request))
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle_async)
    return sent


def _error(exc: Exception) -> tuple[object, ...]:
    return (type(exc), str(exc), getattr(exc, "status_code", None), getattr(exc, "message", None))


def _both(calls: list[tuple[str, tuple, dict]], **settings: object) -> tuple[list[object], list[object]]:
    """Each call's answer (or error) from the sync client, then from the async one."""

    with CIFAR10Client(**settings) as client:
        sync = []
        for name, args, kwargs in calls:
            try:
                sync.append(getattr(client, name)(*args, **kwargs))
            except (ServiceError, httpx.HTTPError) as exc:
                sync.append(_error(exc))

    async def run() -> list[object]:
        async with AsyncCIFAR10Client(**settings) as client:
            answers = []
            for name, args, kwargs in calls:
                try:
                    answers.append(await getattr(client, name)(*args, **kwargs))
                except (ServiceError, httpx.HTTPError) as exc:
                    answers.append(_error(exc))
            return answers

    return sync, asyncio.run(run())


def _described(request: httpx.Request) -> tuple[object, ...]:
    content_type = request.headers.get("content-type", "")
    boundary = content_type.partition("boundary=")[2].encode()
    body = request.content.replace(boundary, b"B") if boundary else request.content
    return (request.method, str(request.url), request.headers.get("authorization"), content_type.partition(";")[0],
            body, request.extensions["timeout"]["read"])


def test_both_clients_send_the_same_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        found = request.url.path in ANSWERS
        return httpx.Response(200 if found else 404, json=ANSWERS.get(request.url.path, {"error": "not here"}))

    sent = _fake_server(monkeypatch, answer)
    monkeypatch.setenv("CIFAR10_URL", "http://service.test:3000/")
    monkeypatch.setenv("CIFAR10_API_KEY", "env-key")
    sync, asynchronous = _both(CALLS, timeout=7.0)
    assert sync == asynchronous and sync[-1] is True and sync[3].version == "v2" and len(sync[1]) == 2
    first, second = [_described(r) for r in sent[: len(CALLS)]], [_described(r) for r in sent[len(CALLS) :]]
    assert first == second
    # the raw-body /classify, the key from $CIFAR10_API_KEY, the URL from $CIFAR10_URL, no time limit on a swap
    assert first[0] == ("POST", "http://service.test:3000/classify?top_k=5&model=m", "Bearer env-key",
                        "application/octet-stream", b"raw image bytes", 7.0)
    assert first[1][3] == "multipart/form-data" and b'name="images"; filename="image1"' in first[1][4]
    assert [d[5] for d in first] == [7.0, 7.0, 7.0, None, None, 7.0]
    assert first[3][4] == b'{"parameters":{"version":"v2"}}'
    sent.clear()
    missing = _both([("metadata", (), {"model": "x"})], url="http://other.test", api_key="")  # an empty key: no header
    assert missing == ([(ServiceError, "HTTP 404: not here", 404, "not here")],) * 2
    assert [(r.url, r.headers.get("authorization")) for r in sent] == [(httpx.URL("http://other.test/metadata?model=x"), None)] * 2


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (415, {"json": {"error": "not a supported image"}}, "not a supported image"),
        (400, {"json": [{"error": "wrapped by BentoML"}]}, "wrapped by BentoML"),
        (502, {"text": " bad gateway \n"}, "bad gateway"),
        (500, {}, "Internal Server Error"),
    ],
)
def test_both_clients_raise_the_server_error(monkeypatch: pytest.MonkeyPatch, status: int, body: dict, message: str) -> None:
    _fake_server(monkeypatch, lambda request: httpx.Response(status, **body))
    sync, asynchronous = _both(CALLS, url="http://service.test")
    assert sync == asynchronous
    assert sync[:-1] == [(ServiceError, f"HTTP {status}: {message}", status, message)] * (len(CALLS) - 1)
    assert sync[-1] is False  # /readyz answers not ready, never an error


def test_both_clients_when_the_server_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    _fake_server(monkeypatch, refuse)
    sync, asynchronous = _both(CALLS, url="http://service.test")
    assert sync == asynchronous
    assert sync[:-1] == [(httpx.ConnectError, "connection refused", None, None)] * (len(CALLS) - 1) and sync[-1] is False


def test_cli_percent_of_a_metric() -> None:
    from clients.cli import _percent

    assert _percent(0.7034) == "70.34%" and _percent(None) == "unknown"
