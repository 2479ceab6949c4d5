"""The Python clients and the `cifar-client` CLI against the live server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from clients.cli import app
from clients.client import AsyncCIFAR10Client, CIFAR10Client, ServiceError
from conftest import ModelStore, assert_same_answer
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
        assert meta.tag == cifar_model_store.tag
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


def test_cli_classify_table_and_json(cifar_server, image_files: list[Path]) -> None:
    result = runner.invoke(app, ["classify", str(image_files[0]), "--url", cifar_server.url, "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "png.png" in result.output and "cifar10-cnn" in result.output
    result = runner.invoke(app, ["classify", *map(str, image_files), "--url", cifar_server.url, "--json"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)
    assert [a["file"] for a in answers] == list(map(str, image_files)) and len(answers[0]["top_k"]) == 3
    with CIFAR10Client(cifar_server.url, timeout=30) as client:
        for answer, path in zip(answers, image_files):
            assert_same_answer(answer, client.classify(path))


def test_cli_metadata(cifar_server, cifar_model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR10_URL", cifar_server.url)  # the default URL comes from the environment
    result = runner.invoke(app, ["metadata"])
    assert result.exit_code == 0, result.output
    assert "tiny_cnn" in result.output and "CPU" in result.output
    assert json.loads(runner.invoke(app, ["metadata", "--json"]).output)["tag"] == cifar_model_store.tag


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
