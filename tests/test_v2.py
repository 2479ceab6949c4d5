"""The Open Inference Protocol (KServe v2) on the live service, driven by the real Triton client."""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from conftest import MODEL_NAME, ModelStore
from contract.calibration import Calibrated
from contract.card import CIFAR10_CLASSES
from service.errors import ProtocolError
from service.v2.protocol import infer_response, length_prefixed, parse_infer_request

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(cifar_server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(cifar_server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, list[bytes]]:
    """Two images as uint8 pixels, and the same two as PNG files of another size."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    files = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).resize((96, 96), Image.Resampling.NEAREST).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return pixels, files


def classify(url: str, data: bytes, model: str | None = None) -> dict:
    fields = {"top_k": "10", **({"model": model} if model else {})}
    response = httpx.post(f"{url}/classify", files={"image": ("x.png", data)}, data=fields, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_health_and_metadata(client, cifar_model_store: ModelStore) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "classification" in client.get_server_metadata()["extensions"]
    version = cifar_model_store.tag.split(":")[1]
    metadata = client.get_model_metadata(MODEL_NAME)
    assert metadata["name"] == MODEL_NAME and metadata["versions"] == [version]
    assert {(i["name"], i["datatype"]) for i in metadata["inputs"]} == {("images", "UINT8"), ("image_files", "BYTES")}
    assert metadata["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
    assert [o["name"] for o in metadata["outputs"][1:]] == ["in_distribution", "in_distribution_score"]  # calibrated
    assert client.get_model_metadata(MODEL_NAME, version)["versions"] == [version]
    assert client.is_model_ready(MODEL_NAME) and client.is_model_ready(MODEL_NAME, version)
    assert not client.is_model_ready(MODEL_NAME, "0000") and not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_tensor_gives_the_classify_answer(client, cifar_server, photos, binary: bool) -> None:
    pixels, _ = photos
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL_NAME, [tensor], outputs=[output], request_id="r1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 10) and probabilities.dtype == np.float32
    assert result.get_response()["id"] == "r1"
    for row, image in zip(probabilities, pixels):
        answer = classify(cifar_server.url, png(image))
        by_label = {p["label"]: p["probability"] for p in answer["top_k"]}
        assert answer["label"] == CIFAR10_CLASSES[int(np.argmax(row))]
        assert sorted(by_label.values(), reverse=True) == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-5)


def test_bytes_tensor_of_image_files(client, cifar_server, photos) -> None:
    _, files = photos
    tensor = triton.InferInput("image_files", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    probabilities = client.infer(MODEL_NAME, [tensor]).as_numpy("probabilities")
    for row, data in zip(probabilities, files):
        answer = classify(cifar_server.url, data)
        assert answer["confidence"] == pytest.approx(float(row.max()), abs=1e-5)
    # JSON form: base64 strings
    body = {"inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(files[0]).decode()]}]}
    response = httpx.post(f"{cifar_server.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == pytest.approx(probabilities[0].tolist(), abs=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(client, cifar_server, photos, binary: bool) -> None:
    pixels, _ = photos
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    strings = client.infer(MODEL_NAME, [tensor], outputs=[output]).as_numpy("probabilities")
    assert strings.shape == (2, 3)
    for row, image in zip(strings, pixels):
        answer = classify(cifar_server.url, png(image))
        fields = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
        assert [label for _, _, label in fields] == [p["label"] for p in answer["top_k"][:3]]
        assert float(fields[0][0]) == pytest.approx(answer["confidence"], abs=1e-5)


def binary_request(header: dict, payload: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + payload, {"Inference-Header-Content-Length": str(len(text) if length is None else length)}


def malformed_requests() -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each a request the protocol must refuse with a 4xx and one line."""
    image = {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3]}
    as_json = lambda body: (json.dumps(body).encode(), {})  # noqa: E731
    return {
        "bad json": (b"{inputs: nope", {}),
        "not an object": as_json([1, 2]),
        "no inputs": as_json({"outputs": []}),
        "two inputs": as_json({"inputs": [image, image]}),
        "unknown input": as_json({"inputs": [{**image, "name": "pixels", "data": [0] * 3072}]}),
        "wrong datatype": as_json({"inputs": [{**image, "datatype": "FP32", "data": [0.0] * 3072}]}),
        "wrong shape": as_json({"inputs": [{**image, "shape": [1, 28, 28, 1], "data": [0] * 784}]}),
        "zero images": as_json({"inputs": [{**image, "shape": [0, 32, 32, 3], "data": []}]}),
        "too few values": as_json({"inputs": [{**image, "data": [0] * 100}]}),
        "values out of range": as_json({"inputs": [{**image, "data": [256] * 3072}]}),
        "floats": as_json({"inputs": [{**image, "data": [0.5] * 3072}]}),
        "ragged": as_json({"inputs": [{**image, "data": [[0, 1], [2]]}]}),
        "deep nesting": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}),
        "byte count mismatch": binary_request({"inputs": [{**image, "parameters": {"binary_data_size": 3072}}]},
                                              bytes(3000)),
        "extra binary bytes": binary_request({"inputs": [{**image, "parameters": {"binary_data_size": 3072}}]},
                                             bytes(3100)),
        "header length not a number": (b"{}", {"Inference-Header-Content-Length": "ten"}),
        "header length past the body": binary_request({"inputs": []}, b"", length=10_000),
        "broken BYTES element": binary_request(
            {"inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]},
            struct.pack("<I", 500) + b"abcd"),
        "BYTES not an image": binary_request(
            {"inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]},
            struct.pack("<I", 5) + b"hello"),
        "bad base64": as_json({"inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}),
        "unknown output": as_json({"inputs": [{**image, "data": [0] * 3072}], "outputs": [{"name": "logits"}]}),
        "negative classification": as_json({"inputs": [{**image, "data": [0] * 3072}],
                                            "outputs": [{"name": "probabilities", "parameters": {"classification": -2}}]}),
        "classification of the flag": as_json({"inputs": [{**image, "data": [0] * 3072}], "outputs": [
            {"name": "in_distribution", "parameters": {"classification": 2}}]}),
        "an output twice": as_json({"inputs": [{**image, "data": [0] * 3072}], "outputs": [
            {"name": "in_distribution_score"}, {"name": "in_distribution_score"}]}),
        "empty outputs": as_json({"inputs": [{**image, "data": [0] * 3072}], "outputs": []}),
    }


@pytest.mark.parametrize("case", sorted(malformed_requests()))
def test_malformed_requests_are_4xx(cifar_server, case: str) -> None:
    body, headers = malformed_requests()[case]
    response = httpx.post(f"{cifar_server.url}/v2/models/{MODEL_NAME}/infer", content=body,
                          headers={"Content-Type": "application/json", **headers}, timeout=30)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    message = response.json()["error"]
    assert message and "\n" not in message and "Traceback" not in message


DECODED_LATER = {"BYTES not an image"}  # a well-formed request: the decoder refuses the file (tests/test_hostile.py)


@pytest.mark.parametrize("case", sorted(malformed_requests()))
def test_parser_refuses_each_malformed_request_in_process(case: str) -> None:
    """The same cases without a server: the parser raises the 4xx, one line, that the live route answers."""
    body, headers = malformed_requests()[case]
    header_length = headers.get("Inference-Header-Content-Length")
    if case in DECODED_LATER:
        assert parse_infer_request(body, header_length, max_images=8).count == 1
        return
    with pytest.raises(ProtocolError) as refused:
        parse_infer_request(body, header_length, max_images=8)  # cifar_server's CIFAR10_MAX_BATCH_FILES
    message = str(refused.value)
    assert 400 <= refused.value.status_code < 500, (case, refused.value.status_code, message)
    assert message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("path", ["/v2/models/nope/infer", f"/v2/models/{MODEL_NAME}/versions/0000/infer"])
def test_unknown_model_or_version_is_404(cifar_server, path: str) -> None:
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}]}
    response = httpx.post(f"{cifar_server.url}{path}", json=body, timeout=30)
    assert response.status_code == 404 and "not" in response.json()["error"]


def test_model_control_is_off_by_default(client, cifar_server) -> None:
    for action in ("load", "unload"):
        response = httpx.post(f"{cifar_server.url}/v2/repository/models/{MODEL_NAME}/{action}", timeout=30)
        assert response.status_code == 403 and "CIFAR10_MODEL_CONTROL" in response.json()["error"]
    with pytest.raises(InferenceServerException, match="model control is off"):
        client.load_model(MODEL_NAME)
    assert [m["name"] for m in client.get_model_repository_index()] == [MODEL_NAME]


def test_parser_refuses_without_a_server() -> None:
    """The same rules hold in-process: a declared size larger than the data is refused before slicing."""
    header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                     "parameters": {"binary_data_size": 99_999}}]}).encode()
    with pytest.raises(ProtocolError, match="binary_data_size"):
        parse_infer_request(header + bytes(10), str(len(header)), max_images=8)


def test_bad_files_as_bytes_tensor(cifar_server) -> None:
    """The hostile-file corpus through the v2 BYTES input: the same status and reason as /classify."""
    from bad_files import corpus

    url = f"{cifar_server.url}/v2/models/{MODEL_NAME}/infer"
    max_body = 1024 * 1024  # the cifar_server fixture's CIFAR10_MAX_BODY_BYTES
    for name, (data, status, message) in corpus().items():
        element = struct.pack("<I", len(data)) + data
        header = json.dumps({"inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": len(element)}}]}).encode()
        response = httpx.post(url, content=header + element, timeout=60,
                              headers={"Inference-Header-Content-Length": str(len(header))})
        if len(header) + len(element) > max_body:
            assert response.status_code == 413, name
            continue
        assert response.status_code == status, (name, response.status_code, response.text[:300])
        if status != 200:
            assert message in response.json()["error"] and "\n" not in response.json()["error"], name
    assert client_still_answers(cifar_server.url)


def client_still_answers(url: str) -> bool:
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}]}
    return httpx.post(f"{url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30).status_code == 200


# ---- the in-distribution outputs (issue 22), encoded without a server ------------------------------------

CALIBRATED = Calibrated(probabilities=np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], dtype=np.float32),
                        scores=np.array([0.65, 0.12], dtype=np.float32), in_distribution=np.array([True, False]))
UNCALIBRATED = Calibrated(probabilities=CALIBRATED.probabilities, scores=None, in_distribution=None)


def encoded(outputs: list[dict] | None, calibrated: Calibrated = CALIBRATED, binary: bool = False) -> dict[str, Any]:
    """name -> values of each output in the answer to a request asking for `outputs` (None: not named)."""
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 32, 32, 3], "data": [0] * 6144}],
            "parameters": {"binary_data_output": binary}, **({"outputs": outputs} if outputs is not None else {})}
    parsed = parse_infer_request(json.dumps(body).encode(), None, max_images=8)
    content, headers = infer_response("m", "1", parsed, calibrated, ["a", "b", "c"])
    length = int(headers.get("Inference-Header-Content-Length", len(content)))
    answer, payload = json.loads(content[:length]), content[length:]
    values = {}
    for output in answer["outputs"]:
        if "data" in output:
            values[output["name"]] = (output["datatype"], output["data"])
            continue
        size, datatype = output["parameters"]["binary_data_size"], output["datatype"]
        if datatype == "BYTES":
            data = [item.decode() for item in length_prefixed(payload[:size], int(np.prod(output["shape"])))]
        else:
            data = np.frombuffer(payload[:size], {"BOOL": np.bool_, "FP32": "<f4"}[datatype]).tolist()
        values[output["name"]] = (datatype, data)
        payload = payload[size:]
    assert not payload
    return values


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_output_by_default_and_any_subset(binary: bool) -> None:
    every = encoded(None, binary=binary)
    assert list(every) == ["probabilities", "in_distribution", "in_distribution_score"]
    assert every["in_distribution"] == ("BOOL", [True, False])
    assert every["in_distribution_score"][0] == "FP32"
    assert every["in_distribution_score"][1] == pytest.approx([0.65, 0.12])
    assert every["probabilities"][1] == pytest.approx(CALIBRATED.probabilities.reshape(-1).tolist())
    flag_only = encoded([{"name": "in_distribution"}], binary=binary)
    assert flag_only == {"in_distribution": ("BOOL", [True, False])}
    mixed = encoded([{"name": "in_distribution_score", "parameters": {"binary_data": not binary}},
                     {"name": "probabilities", "parameters": {"classification": 1}}], binary=binary)
    assert list(mixed) == ["in_distribution_score", "probabilities"]
    assert mixed["probabilities"] == ("BYTES", ["0.700000:0:a", "0.400000:2:c"])


def test_an_uncalibrated_model_has_probabilities_only() -> None:
    assert list(encoded(None, UNCALIBRATED)) == ["probabilities"]
    with pytest.raises(ProtocolError, match="'in_distribution' needs a calibrated model") as refused:
        encoded([{"name": "probabilities"}, {"name": "in_distribution"}], UNCALIBRATED)
    assert refused.value.status_code == 400
