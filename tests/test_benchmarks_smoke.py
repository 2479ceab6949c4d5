"""The serving benchmark runs end to end in seconds (targets reported, not enforced), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import ServerProcess
from conftest import PROJECT_ROOT, ModelStore

SCRIPT = PROJECT_ROOT / "benchmarks" / "serve.py"
IMAGES = PROJECT_ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"


def test_serve_benchmark_smoke(cifar_model_store: ModelStore, cifar_server: ServerProcess, tmp_path: Path) -> None:
    """The ceiling and naive servers started by the script; the service is the session's running one."""
    out = tmp_path / "serve.json"
    cmd = [
        sys.executable, str(SCRIPT), "--model", cifar_model_store.tag,
        "--service-url", cifar_server.url, "--service-pid", str(cifar_server.process.pid),
        "--concurrency", "2", "--duration", "1", "--warmup", "0.2", "--naive-duration", "1",
        "--raw-batch", "64", "--raw-seconds", "0.5", "--num-images", "20", "--json", str(out),
    ]
    if IMAGES.exists():
        cmd += ["--images", str(IMAGES)]
    done = subprocess.run(
        cmd, cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for row in ("ceiling", "ceiling-raw", "naive", "service", "service-raw", "raw"):
        assert any(line.startswith(row + " ") for line in text.splitlines()), text
    for label in ("service/ceiling", "service/naive", "service/raw", "service-raw/service", "p99 latency <= 50 ms",
                  "raw body >= 1.5x the multipart requests/s", "command:", "machine:"):
        assert label in text, text

    figures = json.loads(out.read_text())
    for name in ("ceiling", "ceiling-raw", "naive", "service", "service-raw"):
        result = figures["results"][name]
        assert result["requests"] > 0 and result["errors"] == 0, result
        assert result["throughput_rps"] > 0
        assert result["body"] == ("multipart" if name in ("ceiling", "naive", "service") else "raw")
    assert figures["results"]["service"]["server"] == cifar_server.url
    assert figures["results"]["service"]["server_cpu_ms_per_request"] > 0  # the running server's own CPU
    assert figures["results"]["raw"]["images_per_s"] > 0
    assert all(value is not None and value > 0 for value in figures["ratios"].values()), figures["ratios"]
    assert figures["machine"]["cpu_count"] >= 1


def test_serve_benchmark_check_flag_enforces_targets(cifar_model_store: ModelStore, cifar_server: ServerProcess) -> None:
    """With --check an unmet target fails the run; a server-only run reports the missing ratios as n/a."""
    cmd = [
        sys.executable, str(SCRIPT), "--model", cifar_model_store.tag, "--concurrency", "1", "--duration", "0.5",
        "--warmup", "0", "--num-images", "4", "--skip", "ceiling", "--skip", "naive", "--skip", "raw", "--check",
        "--service-url", cifar_server.url, "--p99-target-ms", "0.01",  # no HTTP answer comes back in 10 us
    ]
    done = subprocess.run(
        cmd, cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NOT MET" in done.stdout and "n/a" in done.stdout
    assert "targets not met: p99 latency <= 0.01 ms" in done.stderr
