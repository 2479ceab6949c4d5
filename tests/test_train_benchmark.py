"""Smoke run of benchmarks/train.py --against-cnn, so the script behind the README's figures cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import inprocess
import pytest

from training.cpu_info import describe_cpu

ROOT = Path(__file__).resolve().parents[1]


def test_train_benchmark_runs_fast_against_cnn_and_prints_the_ratios(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "benchmarks/train.py", "--data", "tests/fixtures/images-tiny", "--against-cnn",
         "--epochs", "1", "--limit", "30", "--output", str(out), "--json", str(out / "f.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "command: benchmarks/train.py" in result.stdout
    assert f"machine: {describe_cpu()}" in result.stdout and "CPU speed-ups on: " in result.stdout
    table = result.stdout.split("recipe   optimizer")[1]
    assert "cnn      adam" in table and table.count("fast     sgd") == 2
    rows = json.loads((out / "f.json").read_text())
    cnn_time = rows[0]["training_time_s"]
    for row, (multiple, target) in zip(rows[1:], ((1.5, 90), (0.75, 87))):
        ratio = row["training_time_s"] / cnn_time
        verdict = "met" if ratio <= multiple and row["test_accuracy"] >= target / 100 else "NOT met"
        assert (f"fast {row['epochs']} epochs: {row['test_accuracy']:.2%} in {row['training_time_s']:.0f} s = "
                f"{ratio:.2f}x the cnn's time; target >= {target}% within {multiple}x: {verdict}") in result.stdout
    assert (out / "accuracy_vs_time.png").stat().st_size > 5_000


def test_train_step_profile_shows_where_a_step_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`profile` runs in this process (its step is set up as train-cifar sets one up, as a fresh process would:
    tests/inprocess.py's process_state_kept); `ab`, below, is about fresh processes and starts them."""
    from benchmarks import train_step

    monkeypatch.setattr(sys, "argv", ["benchmarks/train_step.py", "profile", "--recipe", "fast", "--batch-size",
                                      "16", "--warmup", "1", "--steps", "2", "--profile-steps", "1",
                                      "--output", str(tmp_path)])
    with inprocess.process_state_kept():
        train_step.main()
    stdout = capsys.readouterr().out
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["cpu"] == describe_cpu() and profile["step_ms"] > 0
    # (side, in, out, kernel): frozen 2x2 whitening (forward only), the first 3x3 convolution (forward and
    # kernel gradient), then five more with their input gradient too
    convolutions = [(31, 3, 24, 2), (31, 24, 64, 3), (15, 64, 64, 3), (15, 64, 128, 3), (7, 128, 128, 3),
                    (7, 128, 128, 3), (3, 128, 128, 3)]
    forward = [2 * side * side * cin * cout * k * k for side, cin, cout, k in convolutions]
    per_image = forward[0] + 2 * forward[1] + 3 * sum(forward[2:])
    assert profile["conv_gflop_per_step"] == pytest.approx(16 * per_image / 1e9, rel=1e-6)
    parts = profile["ms_per_part"]
    assert {"convolution", "batch norm", "activation", "pooling", "augmentation"} <= set(parts)
    assert max(parts, key=parts.get) == "convolution"
    assert "_MklNativeConv2DBackpropFilter" in profile["ms_per_op_type"] or "Conv2DBackpropFilter" in profile["ms_per_op_type"]
    assert "op time per step, profiled" in stdout and (tmp_path / "profile.png").stat().st_size > 5_000


def test_train_step_ab_alternates_fresh_processes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "ab", "--recipe", "cnn", "--batch-size", "16", "--warmup", "1",
         "--steps", "2", "--pairs", "2", "--a", "--speedups all", "--b", "--speedups none"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("pair")]
    assert [line[:8] for line in lines] == ["pair 1 A", "pair 1 B", "pair 2 B", "pair 2 A"]
    assert all("speed-ups: bfc-allocator, conv-input-gradient)" in line for line in lines if " A:" in line)
    assert all("speed-ups: none)" in line for line in lines if " B:" in line)
    assert re.search(r"B is \d+\.\d{3}x as fast as A", result.stdout)
