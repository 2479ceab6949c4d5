"""Graceful shutdown: on SIGTERM, requests in flight finish with 200 and then the port is closed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from bad_files import corpus
from conftest import ModelStore, start_server, stop_server

pytestmark = pytest.mark.timeout(300)

HOLD_MS = 3000  # the batcher waits this long to fill a batch: requests stay in flight for ~3 s


def test_sigterm_drains_in_flight_requests_then_refuses(cifar_model_store: ModelStore, tmp_path: Path) -> None:
    server = start_server(cifar_model_store, tmp_path / "serve.log", CIFAR10_MAX_LATENCY_MS=str(HOLD_MS))
    png = corpus()["one_pixel"][0]
    try:
        assert server.process.poll() is None, server.log_text()[-3000:]

        async def scenario() -> tuple[list[object], object]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

                async def batch() -> object:
                    try:
                        response = await client.post("/classify_batch", files=[("images", (f"{i}.png", png)) for i in range(4)])
                        return response.status_code, len(response.json()) if response.status_code == 200 else response.text
                    except httpx.HTTPError as exc:
                        return repr(exc)

                in_flight = [asyncio.create_task(batch()) for _ in range(8)]
                await asyncio.sleep(0.8)  # all sent, all waiting in the batcher
                server.process.send_signal(signal.SIGTERM)  # as `docker stop` / Kubernetes do: to the main process
                await asyncio.sleep(0.5)
                try:  # a new request during the drain must not be answered with a 5xx
                    async with httpx.AsyncClient(base_url=server.url, timeout=30) as late_client:
                        late: object = (await late_client.post("/classify", files={"image": ("a.png", png)})).status_code
                except httpx.HTTPError as exc:
                    late = type(exc).__name__
                return await asyncio.gather(*in_flight), late

        started = time.monotonic()
        answers, late = asyncio.run(scenario())
        assert answers == [(200, 4)] * 8, answers
        assert late in (200, 503) or isinstance(late, str), late  # served, refused with 503, or connection refused/reset
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < HOLD_MS / 1000 + 25  # no hang
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/livez", timeout=5)
        log = server.log_text()
        assert "Completed async cleanup hook: _shutdown" in log and "Traceback" not in log, log[-3000:]
    finally:
        stop_server(server)
