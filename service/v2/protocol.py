"""The Open Inference Protocol (KServe v2) over HTTP: request parsing and answer encoding.

Pure functions over bytes and numpy, with Triton's binary-data extension (JSON header, then raw
tensors, split at `Inference-Header-Content-Length`) and classification extension ("score:index:label"
strings). Every malformed request is a `ProtocolError`, answered as `{"error": ...}` with its 4xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.calibration import Calibrated
from service.errors import ProtocolError

HEADER_LENGTH = "inference-header-content-length"
IMAGES_INPUT = "images"  # UINT8 [N, 32, 32, 3]: decoded pixels
FILES_INPUT = "image_files"  # BYTES [N]: encoded image files of any size and format
OUTPUT = "probabilities"  # FP32 [N, classes]: calibrated when the model's card holds a calibration
FLAG_OUTPUT = "in_distribution"  # BOOL [N]: false = probably none of the classes (calibrated models only)
SCORE_OUTPUT = "in_distribution_score"  # FP32 [N]: the card's score, compared with the threshold
OUTPUTS = (OUTPUT, FLAG_OUTPUT, SCORE_OUTPUT)
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]
# What a JSON header may hold, per image a request may carry: a nested UINT8 image [32, 32, 3] is
# 1057 lists and 3072 values. Counted with bytes.count before parsing: a header of millions of empty
# lists or strings is refused in microseconds instead of parsed for seconds.
LISTS_PER_IMAGE, VALUES_PER_IMAGE, STRUCTURE_SLACK = 1100, 3100, 256
INLINE_PARSE_BYTES = 64 * 1024  # bodies above this are parsed in a thread, off the event loop


@dataclass
class RequestedOutput:
    name: str = OUTPUT
    classification: int = 0  # k > 0: the k best classes as "score:index:label" strings (probabilities only)
    binary: bool = False


@dataclass
class InferRequest:
    id: str | None
    images: np.ndarray | None = None  # uint8 (N, 32, 32, 3)
    files: list[bytes] | None = None  # encoded images
    outputs: list[RequestedOutput] | None = None  # None: every output the model has
    binary: bool = False  # the request's binary_data_output: the default of every output

    @property
    def count(self) -> int:
        return len(self.images) if self.images is not None else len(self.files or [])


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a request body."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length is not an integer: {header_length!r}") from None
    if not 0 < length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes")
    return body[:length], body[length:]


def check_json_size(header: bytes, max_images: int) -> None:
    """Refuse a JSON header with more lists, objects or values than `max_images` images can need."""
    counts = {"lists": header.count(b"["), "objects": header.count(b"{"), "values": header.count(b",")}
    limits = {"lists": LISTS_PER_IMAGE * max_images + STRUCTURE_SLACK, "objects": STRUCTURE_SLACK,
              "values": VALUES_PER_IMAGE * max_images + STRUCTURE_SLACK}
    for what, count in counts.items():
        if count > limits[what]:
            raise ProtocolError(f"the JSON header holds {count} {what}, more than {max_images} images can need "
                                f"({limits[what]}); send large tensors as binary data", 413)


def parse_json(header: bytes) -> dict[str, Any]:
    try:
        request = json.loads(header)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"invalid JSON: {error}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    return request


async def read_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """`parse_infer_request`, in a thread when the body is large enough to hold the event loop."""
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_infer_request(body, header_length, max_images)
    return await asyncio.to_thread(parse_infer_request, body, header_length, max_images)


def parse_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """One input tensor (`images` UINT8 or `image_files` BYTES, at most `max_images`) and the outputs
    asked for; the header's sizes are checked before any tensor data is parsed."""
    header, binary = split_body(body, header_length)
    check_json_size(header, max_images)
    request = parse_json(header)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"expected 'inputs' with exactly one tensor: {IMAGES_INPUT!r} or {FILES_INPUT!r}")
    tensor = inputs[0]
    raw, rest = take_binary(tensor, binary)
    if rest:
        raise ProtocolError(f"{len(rest)} bytes of binary data follow the tensors declared in the header")
    binary = binary_output(request)
    parsed = InferRequest(id=optional_id(request), outputs=requested_outputs(request, binary), binary=binary)
    name, datatype, shape = tensor_header(tensor)
    if name == IMAGES_INPUT:
        parsed.images = uint8_images(datatype, shape, tensor.get("data"), raw, max_images)
    elif name == FILES_INPUT:
        parsed.files = image_files(datatype, shape, tensor.get("data"), raw, max_images)
    else:
        raise ProtocolError(f"unknown input {name!r}: expected {IMAGES_INPUT!r} or {FILES_INPUT!r}")
    return parsed


def optional_id(request: dict[str, Any]) -> str | None:
    value = request.get("id")
    if value is not None and not isinstance(value, str):
        raise ProtocolError("'id' must be a string")
    return value


def tensor_header(tensor: dict[str, Any]) -> tuple[str, str, list[int]]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise ProtocolError("each input needs a string 'name' and 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return name, datatype, shape


def take_binary(tensor: dict[str, Any], binary: bytes) -> tuple[bytes | None, bytes]:
    """The tensor's own bytes from the binary section (if it declares `binary_data_size`), and the rest."""
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None, binary
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("'binary_data_size' must be a non-negative integer")
    if size > len(binary):
        raise ProtocolError(f"binary_data_size {size} is more than the {len(binary)} bytes of binary data sent")
    return binary[:size], binary[size:]


def uint8_images(datatype: str, shape: list[int], data: Any, raw: bytes | None, max_images: int) -> np.ndarray:
    if datatype != "UINT8":
        raise ProtocolError(f"input {IMAGES_INPUT!r} must be UINT8, not {datatype}")
    if len(shape) != 4 or shape[1:] != [32, 32, 3] or not 1 <= shape[0] <= max_images:
        raise ProtocolError(
            f"input {IMAGES_INPUT!r} must have shape [N, 32, 32, 3] with 1 <= N <= {max_images}, not {shape}"
        )
    count = int(np.prod(shape))
    if raw is not None:
        if len(raw) != count:
            raise ProtocolError(f"shape {shape} needs {count} bytes of UINT8 data, got {len(raw)}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    values = json_numbers(data, count)
    if values.min() < 0 or values.max() > 255:
        raise ProtocolError("UINT8 data must be integers from 0 to 255")
    return values.astype(np.uint8).reshape(shape)


def json_numbers(data: Any, count: int) -> np.ndarray:
    """A JSON `data` list (flat or nested, row-major) of exactly `count` integers."""
    if not isinstance(data, list):
        raise ProtocolError("'data' must be a list (or send the tensor as binary data)")
    try:
        values = np.asarray(data).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError("'data' must be a rectangular list of integers") from None
    if values.dtype.kind not in "iu":
        raise ProtocolError("'data' must hold integers only")
    if values.size != count:
        raise ProtocolError(f"'data' has {values.size} values, the shape needs {count}")
    return values


def image_files(datatype: str, shape: list[int], data: Any, raw: bytes | None, max_files: int) -> list[bytes]:
    if datatype != "BYTES":
        raise ProtocolError(f"input {FILES_INPUT!r} must be BYTES, not {datatype}")
    if len(shape) != 1 or not 1 <= shape[0] <= max_files:
        raise ProtocolError(f"input {FILES_INPUT!r} must have shape [N] with 1 <= N <= {max_files}, not {shape}")
    files = length_prefixed(raw, shape[0]) if raw is not None else base64_strings(data)
    if len(files) != shape[0]:
        raise ProtocolError(f"shape {shape} needs {shape[0]} image files, got {len(files)}")
    return files


def length_prefixed(raw: bytes, count: int) -> list[bytes]:
    """Triton's binary BYTES: each element a 4-byte little-endian length, then its bytes; at most
    `count` elements are read (the shape's), whatever the data holds beyond them."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(items) == count:
            raise ProtocolError(f"BYTES data holds more than the {count} elements its shape declares")
        if offset + 4 > len(raw):
            raise ProtocolError("BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"a BYTES element of {length} bytes runs past the end of the data")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def base64_strings(data: Any) -> list[bytes]:
    """In JSON, image files travel as base64 strings (JSON strings cannot carry raw bytes)."""
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise ProtocolError(f"JSON data of {FILES_INPUT!r} must be a list of base64 strings (or send binary data)")
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except (binascii.Error, ValueError):
        raise ProtocolError(f"JSON data of {FILES_INPUT!r} is not valid base64") from None


def binary_output(request: dict[str, Any]) -> bool:
    parameters = request.get("parameters") or {}
    return bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False


def requested_outputs(request: dict[str, Any], binary: bool) -> list[RequestedOutput] | None:
    """The outputs asked for, each plain or classification, JSON or binary (None: all of the model's)."""
    outputs = request.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not outputs or not all(isinstance(item, dict) for item in outputs):
        raise ProtocolError(f"'outputs' must be a list of outputs named among {list(OUTPUTS)}")
    wanted = [requested_output(item, binary) for item in outputs]
    if len({output.name for output in wanted}) != len(wanted):
        raise ProtocolError("'outputs' names an output twice")
    return wanted


def requested_output(output: dict[str, Any], binary: bool) -> RequestedOutput:
    name = output.get("name")
    if name not in OUTPUTS:
        raise ProtocolError(f"unknown output {name!r}: this model has {', '.join(map(repr, OUTPUTS))}")
    wanted = output.get("parameters") or {}
    if not isinstance(wanted, dict):
        raise ProtocolError("output 'parameters' must be an object")
    k = wanted.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ProtocolError("'classification' must be a positive integer")
    if k and name != OUTPUT:
        raise ProtocolError(f"'classification' applies to {OUTPUT!r} only, not {name!r}")
    return RequestedOutput(name=name, classification=k, binary=bool(wanted.get("binary_data", binary)))


def available_outputs(calibrated: bool) -> tuple[str, ...]:
    """A model's outputs: the flag and the score exist only where its card holds a calibration."""
    return OUTPUTS if calibrated else (OUTPUT,)


def output_metadata(classes: int, calibrated: bool) -> list[dict[str, Any]]:
    """The outputs as the model metadata declares them."""
    shapes = {OUTPUT: ("FP32", [-1, classes]), FLAG_OUTPUT: ("BOOL", [-1]), SCORE_OUTPUT: ("FP32", [-1])}
    return [{"name": name, "datatype": shapes[name][0], "shape": shapes[name][1]} for name in available_outputs(calibrated)]


def classification_strings(probabilities: np.ndarray, class_names: list[str], k: int) -> list[list[str]]:
    """Triton's classification extension: the k best of each row as "score:index:label"."""
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[f"{row[i]:f}:{i}:{class_names[i]}" for i in indices] for row, indices in zip(probabilities, best)]


def encoded_output(wanted: RequestedOutput, outputs: Calibrated, class_names: list[str]) -> tuple[dict[str, Any], bytes, Any]:
    """One output's header (name, datatype, shape), its binary payload and its JSON values."""
    header: dict[str, Any] = {"name": wanted.name}
    if wanted.classification:
        k = min(wanted.classification, len(class_names))
        strings = classification_strings(outputs.probabilities, class_names, k)
        header.update(datatype="BYTES", shape=[len(strings), k])
        payload = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for row in strings for s in row)
        return header, payload, [s for row in strings for s in row]
    if wanted.name == FLAG_OUTPUT:
        array: np.ndarray = np.ascontiguousarray(outputs.in_distribution, dtype=np.bool_)
        header.update(datatype="BOOL", shape=list(array.shape))
    else:
        values = outputs.probabilities if wanted.name == OUTPUT else outputs.scores
        array = np.ascontiguousarray(values, dtype="<f4")
        header.update(datatype="FP32", shape=list(array.shape))
    return header, array.tobytes(), array.reshape(-1).tolist()


def chosen_outputs(request: InferRequest, calibrated: bool) -> list[RequestedOutput]:
    """The outputs to send: those asked for (each must exist for this model), else all the model has."""
    available = available_outputs(calibrated)
    if request.outputs is None:
        return [RequestedOutput(name=name, binary=request.binary) for name in available]
    missing = [output.name for output in request.outputs if output.name not in available]
    if missing:
        raise ProtocolError(f"output {missing[0]!r} needs a calibrated model; this one has {list(available)}")
    return request.outputs


def infer_response(
    model: str, version: str, request: InferRequest, outputs: Calibrated, class_names: list[str]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (`Inference-Header-Content-Length` for binary output)."""
    headers, payloads = [], []
    for wanted in chosen_outputs(request, outputs.scores is not None):
        header, payload, values = encoded_output(wanted, outputs, class_names)
        if wanted.binary:
            header["parameters"] = {"binary_data_size": len(payload)}
            payloads.append(payload)
        else:
            header["data"] = values
        headers.append(header)
    answer: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": headers}
    if request.id is not None:
        answer["id"] = request.id
    text = json.dumps(answer).encode()
    if not payloads:
        return text, {}
    return text + b"".join(payloads), {"Inference-Header-Content-Length": str(len(text))}
