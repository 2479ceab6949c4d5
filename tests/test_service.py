"""Integration tests against a live `bentoml serve` (session fixture `cifar_server` in conftest)."""

from __future__ import annotations

import asyncio
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ModelStore, assert_same_answer
from service.schemas import Classification, ModelMetadata

pytestmark = pytest.mark.timeout(300)

MAX_BODY = 1024 * 1024  # the server fixture's CIFAR10_MAX_BODY_BYTES
MAX_PIXELS = 4_000_000  # and CIFAR10_MAX_IMAGE_PIXELS


@pytest.fixture(scope="module")
def http(cifar_server) -> httpx.Client:
    with httpx.Client(base_url=cifar_server.url, timeout=30) as client:
        yield client


def classify(http: httpx.Client, data: bytes, content_type: str = "application/octet-stream", **form: str) -> httpx.Response:
    return http.post("/classify", files={"image": ("upload", data, content_type)}, data=form)


def assert_serving(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    """After a bad request the server must still answer a good one."""
    response = classify(http, image_bytes["png"])
    assert response.status_code == 200, response.text


def test_probes_and_openapi(http: httpx.Client) -> None:
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    spec = http.get("/docs.json").json()
    for path in ("/classify", "/classify_batch", "/metadata"):
        assert path in spec["paths"]
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["top_k"]["maximum"] == 10 and body["required"] == ["image"]
    assert "/classify" in http.get("/schema.json").text


def test_metadata_get(http: httpx.Client, cifar_model_store: ModelStore) -> None:
    response = http.get("/metadata")  # a plain GET, as curl sends it
    assert response.status_code == 200
    meta = ModelMetadata.model_validate(response.json())
    assert meta.tag == cifar_model_store.tag and f"{meta.name}:{meta.version}" == meta.tag
    assert meta.class_names[:3] == ["airplane", "automobile", "bird"] and len(meta.class_names) == 10
    assert meta.input_shape == [32, 32, 3] and meta.input_dtype == "uint8"
    assert meta.architecture == "tiny_cnn" and meta.parameters and meta.parameters > 0
    assert meta.config["optimizer"] == "adam" and "lr" in meta.config
    assert meta.metrics.test_accuracy == 0.1
    assert meta.format == "keras" and meta.model_file == "model.keras" and not meta.trusted_code  # the whole card
    assert meta.framework_versions["tensorflow"].startswith("2.")
    assert meta.device_type == "CPU" and meta.device.startswith("CPU")
    assert meta.batching.max_batch_size == 64 and meta.batching.max_batch_files == 8
    assert meta.limits.max_body_bytes == MAX_BODY
    assert http.post("/metadata").json()["tag"] == meta.tag  # the documented (OpenAPI) form


@pytest.mark.parametrize(
    "name",
    ["png", "jpeg", "gif", "bmp", "webp", "tiff", "mode_l", "mode_la", "mode_p", "mode_rgba", "mode_cmyk", "mode_16bit", "large"],
)
def test_classify_formats(http: httpx.Client, image_bytes: dict[str, bytes], name: str, cifar_model_store: ModelStore) -> None:
    content_type = {"jpeg": "image/jpg", "png": "image/png", "gif": "text/plain"}.get(name, "application/octet-stream")
    response = classify(http, image_bytes[name], content_type, top_k="10")
    assert response.status_code == 200, response.text
    result = Classification.model_validate(response.json())
    assert len(result.top_k) == 10 and result.model == cifar_model_store.tag
    assert sum(p.probability for p in result.top_k) == pytest.approx(1.0, abs=1e-5)
    assert result.label == result.top_k[0].label and result.confidence == result.top_k[0].probability
    probabilities = [p.probability for p in result.top_k]
    assert probabilities == sorted(probabilities, reverse=True)
    if name in ("bmp", "tiff", "mode_rgba"):  # the PNG's pixels in another file format: the PNG's answer
        assert_same_answer(result, classify(http, image_bytes["png"], top_k="10").json())


def test_classify_default_top_k(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    body = classify(http, image_bytes["jpeg"]).json()
    assert set(body) == {"label", "confidence", "top_k", "model", "in_distribution", "in_distribution_score"}
    assert len(body["top_k"]) == 3
    assert set(body["top_k"][0]) == {"label", "probability"}


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def _garble(data: bytes) -> bytes:
    third = len(data) // 3
    return data[:third] + bytes(third) + data[2 * third :]


def _bad_requests(images: dict[str, bytes]) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx.post kwargs, expected status, a piece of the expected message)."""
    file = lambda data, ct="application/octet-stream": {"files": {"image": ("x", data, ct)}}  # noqa: E731
    return {
        "not_an_image": (file(b"just some text, not pixels\n" * 10, "image/jpeg"), 415, "not a supported image"),
        "zero_bytes": (file(b""), 400, "empty file"),
        "truncated_png": (file(images["png"][: len(images["png"]) // 2]), 400, "truncated"),
        "truncated_jpeg": (file(images["jpeg"][: len(images["jpeg"]) // 2]), 400, "truncated"),
        "corrupt_gif": (file(_garble(images["gif"])), 400, "could not decode GIF"),
        "undecodable_format": (file(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), 415, "PNG, JPEG"),
        "too_many_pixels": (file(_png((2500, 2000))), 400, "over the limit of 4000000"),
        "bomb": (file(_png((20000, 20000), "1")), 400, "pixels"),
        "body_too_large": (file(np.random.default_rng(0).bytes(MAX_BODY + 1000)), 413, "over the limit"),
        "missing_field": ({"data": {"top_k": "3"}, "files": {"other": ("x", images["png"])}}, 400, "image: Field required"),
        "top_k_zero": ({**file(images["png"]), "data": {"top_k": "0"}}, 400, "top_k: Input should be greater than or equal to 1"),
        "top_k_eleven": ({**file(images["png"]), "data": {"top_k": "11"}}, 400, "top_k: Input should be less than or equal to 10"),
        "top_k_text": ({**file(images["png"]), "data": {"top_k": "many"}}, 400, "top_k"),
        "text_instead_of_file": ({"data": {"image": "http://127.0.0.1:1/cat.jpg"}, "files": {"x": ("x", b"x")}}, 400, "uploaded file"),
        "json_body": ({"json": {"image": "x"}}, 400, "image"),
        # an image as the raw body is the raw-body path (tests/test_raw_body.py); other raw bodies are refused
        "raw_body": ({"content": images["png"], "headers": {"content-type": "text/plain"}}, 400, "multipart"),
    }


BAD_NAMES = list(_bad_requests({"png": b"", "jpeg": b"", "gif": b""}))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_4xx_and_server_keeps_serving(http: httpx.Client, image_bytes: dict[str, bytes], name: str) -> None:
    kwargs, status, message = _bad_requests(image_bytes)[name]
    response = http.post("/classify", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error
    assert_serving(http, image_bytes)


def test_streamed_body_over_limit_is_413(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    """No Content-Length (chunked): the limit counts the bytes as they arrive."""
    boundary = "x" * 16
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'.encode()

    def chunks():
        yield head
        for _ in range(20):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = http.post("/classify", content=chunks(), headers=headers)
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    assert_serving(http, image_bytes)


def test_batch_keeps_order(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    names = ["png", "large", "mode_l", "gif", "mode_cmyk", "webp"]
    single = [classify(http, image_bytes[n], top_k="10").json() for n in names]
    files = [("images", (f"{n}.img", image_bytes[n], "application/octet-stream")) for n in names]
    batch = http.post("/classify_batch", files=files, data={"top_k": "10"})
    assert batch.status_code == 200, batch.text
    answers = batch.json()
    assert len(answers) == len(names)
    for one, answer in zip(single, answers):
        assert_same_answer(answer, one)


def test_batch_of_two_equals_two_single_answers(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    """Images that share a model call get exactly the answers they get alone (same label and probabilities)."""
    names = ["large", "mode_l"]  # solid red and grey noise: clearly different answers
    single = [classify(http, image_bytes[n]).json() for n in names]
    files = [("images", (f"{n}.img", image_bytes[n], "application/octet-stream")) for n in names]
    batch = http.post("/classify_batch", files=files)
    assert batch.status_code == 200, batch.text
    assert len(batch.json()) == 2
    for answer, one in zip(batch.json(), single):
        assert_same_answer(answer, one)
    first, second = ({p["label"]: p["probability"] for p in one["top_k"]} for one in single)
    assert first != pytest.approx(second, abs=1e-4)  # a mix-up of the two would show


def test_batch_names_the_bad_image(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    files = [("images", ("a", image_bytes["png"])), ("images", ("b", image_bytes["jpeg"])), ("images", ("c", b"nope"))]
    response = http.post("/classify_batch", files=files)
    assert response.status_code == 415
    body = response.json()
    assert body["index"] == 2 and body["error"].startswith("images[2]:")
    assert_serving(http, image_bytes)


def test_batch_limits(http: httpx.Client, image_bytes: dict[str, bytes]) -> None:
    too_many = [("images", (f"{i}", image_bytes["png"])) for i in range(9)]  # fixture: 8 files at most
    response = http.post("/classify_batch", files=too_many)
    assert response.status_code == 400 and "images: List should have at most 8 items" in response.json()["error"]
    response = http.post("/classify_batch", files={"other": ("x", b"x")})
    assert response.status_code == 400 and "images: Field required" in response.json()["error"]
    assert_serving(http, image_bytes)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_64_concurrent_requests_are_batched(cifar_server, image_bytes: dict[str, bytes]) -> None:
    alone = httpx.post(f"{cifar_server.url}/classify", files={"image": ("i", image_bytes["jpeg"])}, timeout=30).json()
    before = httpx.get(f"{cifar_server.url}/metrics").text

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=cifar_server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/classify", files={"image": ("i", image_bytes["jpeg"])}) for _ in range(64))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    for response in responses:  # the same image: every request of the shared batches got its own, equal answer
        assert_same_answer(response.json(), alone)
    after = httpx.get(f"{cifar_server.url}/metrics").text
    images = _metric(after, "cifar10_inference_batch_size_sum") - _metric(before, "cifar10_inference_batch_size_sum")
    calls = _metric(after, "cifar10_inference_batch_size_count") - _metric(before, "cifar10_inference_batch_size_count")
    assert images == 64 and 0 < calls < 64, (images, calls)  # some model call held more than one request
    counted = _metric(after, "cifar10_images_total") - _metric(before, "cifar10_images_total")
    assert counted == 64, counted
    assert re.search(r'bentoml_service_request_total\{endpoint="/classify",http_response_code="200"', after)
    assert "bentoml_service_request_duration_seconds_bucket" in after


def test_each_worker_freezes_its_start_up_objects(cifar_server) -> None:
    """Left to the garbage collector, TensorFlow's, Keras' and BentoML's objects would be rescanned by every full
    collection (about 0.2 s with the GIL held, every request stalled): each worker freezes them once it is up."""
    frozen = [int(count) for count in re.findall(r"\((\d+) start-up objects frozen", cifar_server.log_text())]
    assert frozen and all(count > 100_000 for count in frozen), cifar_server.log_tail()
