"""A scaled-down run of benchmarks/hostile.py (--quick: the no-attack baseline and cases 4-6, a few seconds
each) against the session's running server (--url): it runs its cases and prints its table and verdicts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import ServerProcess
from conftest import PROJECT_ROOT, ModelStore

pytestmark = pytest.mark.timeout(300)


def test_hostile_benchmark_quick(cifar_model_store: ModelStore, cifar_server: ServerProcess, tmp_path: Path) -> None:
    store = cifar_model_store.copy(tmp_path / "bentoml")
    command = [sys.executable, str(PROJECT_ROOT / "benchmarks" / "hostile.py"), "--quick",
               "--model", store.tag, "--bentoml-home", str(store.home), "--url", cifar_server.url,
               "--server-pid", str(cifar_server.process.pid), "--server-log", str(cifar_server.log)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=store.env(), capture_output=True, text=True, timeout=240)
    print(result.stdout)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]  # 1: a criterion missed
    out = result.stdout
    for line in ("command: ", "server main: ", "machine: ", "readyz max ms", "worker RSS MB before/peak/after"):
        assert line in out, out
    for number in (0, 4, 5, 6):  # one measurement row and one verdict row per case, nothing failed to run
        rows = [row for row in out.splitlines() if row.startswith(f"{number} ")]
        assert len(rows) == 2, out
        assert re.search(r"\d+ / \d+ / \d+", rows[0]) and re.findall(r"\b(PASS|FAIL|n/a)\b", rows[1]), rows
    assert "the case itself failed" not in out, out
    assert re.search(r"^result: (PASS|FAIL)", out, re.MULTILINE), out
    assert cifar_server.url in out  # the running server was attacked, none started
    assert httpx.get(f"{cifar_server.url}/readyz", timeout=10).status_code == 200  # and it is still up
