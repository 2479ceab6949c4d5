"""benchmarks/middleware_cost.py, quick: every layer is timed, and OpenTelemetry's middleware is the one that costs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import middleware_cost

TREE = Path(__file__).parent / "fixtures" / "images-tiny.tar.gz"


def test_every_layer_and_the_decode_are_timed(capsys: pytest.CaptureFixture[str]) -> None:
    middleware_cost.main(["--calls", "300", "--repeats", "2", "--images", str(TREE), "--num-images", "10"])
    out = capsys.readouterr().out
    timed = {name.strip(): float(low) for name, low in re.findall(r"^(.+?)\s+([\d.]+) -\s+[\d.]+ µs$", out, re.M)}
    assert set(timed) == {"no middleware, per request", "OpenTelemetry (tracing off), per request",
                          "timeout, per request", "request context, per request", "access log, per request",
                          "decode (contract/images.py), per file"}, out
    assert all(value > 0 for value in timed.values())
    assert timed["OpenTelemetry (tracing off), per request"] > 3 * timed["no middleware, per request"], out
