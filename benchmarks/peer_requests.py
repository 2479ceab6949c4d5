"""The requests every server of benchmarks/peers.py gets, built once before the load, and its answers read.

OIP v2 with Triton's binary tensor extension: a JSON header, then the tensor's bytes; the header's length
is in `Inference-Header-Content-Length`. Every body of one workload is given a header of the same length
(JSON allows the trailing spaces that pad it), so one set of HTTP headers serves all of them.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class Requests:
    """One workload's bodies for one server, and the HTTP headers they share."""

    bodies: list[bytes]
    headers: dict[str, str]


def v2_header(name: str, datatype: str, shape: list[int], size: int) -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}
    return json.dumps({"inputs": [tensor]}).encode()


def padded(parts: list[tuple[bytes, bytes]]) -> Requests:
    """(JSON header, binary data) pairs as bodies whose headers are all padded to the longest one."""
    width = max(len(header) for header, _ in parts)
    bodies = [header.ljust(width) + data for header, data in parts]
    return Requests(bodies, {"Content-Type": OCTETS, HEADER_LENGTH: str(width)})


def v2_images(images: np.ndarray, name: str = "images") -> Requests:
    """Each image as its own binary UINT8 [1, 32, 32, 3] infer request."""
    return padded([(v2_header(name, "UINT8", [1, *image.shape], image.nbytes), image.tobytes()) for image in images])


def v2_files(files: list[bytes], name: str, shape: list[int]) -> Requests:
    """Each file as its own binary BYTES request (4-byte little-endian length, then the bytes), of `shape`."""
    items = [struct.pack("<I", len(data)) + data for data in files]
    return padded([(v2_header(name, "BYTES", shape, len(item)), item) for item in items])


def v2_files_json(files: list[bytes], name: str, shape: list[int]) -> Requests:
    """Each file as a JSON BYTES request, base64 in the tensor's data (for servers without binary input)."""
    bodies = []
    for data in files:
        tensor = {"name": name, "datatype": "BYTES", "shape": shape, "parameters": {"content_type": "base64"},
                  "data": [base64.b64encode(data).decode()]}
        bodies.append(json.dumps({"inputs": [tensor]}).encode())
    return Requests(bodies, {"Content-Type": "application/json"})


def raw_files(files: list[bytes], content_type: str = "image/jpeg") -> Requests:
    return Requests(list(files), {"Content-Type": content_type})


def v2_probabilities(answer: bytes, header_length: str | None) -> np.ndarray:
    """The `probabilities` output of a v2 answer as float32 (n, classes), from JSON data or binary data (the
    binary parts follow each other in the order of the outputs)."""
    header, binary = (answer, b"") if header_length is None else (answer[: int(header_length)], answer[int(header_length):])
    offset = 0
    for output in json.loads(header)["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size", 0)
        if output["name"] == "probabilities":
            break
        offset += size
    if "data" in output:
        values = np.asarray(output["data"], dtype=np.float32)
    else:
        values = np.frombuffer(binary[offset: offset + size], dtype="<f4")
    return values.reshape(output["shape"][0], -1)


def json_probabilities(answer: bytes) -> np.ndarray:
    """{"probabilities": [...]} (LitServe's and Ray Serve's answers) as float32 (1, classes)."""
    return np.asarray(json.loads(answer)["probabilities"], dtype=np.float32).reshape(1, -1)


def classify_probabilities(answer: bytes, class_names: list[str]) -> np.ndarray:
    """Our /classify?top_k=<all> answer as float32 (1, classes) in the model's class order."""
    by_label = {item["label"]: item["probability"] for item in json.loads(answer)["top_k"]}
    return np.asarray([[by_label[name] for name in class_names]], dtype=np.float32)


def has_probabilities(answer: bytes) -> bool:
    """A 2xx answer that carries the output (every server names it `probabilities`)."""
    return b'"probabilities"' in answer[:4096]


def v2_images_json(images: np.ndarray, name: str = "images") -> Requests:
    """Each image as its own JSON UINT8 [1, 32, 32, 3] infer request (for servers without binary input)."""
    bodies = [json.dumps({"inputs": [{"name": name, "datatype": "UINT8", "shape": [1, *image.shape],
                                      "data": image.reshape(-1).tolist()}]}).encode() for image in images]
    return Requests(bodies, {"Content-Type": "application/json"})


def json_files(files: list[bytes]) -> Requests:
    """Each file as {"image": "<base64>"} (LitServe's JSON body)."""
    return Requests([json.dumps({"image": base64.b64encode(data).decode()}).encode() for data in files],
                    {"Content-Type": "application/json"})
