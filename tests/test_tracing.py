"""OpenTelemetry on the request path only while BentoML collects traces (service/tracing.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer

from service.tracing import EVERY_URL, service_tracing, tracing_is_on

PHOTO = next((Path(__file__).parent / "fixtures" / "images-tiny" / "test").rglob("*.jpg"))


@pytest.fixture()
def tracing_config() -> Iterator[None]:
    """BentoML's tracing settings as they were before the test."""
    exporter, rate = BentoMLContainer.tracing.exporter_type.get(), BentoMLContainer.tracing.sample_rate.get()
    yield
    BentoMLContainer.tracing.exporter_type.set(exporter)
    BentoMLContainer.tracing.sample_rate.set(rate)


@pytest.mark.parametrize(("exporter", "rate", "on"), [(None, None, False), (None, 1.0, False), ("otlp", None, False),
                                                      ("otlp", 0.0, False), ("in_memory", 0.5, True)])
def test_tracing_is_on_only_with_an_exporter_and_a_sample_rate(tracing_config: None, exporter: str | None,
                                                               rate: float | None, on: bool) -> None:
    BentoMLContainer.tracing.exporter_type.set(exporter)
    BentoMLContainer.tracing.sample_rate.set(rate)
    assert tracing_is_on() is on
    assert service_tracing() == ({} if on else {"tracing": {"excluded_urls": EVERY_URL}})


def classify_lines(log: Path) -> list[str]:
    """The server's access-log lines of /classify requests."""
    return [line for line in log.read_text().splitlines() if "path=/classify," in line]


def new_classify_lines(log: Path, before: int, count: int) -> list[str]:
    """The `count` lines after the first `before`, waiting up to 10 s for the server to write them."""
    deadline = time.monotonic() + 10
    while len(classify_lines(log)) < before + count and time.monotonic() < deadline:
        time.sleep(0.1)
    return classify_lines(log)[before:]


def test_with_tracing_off_requests_make_no_spans(cifar_server) -> None:
    """The suite's server runs with BentoML's default tracing (off): no span, so no trace ids in the access
    log and no request id header, on the BentoML API route (multipart) and the raw-body path alike."""
    before = len(classify_lines(cifar_server.log))
    multipart = httpx.post(f"{cifar_server.url}/classify", files={"image": (PHOTO.name, PHOTO.read_bytes())}, timeout=30)
    raw = httpx.post(f"{cifar_server.url}/classify", content=PHOTO.read_bytes(), headers={"content-type": "image/jpeg"},
                     timeout=30)
    assert multipart.status_code == raw.status_code == 200, (multipart.text, raw.text)
    assert "x-bentoml-request-id" not in multipart.headers and "x-bentoml-request-id" not in raw.headers
    lines = new_classify_lines(cifar_server.log, before, 2)
    assert len(lines) == 2 and all("status=200" in line and "(trace=" not in line for line in lines), lines
