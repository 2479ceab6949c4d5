"""The requests benchmarks/peers.py sends, read back by our own OIP v2 parser, and its answers read back:
no server needed (the quick subset)."""

from __future__ import annotations

import base64
import json

import numpy as np

from benchmarks import peer_requests as requests
from service.v2 import protocol
from contract.calibration import Calibrated
from service.v2.protocol import InferRequest


def test_binary_images_parse_as_sent_with_one_shared_header_length() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    sent = requests.v2_images(images)
    assert len(sent.bodies) == 3 and sent.headers["Content-Type"] == requests.OCTETS
    for image, body in zip(images, sent.bodies):
        parsed = protocol.parse_infer_request(body, sent.headers[requests.HEADER_LENGTH], max_images=1)
        assert parsed.images is not None and np.array_equal(parsed.images[0], image)


def test_binary_files_of_different_sizes_share_a_padded_header() -> None:
    files = [b"\xff\xd8\xff" + bytes(range(256)) * n for n in (1, 40, 400)]  # 3 to 5 digits of size
    sent = requests.v2_files(files, "image_files", [1])
    for data, body in zip(files, sent.bodies):
        parsed = protocol.parse_infer_request(body, sent.headers[requests.HEADER_LENGTH], max_images=1)
        assert parsed.files == [data]


def test_json_forms_carry_the_same_pixels_and_files() -> None:
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(1, 32, 32, 3)
    parsed = protocol.parse_infer_request(requests.v2_images_json(image).bodies[0], None, max_images=1)
    assert np.array_equal(parsed.images, image)
    body = json.loads(requests.v2_files_json([b"abc"], "image_files", [1]).bodies[0])
    assert base64.b64decode(body["inputs"][0]["data"][0]) == b"abc"
    assert base64.b64decode(json.loads(requests.json_files([b"xyz"]).bodies[0])["image"]) == b"xyz"


def test_probabilities_are_read_from_json_and_binary_answers() -> None:
    probabilities = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    for binary in (False, True):
        request = InferRequest(id=None, binary=binary)  # every output: the flag and score after the probabilities
        calibrated = Calibrated(probabilities, np.array([0.9], np.float32), np.array([True]))
        body, headers = protocol.infer_response("m", "1", request, calibrated, ["a", "b", "c"])
        read = requests.v2_probabilities(body, headers.get("Inference-Header-Content-Length"))
        assert np.array_equal(read, probabilities)
    assert np.allclose(requests.json_probabilities(b'{"probabilities": [0.5, 0.5]}'), [[0.5, 0.5]])
    answer = json.dumps({"label": "b", "top_k": [{"label": "b", "probability": 0.6}, {"label": "a", "probability": 0.4}]})
    assert np.allclose(requests.classify_probabilities(answer.encode(), ["a", "b"]), [[0.4, 0.6]])
    assert requests.has_probabilities(b'{"outputs": [{"name": "probabilities"}]}')
    assert not requests.has_probabilities(b'{"error": "no"}')
