"""benchmarks/peers.py end to end in seconds: our session server and one serving peer on the protocol
workload, installed into its own venv on first use (on a clean machine this test installs it), and both
must give our /classify's probabilities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import ServerProcess
from conftest import PROJECT_ROOT, ModelStore

SCRIPT = PROJECT_ROOT / "benchmarks" / "peers.py"
IMAGES = PROJECT_ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"
PEER = "pytriton"  # the v2 peer quickest to install cold (docs/performance.md: its venv in about a minute)


@pytest.mark.timeout(1500)  # the peer's first install (pip) is most of it
def test_ours_and_one_peer_agree_under_load(cifar_model_store: ModelStore, cifar_server: ServerProcess,
                                            tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    cmd = [sys.executable, str(SCRIPT), "--model", cifar_model_store.tag, "--ours-url", cifar_server.url,
           "--peers", PEER, "--workloads", "protocol", "--workers", "1", "--clients", "2", "--duration", "1",
           "--warmup", "0.5", "--images", str(IMAGES), "--num-images", "12", "--checks", "6", "--json", str(out)]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True,
                          timeout=1400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    checks = {(row["server"], row["workload"]): row for row in figures["checks"]}
    assert set(checks) == {("ours", "protocol"), (PEER, "protocol")}, figures["checks"]
    assert all(row["agrees"] and row["max_difference"] <= 1e-4 for row in checks.values()), figures["checks"]
    runs = {row["server"]: row for row in figures["runs"]}
    assert set(runs) == {"ours", PEER}, figures["runs"]
    for run in runs.values():
        assert run["requests"] > 0 and run["errors"] == 0 and run["throughput_rps"] > 0, run
        assert run["workload"] == "protocol" and run["form"] == "v2 binary"
    assert PEER not in figures["not_run"] and "tf-serving" in figures["not_run"]
    for text in ("protocol: OIP v2 infer", "x ours", "agreement with our /classify", "machine:", "command:"):
        assert text in done.stdout, done.stdout
