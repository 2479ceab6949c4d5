"""POST /classify with the image as the raw body: the same answers, limits and errors as multipart."""

from __future__ import annotations

import httpx
import pytest

from bad_files import corpus
from conftest import assert_same_answer

RAW = {"Content-Type": "application/octet-stream"}


def multipart(url: str, data: bytes, top_k: int = 10) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"image": ("x", data)}, data={"top_k": str(top_k)}, timeout=60)


def raw(url: str, data: bytes, query: str = "top_k=10", content_type: str = "application/octet-stream") -> httpx.Response:
    return httpx.post(f"{url}/classify?{query}", content=data, headers={"Content-Type": content_type}, timeout=60)


@pytest.mark.parametrize("name", ["png", "jpeg", "gif", "webp", "mode_cmyk", "mode_16bit", "large"])
def test_same_answer_as_multipart(cifar_server, image_bytes: dict[str, bytes], name: str) -> None:
    expected = multipart(cifar_server.url, image_bytes[name])
    for content_type in ("application/octet-stream", "image/png", "image/jpg; charset=x"):
        got = raw(cifar_server.url, image_bytes[name], content_type=content_type)
        assert got.status_code == 200, got.text
        assert_same_answer(got.json(), expected.json())  # the declared type never decides the format


def test_hostile_corpus_gets_the_multipart_answers(cifar_server) -> None:
    for name, (data, status, message) in corpus().items():
        got = raw(cifar_server.url, data)
        if len(data) > 1024 * 1024:  # the cifar_server fixture's CIFAR10_MAX_BODY_BYTES
            assert got.status_code == 413, name
            continue
        assert got.status_code == status, (name, got.status_code, got.text[:300])
        if status != 200:
            assert message in got.json()["error"] and "\n" not in got.json()["error"], name
            assert got.json() == multipart(cifar_server.url, data).json(), name


@pytest.mark.parametrize("query, message", [
    ("top_k=0", "top_k: expected an integer from 1 to 10"),
    ("top_k=eleven", "top_k: expected an integer from 1 to 10"),
    ("top_k=3&colour=red", "unknown query parameter 'colour'"),
    ("model=nope", "model 'nope' is not served here"),
])
def test_bad_query_is_a_clear_4xx(cifar_server, image_bytes: dict[str, bytes], query: str, message: str) -> None:
    got = raw(cifar_server.url, image_bytes["png"], query)
    assert 400 <= got.status_code < 500 and message in got.json()["error"], got.text


def test_options_and_limits(cifar_server, image_bytes: dict[str, bytes]) -> None:
    three = raw(cifar_server.url, image_bytes["png"], "top_k=3").json()
    assert [p["label"] for p in three["top_k"]] == [p["label"] for p in raw(cifar_server.url, image_bytes["png"]).json()["top_k"][:3]]
    assert raw(cifar_server.url, b"").json()["error"].startswith("empty file")
    assert raw(cifar_server.url, bytes(2 * 1024 * 1024)).status_code == 413
