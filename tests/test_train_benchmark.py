"""Smoke run of benchmarks/train.py, so the script that produces the README's table cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_benchmark_prints_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "benchmarks/train.py", "--data", "tests/fixtures/images-tiny", "--recipe", "cnn",
         "--recipe", "fast", "--epochs", "1", "--limit", "30", "--output", str(out), "--json", str(out / "f.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "command: benchmarks/train.py" in result.stdout and "CPU cores" in result.stdout
    table = result.stdout.split("recipe   optimizer")[1]
    assert "cnn      adam" in table and "fast     sgd" in table
    assert (out / "accuracy_vs_time.png").stat().st_size > 5_000
    assert (out / "f.json").exists()
