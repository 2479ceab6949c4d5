"""Hostile input costs a bounded share (issue 20): image and protocol bombs, work in flight, state.

The first half runs in process (the decoder, the v2 parser, the budgets, the control folder); the
second against one real `bentoml serve` with model control on and a small budget of bytes in flight.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.harness import ServerProcess
from conftest import MODEL_NAME
from contract.images import ImageError, decode_image
from service.errors import Overloaded, ProtocolError, RequestError
from service.inference.control import CONTROL_DIR_ENV, ControlFolderError, SharedControl, control_folder
from service.inference.intake import Budget, Decoder, FileError
from service.v2.protocol import parse_infer_request

pytestmark = pytest.mark.timeout(300)


def tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A grey TIFF whose one deflate tile is `tile` x `tile` pixels (the data is a stand-in: the header
    alone must be refused)."""
    data = b"x\x9c\x03\x00\x00\x00\x00\x01"  # a tiny deflate stream
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
               (322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 10 * 12 + 4), (325, 4, len(data))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def grey16_png(size: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_tiff_tile_larger_than_its_image_is_refused_from_the_header() -> None:
    started = time.perf_counter()
    with pytest.raises(ImageError, match="32768x32768 tile"):
        decode_image(tiled_tiff(1, 1, 32768))
    assert time.perf_counter() - started < 0.5


def test_a_large_16_bit_png_decodes_without_a_full_float_copy() -> None:
    """6000x6000 16-bit grey at half range: a quarter of a second's work, the same grey as a small one."""
    data = grey16_png(6000, 32768)
    assert len(data) < 200_000
    started = time.perf_counter()
    pixels = decode_image(data)
    assert time.perf_counter() - started < 2.0
    assert np.array_equal(pixels, decode_image(grey16_png(64, 32768)))
    assert abs(int(pixels[0, 0, 0]) - 128) <= 1


def test_v2_json_with_millions_of_lists_is_refused_before_parsing() -> None:
    header = b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":[' + b"[]," * 3_500_000 + b"[]]}]}"
    started = time.perf_counter()
    with pytest.raises(ProtocolError, match="lists") as refused:
        parse_infer_request(header, None, max_images=64)
    assert refused.value.status_code == 413 and time.perf_counter() - started < 0.1


def test_v2_bytes_elements_beyond_the_shape_are_not_parsed() -> None:
    """2.6 M zero-length BYTES elements under a shape of [1]: refused after reading two of them."""
    header = json.dumps({"inputs": [{"name": "image_files", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 4 * 2_600_000}}]}).encode()
    started = time.perf_counter()
    with pytest.raises(ProtocolError, match="more than the 1 elements"):
        parse_infer_request(header + bytes(4 * 2_600_000), str(len(header)), max_images=64)
    assert time.perf_counter() - started < 0.1


def test_v2_uint8_images_per_request_are_bounded() -> None:
    header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [65, 32, 32, 3],
                                     "parameters": {"binary_data_size": 65 * 3072}}]}).encode()
    with pytest.raises(ProtocolError, match="1 <= N <= 64"):
        parse_infer_request(header + bytes(65 * 3072), str(len(header)), max_images=64)


def test_budget_refuses_quickly_and_gives_back() -> None:
    budget = Budget(10, "images")
    with budget.hold(8):
        with pytest.raises(Overloaded) as busy:
            budget.take(3)
        assert busy.value.status_code == 503 and busy.value.headers["Retry-After"] == "1"
    with pytest.raises(RequestError) as alone:
        budget.take(11)
    assert alone.value.status_code == 413 and budget.held == 0
    with budget.hold(10):
        assert budget.held == 10


def test_large_images_have_a_bounded_lane(image_bytes: dict[str, bytes]) -> None:
    """Images over `large_pixels` take one of `large_places`; a request that needs more is a 413, one that
    finds them taken a 503; small images never wait for the lane."""
    big = grey16_png(400, 1000)
    decoder = Decoder(threads=2, max_pixels=10**7, large_pixels=100_000, large_places=1)

    async def scenario() -> tuple[int, int, np.ndarray]:
        with pytest.raises(RequestError) as two:
            await decoder.decode([big, big])
        decoder.large_places.take(1)  # another request holds the lane
        with pytest.raises(Overloaded):
            await decoder.decode([big])
        small = await decoder.decode([image_bytes["png"], image_bytes["jpeg"]])
        decoder.large_places.give_back(1)
        return two.value.status_code, len(await decoder.decode([big])), small

    try:
        status, decoded, small = asyncio.run(scenario())
    finally:
        decoder.close()
    assert status == 413 and decoded == 1 and small.shape == (2, 32, 32, 3)


def test_a_bad_file_is_named_by_its_index(image_bytes: dict[str, bytes]) -> None:
    decoder = Decoder(threads=2, max_pixels=10**7, large_pixels=10**6, large_places=2)
    try:
        with pytest.raises(FileError) as bad:
            asyncio.run(decoder.decode([image_bytes["png"], b"not an image", tiled_tiff(1, 1, 32768)], "images", True))
    finally:
        decoder.close()
    assert bad.value.index == 1 and bad.value.status_code == 415 and str(bad.value).startswith("images[1]: ")


def test_control_folder_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    link = tmp_path / "link"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    for folder in (shared, link, tmp_path / "absent"):
        monkeypatch.setenv(CONTROL_DIR_ENV, str(folder))
        with pytest.raises(ControlFolderError):
            control_folder()
    monkeypatch.setenv(CONTROL_DIR_ENV, str(private))
    assert control_folder() == private


def test_a_malformed_wanted_state_is_ignored_and_changes_still_reach_workers(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    first, second = SharedControl(tmp_path, 1, 2), SharedControl(tmp_path, 2, 2)
    applied: list[dict[str, str | None]] = []

    async def apply(wanted: dict[str, str | None]) -> None:
        applied.append(wanted)

    async def scenario() -> None:
        follower = asyncio.get_running_loop().create_task(second.follow(apply))
        assert await first.wait_for_all(first.publish("m", "v1"), timeout=5)
        first.wanted_file.write_text('{"generation": "many", "models": []}')
        await asyncio.sleep(0.5)  # the follower reads it, warns once, keeps following
        assert await first.wait_for_all(first.publish("m", None), timeout=5)
        follower.cancel()

    asyncio.run(scenario())
    assert applied == [{"m": "v1"}, {"m": None}]
    warnings = [r for r in caplog.records if "ignoring wanted.json" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


# --- against a live server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(control_server: ServerProcess) -> ServerProcess:
    """The session's server with model control on, a 200 kB body limit and 300 kB in flight (conftest's
    control_server)."""
    return control_server


def stalled_upload(port: int, declared: int) -> socket.socket:
    """A client that declares a body of `declared` bytes, sends a part of it and waits."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + b"{" * 100)
    return sock


def raw_get(port: int, path: str) -> tuple[str, str]:
    """GET with the path exactly as given (httpx would normalise `..`): the status line and the body."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    return head.splitlines()[0], body


def test_bytes_in_flight_past_the_budget_get_a_quick_503(limited_server, image_bytes: dict[str, bytes]) -> None:
    stalled = [stalled_upload(limited_server.port, 150_000) for _ in range(2)]
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        busy = httpx.post(f"{limited_server.url}/classify", content=image_bytes["png"],
                          headers={"Content-Type": "image/png"}, timeout=30)
        busy_seconds = time.perf_counter() - started
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(0.5)
    after = httpx.post(f"{limited_server.url}/classify", content=image_bytes["png"],
                       headers={"Content-Type": "image/png"}, timeout=30)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1", busy.text
    assert "busy" in busy.json()["error"] and busy_seconds < 1.0
    assert after.status_code == 200, after.text


def test_tricky_paths_and_tags_are_one_line_4xx(limited_server) -> None:
    status, body = raw_get(limited_server.port, "/ui/../classify")
    assert " 404 " in status and "error" in json.loads(body), (status, body)
    wrong_method = httpx.delete(f"{limited_server.url}/v2/health/live", timeout=10)  # a route of the app, not BentoML's
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "DELETE is not allowed here"}
    assert "GET" in wrong_method.headers["allow"]
    bad_version = httpx.post(f"{limited_server.url}/v2/repository/models/{MODEL_NAME}/load",
                             json={"parameters": {"version": "../../../etc"}}, timeout=60)
    assert bad_version.status_code == 400 and "not a valid" in bad_version.json()["error"], bad_version.text


def test_no_model_served_is_not_ready(limited_server) -> None:
    url = limited_server.url
    served = [state["name"] for state in httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()]
    unloaded = [httpx.post(f"{url}/v2/repository/models/{name}/unload", timeout=60) for name in served]
    try:
        answers = {path: httpx.get(f"{url}{path}", timeout=10) for path in ("/readyz", "/v2/health/ready", "/metadata")}
        posted_metadata = httpx.post(f"{url}/metadata", json={}, timeout=10)
    finally:
        reloaded = [httpx.post(f"{url}/v2/repository/models/{name}/load", timeout=300) for name in served]
    assert MODEL_NAME in served
    assert all(answer.status_code == 200 for answer in unloaded + reloaded), [answer.text for answer in reloaded]
    assert answers["/readyz"].status_code == 503
    assert answers["/v2/health/ready"].status_code == 503 and answers["/v2/health/ready"].json() == {"ready": False}
    assert answers["/metadata"].status_code == 404
    assert posted_metadata.status_code == 404 and "unloaded" in posted_metadata.json()["error"], posted_metadata.text
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_no_traceback_in_the_log(limited_server) -> None:
    """Runs last in this module: nothing a client sent above left a traceback (or a 500)."""
    log = limited_server.log_text()
    assert "Traceback" not in log and "status=500" not in log, log[-3000:]

