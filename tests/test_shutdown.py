"""Graceful shutdown: on SIGTERM, requests in flight finish with 200 and then the port is closed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from bad_files import corpus
from conftest import ModelStore, assert_same_answer, start_server

pytestmark = pytest.mark.timeout(300)

HOLD_MS = 3000  # the batcher waits this long to fill a batch: requests stay in flight for ~3 s


def test_sigterm_drains_in_flight_requests_then_refuses(cifar_model_store: ModelStore, tmp_path: Path) -> None:
    server = start_server(cifar_model_store, tmp_path / "serve.log", CIFAR10_MAX_LATENCY_MS=str(HOLD_MS))
    png = corpus()["one_pixel"][0]
    try:
        server.require_running()
        reference = httpx.post(f"{server.url}/classify", files={"image": ("a.png", png)}, timeout=30).json()

        async def scenario() -> tuple[list[object], object]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

                async def batch() -> object:
                    try:
                        response = await client.post("/classify_batch", files=[("images", (f"{i}.png", png)) for i in range(4)])
                        return response.status_code, response.json() if response.status_code == 200 else response.text
                    except httpx.HTTPError as exc:
                        return repr(exc)

                in_flight = [asyncio.create_task(batch()) for _ in range(8)]
                await asyncio.sleep(0.8)  # all sent, all waiting in the batcher
                server.process.send_signal(signal.SIGTERM)  # as `docker stop` / Kubernetes do: to the main process
                await asyncio.sleep(0.5)
                return await asyncio.gather(*in_flight), await late_request(server.url, png)

        started = time.monotonic()
        answers, late = asyncio.run(scenario())
        assert [a[0] if isinstance(a, tuple) else a for a in answers] == [200] * 8, answers
        for _, body in answers:  # type: ignore[misc]
            assert len(body) == 4
            for answer in body:  # drained, not dropped: each the answer the image gets any time
                assert_same_answer(answer, reference)
        assert_late_answer(late, reference)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < HOLD_MS / 1000 + 25  # no hang
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/livez", timeout=5)
        log = server.log_text()
        assert "Completed async cleanup hook: _shutdown" in log and "Traceback" not in log, log[-3000:]
    finally:
        server.stop()


async def late_request(url: str, png: bytes) -> tuple[int, dict, str | None] | str:
    """A new request during the drain: (status, JSON body, Retry-After) or the name of the connection error."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.post("/classify", files={"image": ("a.png", png)})
            return response.status_code, response.json(), response.headers.get("retry-after")
    except httpx.HTTPError as exc:
        return type(exc).__name__


def assert_late_answer(late: tuple[int, dict, str | None] | str, reference: dict) -> None:
    """Served in full, refused with a 503 naming the shutdown (BatcherClosed), or the port already closed; never a 5xx or a hang."""
    if isinstance(late, str):
        assert late in ("ConnectError", "RemoteProtocolError", "ReadError"), late  # refused or reset, not a timeout
        return
    status, body, retry_after = late
    if status == 503:
        assert body["error"] in (  # service/batching.py's BatcherClosed messages, passed through as is
            "the server is shutting down; retry on another replica",
            "the server shut down before this request ran",
        ), body
        assert retry_after == "1", late
    else:
        assert status == 200, late
        assert_same_answer(body, reference)
