"""A few seconds of benchmarks/soak.py against the tiny test model: the tool works, the targets hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import ServerProcess
from conftest import PROJECT_ROOT, ModelStore

pytestmark = pytest.mark.timeout(300)


def soak_the_session_server(server: ServerProcess) -> list[str]:
    """benchmarks/soak.py against the session's running server (it reads; it starts nothing)."""
    return [sys.executable, str(PROJECT_ROOT / "benchmarks" / "soak.py"), "--url", server.url,
            "--server-pid", str(server.process.pid)]


def test_soak_smoke(cifar_model_store: ModelStore, cifar_server: ServerProcess, tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    command = [
        *soak_the_session_server(cifar_server), "--duration", "8", "--warmup", "3", "--concurrency", "4",
        "--images", str(PROJECT_ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"),
        # a few seconds cannot show a leak: the memory target is for real runs (default 10%)
        "--max-memory-growth", "0.5",
        "--json", str(report_path),
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=240)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    totals = report["totals"]
    assert totals["requests"] > 20 and totals["valid_requests"] > 0 and totals["invalid_requests"] > 0
    assert totals["valid_errors"] == 0 and totals["server_errors"] == 0 and totals["invalid_not_4xx"] == 0
    assert "images-tiny.tar.gz" in report["images"] and report["machine"]["cpu_count"] >= 1
    assert report["memory_mb"]["after_warmup"] > 0 and report["memory_mb"]["end"] > 0
    for line in ("command:", "machine:", "throughput:", "errors:", "memory:", "result:     PASS"):
        assert line in result.stdout
    assert "127.0.0.1" in report["server_command"] and "bentoml" in report["server_command"]


def test_soak_fails_when_a_target_is_missed(cifar_model_store: ModelStore, cifar_server: ServerProcess,
                                           tmp_path: Path) -> None:
    """An impossible memory target (growth below -100%) must give a non-zero exit."""
    command = [
        *soak_the_session_server(cifar_server), "--duration", "3", "--warmup", "1", "--concurrency", "2",
        "--images", str(tmp_path / "absent"), "--max-memory-growth", "-1.5",
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generated 32x32 JPEGs" in result.stdout and "MISSED" in result.stdout
